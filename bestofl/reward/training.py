"""The Ray Train worker loop of `bestofl train-rm`: DeepSpeed ZeRO-2/3 on GPUs or CPUs.

Each worker reads its shard of the training examples (Ray Data), scores pairs or single
responses with last-real-token pooling (`reward.model.forward_scores`), and steps a
DeepSpeed engine. Every `log_every` / `eval_every` / `save_every` optimizer steps all
workers call `ray.train.report` together; rank 0 prints a line and appends it to
metrics.jsonl. Every checkpoint holds the DeepSpeed state, so a rerun after a crash
resumes from the latest one; the last also holds the exported Hugging Face folder
(`model/`), the final validation report and the validation scores, for the driver.
"""
from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bestofl import storage
from bestofl.reward.model import collate, encode, forward_scores, load_reward_model

VAL_REPORT = "val_report.json"  # final validation metrics, score_stats, lang_accuracy
VAL_SCORES = "val_scores.parquet"  # final validation score per response row (rid, score)
STATE_TAG = "state"  # DeepSpeed checkpoint tag inside every Ray Train checkpoint


class ScalarRM(torch.nn.Module):
    """Wraps the HF model so DeepSpeed's forward (and ZeRO-3's parameter gathering) runs
    our padding-agnostic pooling rather than the model's pad-token-based one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return forward_scores(self.model, input_ids, attention_mask)


def deepspeed_config(zero_stage: int, bf16: bool, offload_optimizer: bool, batch_size: int,
                     grad_accum: int, max_grad_norm: float, lr: float,
                     weight_decay: float) -> dict[str, Any]:
    """The DeepSpeed JSON config for one run (ZeRO stage, precision, batch geometry; the
    global batch follows from the world size DeepSpeed finds)."""
    zero: dict[str, Any] = {"stage": zero_stage, "contiguous_gradients": True,
                            "overlap_comm": False}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves, once per report
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:
        # Offloaded states need DeepSpeed's CPU Adam (a JIT-compiled op): GPU clusters only.
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay}}
    return config


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to 10% of the peak."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def evaluate_scores(rows: Sequence[dict], scores: Sequence[float], scope: str,
                    objective: str) -> dict[str, Any]:
    """Validation metrics from one score per response row (qid, response_lang, correct).

    val_pair_acc: share of (correct, incorrect) pairs of a question in `scope` ranked
    right (ties count half); val_bon_within: accuracy of the top-scored response of each
    (question, language); val_bon_cross: of each question over all its languages;
    val_mean_correct: what a random pick gets. Also per-language score statistics
    (`score_stats`) and within-language Best-of-N accuracy (`lang_accuracy`).
    """
    groups: dict[str, list] = defaultdict(list)
    by_lang: dict[str, list[float]] = defaultdict(list)
    for row, s in zip(rows, scores):
        by_lang[row["response_lang"]].append(s)
        if row["correct"] is not None:
            groups[row["qid"]].append((row["response_lang"], bool(row["correct"]), s))
    wins = pairs = loss_sum = 0.0
    bce, within, cross, lang_hits = [], [], [], defaultdict(list)
    for items in groups.values():
        lang = np.array([i[0] for i in items])
        good = np.array([i[1] for i in items])
        s = np.array([i[2] for i in items], dtype=np.float64)
        diff = s[good][:, None] - s[~good][None, :]
        same = lang[good][:, None] == lang[~good][None, :]
        mask = {"within": same, "cross": ~same, "both": np.ones_like(same)}[scope]
        wins += float(((diff > 0) + 0.5 * (diff == 0))[mask].sum())
        pairs += float(mask.sum())
        loss_sum += float(np.logaddexp(0.0, -diff)[mask].sum())
        bce.extend(np.logaddexp(0.0, s) - good * s)
        cross.append(good[np.argmax(s)])
        for code in sorted(set(lang)):
            idx = np.flatnonzero(lang == code)
            hit = good[idx[np.argmax(s[idx])]]
            within.append(hit)
            lang_hits[code].append(hit)
    labelled = [g for items in groups.values() for g in items]
    return {
        "val_loss": (loss_sum / pairs if pairs else float("nan")) if objective == "pairwise"
        else (float(np.mean(bce)) if bce else float("nan")),
        "val_pair_acc": wins / pairs if pairs else float("nan"),
        "val_bon_within": float(np.mean(within)) if within else float("nan"),
        "val_bon_cross": float(np.mean(cross)) if cross else float("nan"),
        "val_mean_correct": float(np.mean([g[1] for g in labelled])) if labelled else float("nan"),
        "val_pairs": int(pairs),
        "score_stats": {code: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                        for code, v in sorted(by_lang.items())},
        "lang_accuracy": {code: float(np.mean(h)) for code, h in sorted(lang_hits.items())},
    }


def _log_line(metrics: dict[str, Any]) -> str:
    fold = f"fold {metrics['fold']} " if metrics.get("fold") is not None else ""
    line = (f"[train-rm] {fold}step {metrics['step']}/{metrics['total_steps']} "
            f"epoch {metrics['epoch']:.2f} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
            f"{metrics['examples_per_s']:.1f} ex/s")
    if "val_loss" in metrics:
        line += (f" | val_loss {metrics['val_loss']:.4f} pair_acc {metrics['val_pair_acc']:.3f}"
                 f" bon_within {metrics['val_bon_within']:.3f}"
                 f" bon_cross {metrics['val_bon_cross']:.3f}"
                 f" (random {metrics['val_mean_correct']:.3f})")
    return line


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train `train_loop_per_worker`. `cfg` holds the TrainRMConfig fields plus
    what the driver computed: steps_per_epoch, metrics_path, fold, and an optional
    fault_after_step (tests: raise after that step's report)."""
    started = time.perf_counter()
    import deepspeed  # heavy: workers only

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    # DeepSpeed JIT-compiles a shared-memory all-reduce (g++, minutes, GBs) for every CPU
    # process group; training does not need it, gloo does the job.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Ray Train already set up torch.distributed (gloo or NCCL): DeepSpeed reuses it.
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
    torch.manual_seed(cfg["seed"])

    ds = cfg["deepspeed"]
    ds_config = deepspeed_config(ds["zero_stage"], ds["bf16"], ds["offload_optimizer"],
                                 cfg["batch_size"], cfg["grad_accum"], cfg["max_grad_norm"],
                                 cfg["lr"], cfg["weight_decay"])
    if ds["zero_stage"] == 3:
        # Alive while the model loads: transformers then builds it already partitioned.
        from transformers.integrations import HfDeepSpeedConfig
        hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841
    model, tokenizer = load_reward_model(cfg["model"], "bfloat16" if ds["bf16"] else "float32",
                                         cfg["trust_remote_code"])
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = ScalarRM(model)
    spe, epochs = cfg["steps_per_epoch"], cfg["epochs"]
    total = spe * epochs
    schedule = warmup_cosine(math.ceil(cfg["warmup_ratio"] * total), total)
    optimizer = None if ds["offload_optimizer"] else torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=cfg["lr"],
        weight_decay=cfg["weight_decay"])
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=ds_config, dist_init_required=False)

    step = resumed_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as path:
            _, client_state = engine.load_checkpoint(path, tag=STATE_TAG)
        step = resumed_step = client_state["step"]
        if rank == 0:
            print(f"[train-rm] resumed from step {step} ({checkpoint.path})", flush=True)
    history = _metrics_history(cfg["metrics_path"], step) if rank == 0 else []
    if rank == 0:
        print(f"[train-rm] {world} workers, DeepSpeed ZeRO-{ds['zero_stage']} "
              f"{'bf16' if ds['bf16'] else 'fp32'} on {device.type}, ready in "
              f"{time.perf_counter() - started:.0f}s; {total - step} steps to go", flush=True)

    val_rows = sorted(ray.train.get_dataset_shard("val").iter_rows(), key=lambda r: r["rid"])
    mine = val_rows[rank::world]
    # int32 arrays: a cross-fitting fold can hold many thousand long responses per worker.
    mine_ids = [np.asarray(encode(tokenizer, r["prompt"] or "", r["response"], cfg["max_length"]),
                           dtype=np.int32) for r in mine]
    val_batches = math.ceil(math.ceil(len(val_rows) / world) / cfg["batch_size"])

    def validate() -> tuple[dict[str, Any], list[float]]:
        # ZeRO-3 gathers parameters in every forward: all ranks run the same number.
        engine.eval()
        local: list[float] = []
        order = sorted(range(len(mine_ids)), key=lambda i: len(mine_ids[i]))
        with torch.no_grad():
            for b in range(val_batches):
                idx = order[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]]
                batch = [mine_ids[i] for i in idx] or [mine_ids[0] if mine_ids else [0]]  # pad
                ids, mask = collate(batch, tokenizer.pad_token_id)
                values = engine(ids.to(device), mask.to(device)).tolist()
                local.extend(values[:len(idx)])
        engine.train()
        by_rank: list[Any] = [None] * world
        dist.all_gather_object(by_rank, [(mine[i]["rid"], s) for i, s in zip(order, local)])
        scored = dict(p for part in by_rank for p in part)
        scores = [scored[r["rid"]] for r in val_rows]
        return evaluate_scores(val_rows, scores, cfg["pair_scope"], cfg["objective"]), scores

    def report(step: int, window: dict[str, float]) -> None:
        final = step == total
        do_eval = final or _due(step, cfg["eval_every"], spe)
        do_save = final or _due(step, cfg["save_every"], spe)
        sums = torch.tensor([float(window["loss"]), window["batches"], window["examples"],
                             _peak_memory_mb(device)], dtype=torch.float64, device=device)
        peak = sums[3].clone()
        dist.all_reduce(sums)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        metrics: dict[str, Any] = {
            "step": step, "total_steps": total, "epoch": step / spe, "fold": cfg["fold"],
            "loss": float(sums[0] / max(sums[1], 1)), "lr": scheduler.get_last_lr()[0],
            "examples_per_s": float(sums[2]) / elapsed, "peak_mem_mb": float(peak),
            "resumed_from": resumed_step,
        }
        extra: dict[str, Any] = {}
        scores: list[float] = []
        if do_eval:
            extra, scores = validate()
            metrics.update({k: v for k, v in extra.items() if k.startswith("val_")})
        with tempfile.TemporaryDirectory() as tmp:
            if do_save:
                engine.save_checkpoint(tmp, tag=STATE_TAG, client_state={"step": step})
            if final:
                _export(engine, model, tokenizer, os.path.join(tmp, "model"), ds["zero_stage"],
                        rank)
                if rank == 0:
                    storage.write_text(os.path.join(tmp, VAL_REPORT),
                                       json.dumps({"step": step, **extra}, indent=2) + "\n")
                    pq.write_table(pa.table({"rid": [r["rid"] for r in val_rows],
                                             "score": pa.array(scores, pa.float64())}),
                                   os.path.join(tmp, VAL_SCORES))
            if rank == 0:
                print(_log_line(metrics), flush=True)
                history.append(json.dumps(metrics, default=float))
                storage.write_text(cfg["metrics_path"], "\n".join(history) + "\n")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                             if do_save else None, checkpoint_dir_name=f"checkpoint-{step:06d}"
                             if do_save else None)
        if step == cfg.get("fault_after_step"):
            raise RuntimeError(f"injected fault after step {step} (BESTOFL_FAULT_AFTER_STEP)")

    shard = ray.train.get_dataset_shard("train")
    ga = cfg["grad_accum"]
    window = {"loss": 0.0, "batches": 0, "examples": 0, "start": time.perf_counter()}
    engine.train()
    for epoch in range(step // spe, epochs):
        skip = (step - epoch * spe) * ga  # micro-batches this epoch already trained on
        micro = 0
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=256,
                                        local_shuffle_seed=cfg["seed"] + epoch):
            if micro >= spe * ga:
                break  # every worker stops at the same count: ZeRO needs equal steps
            micro += 1
            if micro <= skip:
                continue
            loss = _batch_loss(engine, tokenizer, batch, cfg["objective"], cfg["max_length"],
                               device)
            engine.backward(loss)
            engine.step()
            window["loss"] += loss.detach()  # no .item(): a GPU sync per step
            window["batches"] += 1
            window["examples"] += len(next(iter(batch.values())))
            if micro % ga:
                continue
            step += 1
            if step == total or _due(step, cfg["log_every"], spe) or \
                    _due(step, cfg["eval_every"], spe) or _due(step, cfg["save_every"], spe):
                report(step, window)
                window = {"loss": 0.0, "batches": 0, "examples": 0, "start": time.perf_counter()}
        if micro < spe * ga:
            raise RuntimeError(f"worker {rank} ran out of training data in epoch {epoch} "
                               f"after {micro} of {spe * ga} micro-batches")
    if resumed_step == total:
        # Resumed from the final checkpoint (the driver died before copying it out): the
        # loop had nothing left to do, so report the finished model again.
        report(step, window)


def _due(step: int, every: int, steps_per_epoch: int) -> bool:
    """`every` > 0: each `every` steps; 0: at the end of each epoch; < 0: never."""
    if every < 0:
        return False
    return step % (every or steps_per_epoch) == 0


def _metrics_history(path: str, step: int) -> list[str]:
    """metrics.jsonl lines up to `step` (the resumed checkpoint): later ones are redone."""
    if step == 0 or not storage.exists(path):
        return []
    lines = [line for line in storage.read_text(path).splitlines() if line.strip()]
    return [line for line in lines if json.loads(line)["step"] <= step]


def _batch_loss(engine, tokenizer, batch: dict[str, np.ndarray], objective: str,
                max_length: int, device: torch.device) -> torch.Tensor:
    if objective == "pairwise":
        # Chosen and rejected in one forward: one set of ZeRO-3 gathers per micro-batch.
        seqs = [encode(tokenizer, p, r, max_length) for side in "ab"
                for p, r in zip(batch[f"prompt_{side}"], batch[f"response_{side}"])]
        ids, mask = collate(seqs, tokenizer.pad_token_id)
        scores = engine(ids.to(device), mask.to(device))
        n = len(batch["prompt_a"])
        return -F.logsigmoid(scores[:n] - scores[n:]).mean()
    seqs = [encode(tokenizer, p, r, max_length) for p, r in zip(batch["prompt"], batch["response"])]
    ids, mask = collate(seqs, tokenizer.pad_token_id)
    scores = engine(ids.to(device), mask.to(device))
    labels = torch.as_tensor(batch["label"], dtype=torch.float32, device=device)
    return F.binary_cross_entropy_with_logits(scores, labels)


def _export(engine, model, tokenizer, out: str, zero_stage: int, rank: int) -> None:
    """Rank 0 writes an ordinary HF folder (safetensors); ZeRO-3 first gathers the full
    weights from every rank, which all ranks must join."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        state = {k.removeprefix("model."): v.detach().cpu() for k, v in state.items()}
        model.save_pretrained(out, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out)
