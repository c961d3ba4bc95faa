"""The Ray Train worker loop of `bestofl train-rm`: DeepSpeed ZeRO-2/3 on GPUs or CPUs.

Each worker reads its shard of the training examples (Ray Data), scores pairs or single
responses with last-real-token pooling (`reward.model.forward_scores`), and steps a
DeepSpeed engine. Every `log_every` / `eval_every` / `save_every` optimizer steps all
workers report together (`_report`): reduce the window's loss and rates, validate,
checkpoint (handed to Ray Train), and at the last step export the Hugging Face folder
into the output; rank 0 records the metrics (stdout, metrics.jsonl, TensorBoard, an
optional tracker). Every checkpoint holds the DeepSpeed state, so a rerun after a crash
resumes from the latest one (`reward.checkpoint`: loaded without unpickling code). The
final report's metrics carry the validation report and scores, which the driver reads
from the Ray Train result.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import resource
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow.fs as pafs
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bestofl import storage, trackers
from bestofl.config import DeepSpeedConfig, TrainRMConfig
from bestofl.reward.model import collate, encode, forward_scores, load_reward_model
from bestofl.reward.tracking import MetricsLog

STATE_TAG = "state"  # DeepSpeed checkpoint tag inside every Ray Train checkpoint
VAL_REPORT = "val_report"  # final report's metrics: validation report (metrics, per language)
VAL_SCORES = "val_scores"  # final report's metrics: {"rid": [...], "score": [...]}


@dataclass(frozen=True)
class WorkerConfig:
    """What every training worker gets from the driver: the run's settings and the
    numbers the driver computed (steps per epoch, the model folder, the fold)."""

    model: str
    trust_remote_code: bool
    objective: str
    pair_scope: str
    max_length: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    gradient_checkpointing: bool
    log_every: int
    eval_every: int
    save_every: int
    seed: int
    cpus_per_worker: float
    deepspeed: DeepSpeedConfig
    output: str  # the model folder: HF files, metrics.jsonl, tensorboard/
    fold: Optional[int] = None
    tensorboard: bool = True
    tracker: Optional[str] = None
    tracker_project: str = "bestofl"
    tracker_env: dict[str, str] = dataclasses.field(default_factory=dict)  # trackers.worker_env

    @classmethod
    def of(cls, cfg: TrainRMConfig, steps_per_epoch: int, output: str,
           fold: Optional[int]) -> "WorkerConfig":
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if hasattr(cfg, f.name)}
        return cls(**{**shared, "steps_per_epoch": steps_per_epoch, "output": output,
                      "fold": fold, "tracker_env": trackers.worker_env(cfg.tracker)})

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def due(self, step: int, every: int) -> bool:
        """`every` > 0: each `every` steps; 0: at the end of each epoch; < 0: never."""
        if every < 0:
            return False
        return step % (every or self.steps_per_epoch) == 0

    def reports_at(self, step: int) -> bool:
        return step == self.total_steps or any(
            self.due(step, every) for every in (self.log_every, self.eval_every, self.save_every))


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
                     weight_decay: float, overlap_comm: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config for one run (ZeRO stage, precision, batch geometry; the
    global batch follows from the world size DeepSpeed finds)."""
    zero: dict[str, Any] = {"stage": zero_stage, "contiguous_gradients": True,
                            "overlap_comm": overlap_comm}
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


@dataclass
class _Worker:
    """One worker's engine and identity, set up once."""

    config: WorkerConfig
    engine: Any  # deepspeed.DeepSpeedEngine
    model: torch.nn.Module  # the HF model inside the engine (for export)
    tokenizer: Any
    scheduler: Any
    device: torch.device
    rank: int
    world: int


@dataclass
class _Window:
    """Training since the last report (each worker's own; reduced at the report)."""

    loss: Any = 0.0  # a tensor once a batch is added: no .item() (a GPU sync per step)
    batches: int = 0
    examples: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)


def train_loop(config: WorkerConfig) -> None:
    """Ray Train `train_loop_per_worker`: set up, resume, train, report."""
    started = time.perf_counter()
    worker = _start_engine(config)
    resumed = step = _resume(worker)
    log = MetricsLog(config, worker.rank, resumed)
    if worker.rank == 0:
        settings = config.deepspeed
        print(f"[train-rm] {worker.world} workers, DeepSpeed ZeRO-{settings.zero_stage} "
              f"{'bf16' if settings.bf16 else 'fp32'} on {worker.device.type}, ready in "
              f"{time.perf_counter() - started:.0f}s; {config.total_steps - step} steps to go",
              flush=True)
    validator = _Validator(worker)
    window = _Window()
    try:
        for step, losses, examples in _optimizer_steps(worker, step):
            for loss in losses:
                window.loss += loss
            window.batches += len(losses)
            window.examples += examples
            if config.reports_at(step):
                _report(worker, validator, log, step, window, resumed)
                window = _Window()
        if resumed == config.total_steps:
            # Resumed from the final checkpoint (the driver died before finishing the
            # output): the loop had nothing left to do, so report the finished model again.
            _report(worker, validator, log, step, window, resumed)
    except BaseException:  # e.g. a peer worker died: this attempt failed
        log.close(failed=True)
        raise
    log.close()


# ---------------------------------------------------------------- set-up and resume
def _start_engine(config: WorkerConfig) -> _Worker:
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        # Else DeepSpeed probes for an accelerator and warns on every worker that it found none.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # heavy: workers only
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train logs every report's metrics from every worker at INFO; the final one
    # carries all validation scores. Our own line per report says what matters.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    # DeepSpeed JIT-compiles a shared-memory all-reduce (g++, minutes, GBs) for every CPU
    # process group; training does not need it, gloo does the job.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Ray Train already set up torch.distributed (gloo or NCCL): DeepSpeed reuses it.
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
    torch.manual_seed(config.seed)

    settings = config.deepspeed
    engine_config = deepspeed_config(settings.zero_stage, settings.bf16,
                                     settings.offload_optimizer, config.batch_size,
                                     config.grad_accum, config.max_grad_norm, config.lr,
                                     config.weight_decay, settings.overlap_comm)
    if settings.zero_stage == 3:
        # Alive while the model loads: transformers then builds it already partitioned.
        from transformers.integrations import HfDeepSpeedConfig
        hf_deepspeed_config = HfDeepSpeedConfig(engine_config)  # noqa: F841
    model, tokenizer = load_reward_model(config.model, "bfloat16" if settings.bf16 else "float32",
                                         config.trust_remote_code)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = ScalarRM(model)
    total = config.total_steps
    schedule = warmup_cosine(math.ceil(config.warmup_ratio * total), total)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = None if settings.offload_optimizer else torch.optim.AdamW(
        trainable, lr=config.lr, weight_decay=config.weight_decay)
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, model_parameters=trainable, optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=engine_config, dist_init_required=False)
    from bestofl.reward.checkpoint import use_safe_loading  # imports deepspeed
    use_safe_loading(engine)
    return _Worker(config, engine, model, tokenizer, scheduler, device,
                   ctx.get_world_rank(), ctx.get_world_size())


def _resume(worker: _Worker) -> int:
    """The optimizer step of the latest checkpoint (0: none), its state loaded."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0
    with checkpoint.as_directory() as path:
        _, client_state = worker.engine.load_checkpoint(path, tag=STATE_TAG)
    step = int(client_state["step"])
    if worker.rank == 0:
        print(f"[train-rm] resumed from step {step} ({checkpoint.path})", flush=True)
    return step


# ---------------------------------------------------------------- training
def _optimizer_steps(worker: _Worker, step: int) -> Iterator[tuple[int, list, int]]:
    """Trains from optimizer step `step` to the end; yields (step, micro-batch losses,
    examples) after each optimizer step."""
    config, engine = worker.config, worker.engine
    per_step = config.grad_accum
    per_epoch = config.steps_per_epoch * per_step  # micro-batches
    shard = ray.train.get_dataset_shard("train")
    losses: list = []
    examples = 0
    engine.train()
    for epoch in range(step // config.steps_per_epoch, config.epochs):
        skip = (step - epoch * config.steps_per_epoch) * per_step  # already trained on
        micro = 0
        for batch in shard.iter_batches(batch_size=config.batch_size, batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=256,
                                        local_shuffle_seed=config.seed + epoch):
            if micro >= per_epoch:
                break  # every worker stops at the same count: ZeRO needs equal steps
            micro += 1
            if micro <= skip:
                continue
            loss = _batch_loss(engine, worker.tokenizer, batch, config.objective,
                               config.max_length, worker.device)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
            examples += len(next(iter(batch.values())))
            if micro % per_step:
                continue
            step += 1
            yield step, losses, examples
            losses, examples = [], 0
        if micro < per_epoch:
            raise RuntimeError(f"worker {worker.rank} ran out of training data in epoch {epoch} "
                               f"after {micro} of {per_epoch} micro-batches")


# ---------------------------------------------------------------- reporting
def _report(worker: _Worker, validator: "_Validator", log: MetricsLog, step: int,
            window: _Window, resumed: int) -> None:
    """What every report does, on every worker together: reduce, validate, checkpoint,
    export (last step), record (rank 0); a checkpoint goes to Ray Train with the metrics.

    Only checkpoints go through `ray.train.report`: each call waits until Ray Train's
    controller has taken the previous one, and it looks every 2 s
    (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), which would pace frequent log lines. The metrics
    reach the user through `log` (console, metrics.jsonl, TensorBoard, a tracker)."""
    config = worker.config
    final = step == config.total_steps
    metrics = _window_metrics(worker, step, window, resumed)
    validation: dict[str, Any] = {}
    scores: list[float] = []
    if final or config.due(step, config.eval_every):
        validation, scores = validator.run()
        metrics.update({k: v for k, v in validation.items() if k.startswith("val_")})
    if not (final or config.due(step, config.save_every)):
        log.record(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        worker.engine.save_checkpoint(tmp, tag=STATE_TAG, client_state={"step": step})
        if final:
            _export(worker.engine, worker.model, worker.tokenizer, config.output,
                    config.deepspeed.zero_stage, worker.rank)
        log.record(metrics)
        reported = dict(metrics)
        if final:  # for the driver: Result.metrics of the fit
            reported[VAL_REPORT] = {"step": step, **validation}
            reported[VAL_SCORES] = {"rid": validator.rids, "score": scores}
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint-{step:06d}")


def _window_metrics(worker: _Worker, step: int, window: _Window, resumed: int) -> dict[str, Any]:
    """Loss and rates of the window, summed over workers; peak memory, the largest."""
    config = worker.config
    sums = torch.tensor([float(window.loss), window.batches, window.examples,
                         _peak_memory_mb(worker.device)], dtype=torch.float64, device=worker.device)
    peak = sums[3].clone()
    dist.all_reduce(sums)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    return {
        "step": step, "total_steps": config.total_steps, "epoch": step / config.steps_per_epoch,
        "fold": config.fold, "loss": float(sums[0] / max(sums[1], 1)),
        "lr": worker.scheduler.get_last_lr()[0], "examples_per_s": float(sums[2]) / elapsed,
        "peak_mem_mb": float(peak), "resumed_from": resumed,
    }


class _Validator:
    """Scores the validation rows on every worker (each its share), gathers the scores."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        config = worker.config
        self.rows = sorted(ray.train.get_dataset_shard("val").iter_rows(), key=lambda r: r["rid"])
        self.rids = [r["rid"] for r in self.rows]
        self.mine = self.rows[worker.rank::worker.world]
        # int32 arrays: a cross-fitting fold can hold many thousand long responses per worker.
        self.encoded = [np.asarray(encode(worker.tokenizer, r["prompt"] or "", r["response"],
                                          config.max_length), dtype=np.int32) for r in self.mine]
        self.batches = math.ceil(math.ceil(len(self.rows) / worker.world) / config.batch_size)

    def run(self) -> tuple[dict[str, Any], list[float]]:
        """(validation report, one score per row in rid order)."""
        worker, size = self.worker, self.worker.config.batch_size
        engine = worker.engine
        # ZeRO-3 gathers parameters in every forward: all ranks run the same number.
        engine.eval()
        local: list[float] = []
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i]))
        with torch.no_grad():
            for b in range(self.batches):
                idx = order[b * size:(b + 1) * size]
                batch = [self.encoded[i] for i in idx] or [self.encoded[0] if self.encoded
                                                            else [0]]  # pad
                ids, mask = collate(batch, worker.tokenizer.pad_token_id)
                values = engine(ids.to(worker.device), mask.to(worker.device)).tolist()
                local.extend(values[:len(idx)])
        engine.train()
        by_rank: list[Any] = [None] * worker.world
        dist.all_gather_object(by_rank, [(self.mine[i]["rid"], s) for i, s in zip(order, local)])
        scored = dict(p for part in by_rank for p in part)
        scores = [scored[rid] for rid in self.rids]
        config = worker.config
        return evaluate_scores(self.rows, scores, config.pair_scope, config.objective), scores


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    # A copy: Ray Data hands read-only NumPy views, which torch warns about sharing.
    labels = torch.tensor(batch["label"], dtype=torch.float32, device=device)
    return F.binary_cross_entropy_with_logits(scores, labels)


def _export(engine, model, tokenizer, out: str, zero_stage: int, rank: int) -> None:
    """Rank 0 writes an ordinary HF folder (safetensors) into `out` (a path or URI); ZeRO-3
    first gathers the full weights from every rank, which all ranks must join."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank != 0:
        return
    state = {k.removeprefix("model."): v.detach().cpu() for k, v in state.items()}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        out_fs, out_path = storage.filesystem(out)
        out_fs.create_dir(out_path, recursive=True)
        pafs.copy_files(tmp, out_path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=out_fs)
