"""Training throughput: `bestofl train-rm` (Ray Train + DeepSpeed) versus a plain loop.

Both sides train the same reward model (a random Llama with a scalar head, sizes from the
arguments, the tiny local tokenizer) on the same Bradley-Terry pairs (real MGSM questions
with synthetic responses long enough to fill --max-length), with the same micro-batch,
learning-rate schedule, gradient clipping and torch threads. The plain side is one
process: AdamW, `forward_scores`, `-logsigmoid(s_a - s_b)`. train-rm's examples/s come
from its own reports after the first, so Ray start-up, worker start, model load,
DeepSpeed set-up and the first steps are left out on both sides (the plain loop skips its
first --warmup steps). Peak memory per worker (RSS on the CPU, max allocated on a GPU) for
ZeRO-2 and ZeRO-3 with 2 workers comes from the same reports.

    python benchmarks/train_throughput.py [--pairs 192 --hidden 256 --layers 2 --threads 2]
    DS_ACCELERATOR=cuda python benchmarks/train_throughput.py --device cuda   # 1 GPU, bf16

Prints a table, then `train_throughput_ratio: <train-rm 1 worker ex/s / plain ex/s>`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MGSM = ROOT.parent / "shared" / "data" / "mgsm"


def make_pool(out: Path, pairs: int, langs: tuple[str, ...]) -> Path:
    """Two correct and two incorrect responses per (question, language); 4 pairs are drawn
    per question (max_pairs_per_question=4), so ceil(pairs / 4) questions (at most 250)."""
    from bestofl import pool

    rows = []
    n_questions = -(-pairs // 4)
    for lang in langs:
        path = MGSM / f"mgsm_{lang}.tsv"
        questions = (path.read_text(encoding="utf-8").splitlines() if path.exists()
                     else [f"Question {i}: what is {i} + {i}?\t{2 * i}" for i in range(250)])
        for i, line in enumerate(questions[:n_questions]):
            question, gold = line.rsplit("\t", 1)
            for k in range(4):
                answer = int(gold) + (0 if k < 2 else k)
                steps = " ".join(f"Step {s}: {i} + {s} = {i + s}." for s in range(60))
                rows.append(dict(qid=f"mgsm-{i:03d}", question_lang=lang, response_lang=lang,
                                 sample_idx=k, model="bench", method="synthetic", prompt=question,
                                 response=f"{steps} The answer is \\boxed{{{answer}}}.",
                                 answer=str(answer), gold=gold, correct=k < 2))
    pool.write_pool(pool.to_table(rows), str(out))
    return out


def make_model(out: Path, hidden: int, layers: int) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bestofl.tiny import write_tiny_model

    tiny = write_tiny_model(out.parent / "tiny-rm", kind="rm")
    tok = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 64, head_dim=64,
                         max_position_embeddings=4096, pad_token_id=tok.pad_token_id, num_labels=1)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def plain_loop(model_dir: Path, examples: list[dict], args) -> tuple[float, float]:
    """(examples/s after warm-up, peak memory MB) of a single-process PyTorch loop."""
    import torch
    import torch.nn.functional as F

    from bestofl.reward.model import collate, encode, forward_scores, load_reward_model
    from bestofl.reward.training import warmup_cosine

    torch.manual_seed(0)
    cuda = args.device == "cuda"
    model, tok = load_reward_model(str(model_dir))
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = len(examples) // args.batch_size * args.epochs
    if steps <= args.warmup:
        sys.exit(f"{steps} steps leave nothing to time after {args.warmup} warm-up steps")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, steps // 20), steps))
    done, start = 0, None
    for step in range(steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            done, start = 0, time.perf_counter()
        i = step * args.batch_size % (len(examples) - args.batch_size + 1)
        batch = examples[i:i + args.batch_size]
        seqs = [encode(tok, e["prompt_a"], e["response_a"], args.max_length) for e in batch]
        seqs += [encode(tok, e["prompt_b"], e["response_b"], args.max_length) for e in batch]
        ids, mask = collate(seqs, tok.pad_token_id)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            scores = forward_scores(model, ids.to(args.device), mask.to(args.device))
        n = len(batch)
        loss = -F.logsigmoid(scores[:n] - scores[n:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done += n
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return done / (time.perf_counter() - start), peak


def train_rm(pool_dir: Path, model_dir: Path, out: Path, workers: int, zero: int, threads: int,
             args) -> tuple[float, float]:
    """(examples/s over the reports after the first, peak MB per worker) of a train-rm run."""
    from bestofl.config import load_config
    from pipelines.train_rm import run

    cuda = args.device == "cuda"
    cfg = load_config("train_rm", None, [
        f"input=[{pool_dir}]", f"model={model_dir}", f"output={out}", "objective=pairwise",
        "pair_scope=within", "max_pairs_per_question=4", f"max_length={args.max_length}",
        "val_fraction=0.05", f"epochs={args.epochs}", f"batch_size={args.batch_size}",
        "lr=1e-4", "warmup_ratio=0.05", f"log_every={args.log_every}", "eval_every=-1",
        "save_every=-1", f"num_workers={workers}", f"cpus_per_worker={threads}",
        f"use_gpu={str(cuda).lower()}", f"deepspeed.zero_stage={zero}",
        f"deepspeed.bf16={str(cuda).lower()}"])
    run(cfg)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["examples_per_s"] for m in lines[1:]] or [lines[0]["examples_per_s"]]
    return statistics.harmonic_mean(rates), max(m["peak_mem_mb"] for m in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=192, help="training pairs (before the split)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per micro-batch")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=4, help="plain-loop steps left out")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--langs", default="en,de,fr,zh")
    ap.add_argument("--stages", default="2,3", help="ZeRO stages of the 2-worker rows")
    args = ap.parse_args()

    import ray
    import torch

    from bestofl.reward import data

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    pool_dir = make_pool(tmp / "pool", args.pairs, tuple(args.langs.split(",")))
    model_dir = make_model(tmp / "model", args.hidden, args.layers)
    rows = data.response_rows(data.load_pools([str(pool_dir)]))
    examples, _ = data.training_examples(rows, "pairwise", "within", 4, seed=0)

    table = [("plain PyTorch loop", 1, "-", args.threads, *plain_loop(model_dir, examples, args))]
    # "local": a fresh instance, never someone's `ray start` cluster on this machine.
    ray.init(address="local", num_cpus=max(4, args.threads),
             num_gpus=1 if args.device == "cuda" else 0, object_store_memory=256 * 2**20,
             include_dashboard=False)
    stages = [int(z) for z in args.stages.split(",")]
    runs = [(1, 2, args.threads)]
    if args.device == "cpu":
        runs += [(2, z, max(1, args.threads // 2)) for z in stages]
    else:  # one GPU: one worker; ZeRO-3 there only checks the path (nothing to shard)
        runs += [(1, z, args.threads) for z in stages if z != 2]
    for workers, zero, threads in runs:
        rate, peak = train_rm(pool_dir, model_dir, tmp / f"rm-{workers}-{zero}", workers, zero,
                              threads, args)
        table.append(("bestofl train-rm", workers, f"ZeRO-{zero}", threads, rate, peak))
    ray.shutdown()

    print(f"\n{len(examples)} pairs, {args.hidden}x{args.layers} Llama, max_length "
          f"{args.max_length}, micro-batch {args.batch_size} pairs, device {args.device}")
    print(f"{'side':<20} {'workers':>7} {'ZeRO':>6} {'threads/w':>9} {'pairs/s':>9} "
          f"{'peak MB/worker':>15}")
    for side, workers, zero, threads, rate, peak in table:
        print(f"{side:<20} {workers:>7} {zero:>6} {threads:>9} {rate:>9.2f} {peak:>15.0f}")
    print(f"train_throughput_ratio: {table[1][4] / table[0][4]:.3f}")


if __name__ == "__main__":
    main()
