"""The reward-model GPU path on one GPU: bf16, DeepSpeed ZeRO-2/3 over NCCL, scoring.

Run by hand on a GPU machine (no Ray needed there):

    python benchmarks/gpu_rm_check.py --hidden 2048 --layers 16 --seq 512

It builds a random-weight Llama-type reward model of realistic size (random weights
time the same as trained ones), then measures
  1. training examples/s of the train-rm step (reward.training: ScalarRM, the DeepSpeed
     config, the pairwise loss) with ZeRO-2 and ZeRO-3 in bf16 on NCCL, against a plain
     PyTorch bf16 loop on the same model and data, and peak GPU memory of each;
  2. the ZeRO-3 export (gathered 16-bit weights) reloaded with transformers: its scores
     must match the engine's;
  3. scoring rows/s of reward.model.score (length-grouped batches) against naive
     unsorted batches on the same rows.
Last line: `gpu_train_throughput_ratio: X` (ZeRO-2 / plain loop).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import ray.train  # noqa: F401
except ImportError:
    # GPU boxes without Ray: the worker-loop module imports ray.train at the top, but the
    # pieces timed here (ScalarRM, deepspeed_config, _batch_loss, _export) never call it.
    ray_stub = types.ModuleType("ray")
    ray_stub.train = types.ModuleType("ray.train")
    sys.modules["ray"], sys.modules["ray.train"] = ray_stub, ray_stub.train

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from bestofl.reward import training
from bestofl.reward.model import collate, forward_scores, load_reward_model, score
from bestofl.tiny import _train_tokenizer


def build_model(args, out: Path) -> Path:
    tok = _train_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                      num_key_value_heads=max(1, args.hidden // 512), head_dim=128,
                      max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, num_labels=1, tie_word_embeddings=False)
    model = LlamaForSequenceClassification(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {n / 1e6:.0f}M parameters, hidden {args.hidden}, {args.layers} layers")
    return out


def random_text(rng: random.Random, words: int) -> str:
    vocab = "the answer is step total each eggs sells dollars so we get number".split()
    return " ".join(rng.choice(vocab) if rng.random() < 0.7 else str(rng.randint(0, 999))
                    for _ in range(words))


def pair_batches(rng: random.Random, n_batches: int, batch: int, words: int) -> list[dict]:
    out = []
    for _ in range(n_batches):
        out.append({k: np.array([random_text(rng, words) if k.startswith("response") else "Q: " + random_text(rng, 30)
                                 for _ in range(batch)], dtype=object)
                    for k in ("prompt_a", "response_a", "prompt_b", "response_b")})
    return out


CUDA = torch.cuda.is_available()  # without one, a small smoke run on gloo checks the script


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed_steps(step_fn, batches, warmup: int) -> tuple[float, float]:
    for b in batches[:warmup]:
        step_fn(b)
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for b in batches[warmup:]:
        step_fn(b)
    sync()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512, help="max tokens per response")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--score-rows", type=int, default=4000)
    args = parser.parse_args()

    import deepspeed

    if not CUDA:  # the CPU JIT-compiles a shm all-reduce otherwise (see reward.training)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group("nccl" if CUDA else "gloo")
    device = torch.device("cuda", 0) if CUDA else torch.device("cpu")
    print(f"device: {torch.cuda.get_device_name(0) if CUDA else 'cpu'}, torch {torch.__version__}, deepspeed {deepspeed.__version__}, backend {dist.get_backend()}")

    work = Path(tempfile.mkdtemp())
    path = build_model(args, work / "rm")
    rng = random.Random(0)
    batches = pair_batches(rng, args.steps + 3, args.batch, words=args.seq // 2)
    rows = []

    # Plain PyTorch bf16 loop: the baseline a researcher would write.
    model, tok = load_reward_model(str(path), dtype="bfloat16")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def plain_step(b):
        loss = training._batch_loss(lambda i, m: forward_scores(model, i, m), tok, b, "pairwise", args.seq, device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds, peak = timed_steps(plain_step, batches, 3)
    plain = args.steps * args.batch / seconds
    rows.append(("plain torch bf16", plain, peak))
    del model, opt
    sync()

    engines = {}
    for stage in (2, 3):
        model, tok = load_reward_model(str(path), dtype="bfloat16")
        ds_cfg = training.deepspeed_config(stage, True, False, args.batch, 1, 1.0, 1e-5, 0.0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        engine, *_ = deepspeed.initialize(model=training.ScalarRM(model), optimizer=opt, config=ds_cfg,
                                          dist_init_required=False)

        def ds_step(b, engine=engine):
            loss = training._batch_loss(engine, tok, b, "pairwise", args.seq, device)
            engine.backward(loss)
            engine.step()

        seconds, peak = timed_steps(ds_step, batches, 3)
        rows.append((f"train-rm step, ZeRO-{stage} bf16 {dist.get_backend()}", args.steps * args.batch / seconds, peak))
        engines[stage] = (engine, model, tok)
        if stage == 2:
            del engine, opt
            engines.pop(2)
            sync()

    # ZeRO-3 export -> transformers reload -> same scores.
    engine, model, tok = engines[3]
    export = work / "export"
    training._export(engine, model, tok, str(export), 3, 0)
    ids, mask = collate([tok(random_text(rng, 60))["input_ids"] for _ in range(8)], tok.pad_token_id)
    with torch.no_grad():
        engine.eval()
        s_engine = engine(ids.to(device), mask.to(device)).float().cpu()
    del engine
    engines.clear()
    sync()
    reloaded = AutoModelForSequenceClassification.from_pretrained(export, dtype=torch.bfloat16).to(device)
    with torch.no_grad():
        s_reload = forward_scores(reloaded, ids.to(device), mask.to(device)).float().cpu()
    max_diff = (s_engine - s_reload).abs().max().item()
    print(f"ZeRO-3 export reload: max |score diff| = {max_diff:.4f} (bf16) -> {'OK' if max_diff < 0.05 else 'MISMATCH'}")

    # Scoring: length-grouped batches (score) vs naive batches in input order.
    questions = ["Q: " + random_text(rng, 30) for _ in range(args.score_rows)]
    responses = [random_text(rng, rng.randint(20, args.seq)) for _ in range(args.score_rows)]
    reloaded.eval()
    score(reloaded, tok, questions[:64], responses[:64], max_length=1024, batch_size=32)  # warm-up
    sync()
    t0 = time.perf_counter()
    grouped = score(reloaded, tok, questions, responses, max_length=1024, batch_size=32)
    sync()
    t_grouped = time.perf_counter() - t0
    from bestofl.reward.model import encode
    t0 = time.perf_counter()
    naive = []
    with torch.no_grad():
        for i in range(0, len(questions), 32):
            enc = [encode(tok, q, r, 1024) for q, r in zip(questions[i:i + 32], responses[i:i + 32])]
            ids, mask = collate(enc, tok.pad_token_id)
            naive += forward_scores(reloaded, ids.to(device), mask.to(device)).tolist()
    sync()
    t_naive = time.perf_counter() - t0
    agree = np.allclose(grouped, naive, atol=0.05)

    print(f"\n{'what':<38} {'examples/s':>11} {'peak GiB':>9}")
    for name, rate, peak in rows:
        print(f"{name:<38} {rate:>11.1f} {peak:>9.2f}")
    print(f"{'score (length-grouped), rows/s':<38} {len(questions) / t_grouped:>11.1f}")
    print(f"{'naive batches, rows/s':<38} {len(questions) / t_naive:>11.1f}   scores agree: {agree}")
    print(f"gpu_train_throughput_ratio: {rows[1][1] / plain:.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
