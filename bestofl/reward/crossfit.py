"""`train-rm` on the driver: one reward model, or K cross-fitted ones with out-of-fold scores.

    pools -> response rows -> question split (cv=0) or K question folds (cv=K)
      -> Bradley-Terry pairs / pointwise examples (reward.data)
      -> Ray Data: `train` split across workers, `val` read whole by each worker
      -> TorchTrainer(reward.training.train_loop), checkpoints under storage_path
      -> Hugging Face folder + bestofl_rm.json + metrics.jsonl + README.md (model card)

cv=0: `output` is the reward-model folder. cv=K: `output/fold-<k>/` is the model trained
without fold k, `output/pool/` the input rows with `score` = out-of-fold scores (each row
scored once, by the model that never saw its question; its `_SUCCESS` says
`score_provenance: cross_fit`), `output/bestofl_rm.json` the score statistics of those
scores. Rerunning an unfinished output resumes: finished folds are kept, a fold in
progress continues from its last checkpoint.

`prepare` does every check and touches no Ray; `train` runs the fits (Ray must be up).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.train
from ray.train.torch import TorchTrainer
from transformers import AutoConfig

from bestofl import pool, storage
from bestofl.config import TrainRMConfig
from bestofl.ray_runtime import train_logging
from bestofl.reward import RM_INFO_FILE, card, checkpoint, data, training
from bestofl.trackers import check_tracker

POOL_DIR = "pool"
# A partial output may only be continued by the same job: its checkpoints depend on these.
SAME_JOB_KEYS = ("input", "model", "cv", "objective", "pair_scope", "max_pairs_per_question",
                 "max_pairs", "cross_fraction", "max_length", "val_fraction", "epochs",
                 "batch_size", "grad_accum", "seed", "num_workers", "deepspeed")


@dataclass(frozen=True)
class TrainingJob:
    """A checked train-rm run: its config, the input rows and where Ray Train keeps state."""

    cfg: TrainRMConfig
    table: pa.Table  # every input row (cross-fitting writes all of them back, scored)
    rows: list[dict]  # the rows the reward model reads, each with `rid` = its row in `table`
    storage_path: str
    run_name: str  # unique per output, so two outputs sharing one storage_path never mix


@dataclass(frozen=True)
class FitResult:
    """One trained model: its final validation report and one score per validation row."""

    report: dict[str, Any]
    scores: dict[int, float]  # rid -> score


def prepare(cfg: TrainRMConfig) -> TrainingJob:
    """Every check that can fail before Ray starts; then the output folder is claimed.
    (The caller has checked that the output lies apart from the inputs.)"""
    try:  # a wrong model path fails here, not minutes later in every worker
        AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"model {cfg.model!r} cannot be loaded: {e}") from None
    check_tracker(cfg.tracker)
    table = data.load_pools(cfg.input)
    rows = data.response_rows(table)
    if not any(r["correct"] is not None for r in rows):
        raise ValueError(f"no row of {cfg.input} has `correct` set: nothing to learn from "
                         "(sample or import with gold answers)")
    resuming = storage.prepare_output(cfg.output, cfg.overwrite) and storage.resume_same_job(
        cfg.output, cfg, SAME_JOB_KEYS, cfg.overwrite)
    storage.save_config(cfg.output, cfg)
    storage_path = cfg.storage_path or storage.join(cfg.output, "ray")
    digest = hashlib.sha1(cfg.output.encode()).hexdigest()[:8]
    run_name = f"{os.path.basename(cfg.output.rstrip('/'))}-{digest}"
    if not resuming and cfg.storage_path:
        fs, base = storage.filesystem(storage_path)
        for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if os.path.basename(info.path).startswith(run_name):  # stale run of a deleted output
                fs.delete_dir(info.path)
    return TrainingJob(cfg, table, rows, storage_path, run_name)


def train(job: TrainingJob) -> dict[str, Any]:
    """Train (cv=0) or cross-fit (cv=K); returns the summary also written to `_SUCCESS`."""
    cfg = job.cfg
    summary = _train_one(job) if not cfg.cv else _cross_fit(job)
    fs, base = storage.filesystem(job.storage_path)
    _drop(fs, base if not cfg.storage_path else f"{base}/{job.run_name}")
    print("bestofl train-rm: finished")
    for key, value in summary.items():
        print(f"  {key:<18} {value}")
    storage.mark_finished(cfg.output, summary)
    return summary


def _train_one(job: TrainingJob) -> dict[str, Any]:
    cfg, rows = job.cfg, job.rows
    train_q, val_q = data.split_questions([r["qid"] for r in rows], cfg.val_fraction, cfg.seed)
    if not val_q:
        raise ValueError(f"validation needs at least one question of its own: the pools "
                         f"hold {len(train_q)} question(s) at val_fraction={cfg.val_fraction}")
    train_set = set(train_q)
    result = fit(cfg, [r for r in rows if r["qid"] in train_set],
                 [r for r in rows if r["qid"] not in train_set], cfg.output, None,
                 job.storage_path, job.run_name)
    return {k: v for k, v in result.report.items() if k.startswith("val_")}


def _cross_fit(job: TrainingJob) -> dict[str, Any]:
    cfg, table, rows = job.cfg, job.table, job.rows
    folds = data.question_folds([r["qid"] for r in rows], cfg.cv, cfg.seed)
    pool_uri = storage.join(cfg.output, POOL_DIR)
    fs, base = storage.filesystem(job.storage_path)
    qids = table.column("qid").to_pylist()
    scores: dict[int, Optional[float]] = {}
    kept = [k for k in range(cfg.cv) if storage.is_finished(storage.join(cfg.output, f"fold-{k}"))]
    if kept:  # scores an earlier run wrote for its finished folds
        scores.update(_written_scores(pool_uri, table, {q for k in kept for q in folds[k]}))
    for k, held_out in enumerate(folds):
        fold_out = storage.join(cfg.output, f"fold-{k}")
        held = set(held_out)
        if k in kept:
            print(f"bestofl train-rm: fold {k} already finished, kept", flush=True)
            continue
        result = fit(cfg, [r for r in rows if r["qid"] not in held],
                     [r for r in rows if r["qid"] in held], fold_out, k,
                     job.storage_path, f"{job.run_name}-fold-{k}")
        scores.update(result.scores)
        # The held-out questions' rows (all of them, scored or not) with their scores.
        idx = [i for i, q in enumerate(qids) if q in held]
        part = table.take(idx)
        part = part.set_column(part.schema.get_field_index("score"), "score",
                               pa.array([result.scores.get(i) for i in idx], pa.float64()))
        pool.write_pool(part, pool_uri, basename=f"fold-{k}")  # same name on a rerun
        storage.mark_finished(fold_out, {"fold": k, "rows": part.num_rows})
        _drop(fs, f"{base}/{job.run_name}-fold-{k}")
    scored = [r for r in rows if scores.get(r["rid"]) is not None]
    report = training.evaluate_scores(scored, [scores[r["rid"]] for r in scored],
                                      cfg.pair_scope, cfg.objective)
    summary = {k: v for k, v in report.items() if k.startswith("val_")}
    summary.update(rows=table.num_rows, scored_rows=len(scored))
    # Evaluate reads this to know the scores are out of fold (no question scored by a
    # model that trained on it).
    storage.mark_finished(pool_uri, {"score_provenance": "cross_fit", "cv": cfg.cv,
                                     "rows": table.num_rows, "reward_model": cfg.output})
    # Calibration must match the scores evaluate reads (out of fold), not one fold's.
    meta = {"objective": cfg.objective, "pair_scope": cfg.pair_scope, "base_model": cfg.model,
            "max_length": cfg.max_length, "cv": cfg.cv, "folds": folds,
            "models": [f"fold-{k}" for k in range(cfg.cv)], "pool": POOL_DIR,
            "metrics": summary, "score_stats": report["score_stats"],
            "lang_accuracy": report["lang_accuracy"], "config": dataclasses.asdict(cfg)}
    storage.write_text(storage.join(cfg.output, RM_INFO_FILE), json.dumps(meta, indent=2) + "\n")
    return summary


def fit(cfg: TrainRMConfig, train_rows: list[dict], val_rows: list[dict], out: str,
        fold: Optional[int], storage_path: str, name: str) -> FitResult:
    """Train one model on `train_rows`, validate on `val_rows`. The workers write the HF
    folder and metrics.jsonl to `out`; this adds bestofl_rm.json and the model card."""
    examples, stats = data.training_examples(train_rows, cfg.objective, cfg.pair_scope,
                                             cfg.max_pairs_per_question, cfg.seed,
                                             cross_fraction=cfg.cross_fraction,
                                             max_total=cfg.max_pairs)
    per_step = cfg.num_workers * cfg.batch_size * cfg.grad_accum
    steps_per_epoch = len(examples) // cfg.num_workers // (cfg.batch_size * cfg.grad_accum)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(examples)} training {cfg.objective} examples ({dict(stats)}) "
                         f"are fewer than one optimizer step takes ({per_step} = num_workers x "
                         f"batch_size x grad_accum)")
    fold_text = f"fold {fold}: " if fold is not None else ""
    print(f"bestofl train-rm: {fold_text}{len(examples)} {cfg.objective} examples from "
          f"{stats['questions']} questions ({stats['one_sided_questions']} with only correct or "
          f"only incorrect responses), {len(val_rows)} validation responses; "
          f"{steps_per_epoch} steps/epoch x {cfg.epochs} on {cfg.num_workers} workers", flush=True)
    resources = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    val_columns = ("rid", *data.ROW_COLUMNS)
    datasets = {"train": ray.data.from_items(examples),
                "val": ray.data.from_items([{c: r[c] for c in val_columns} for r in val_rows])}
    for dataset in datasets.values():  # every worker's bars would flood the console
        dataset.context.enable_progress_bars = False
    trainer = TorchTrainer(
        training.train_loop,
        train_loop_config=training.WorkerConfig.of(cfg, steps_per_epoch, out, fold),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            logging_config=train_logging()),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        final = trainer.fit().metrics
    except ray.train.WorkerGroupError as e:
        refused = next(filter(None, map(checkpoint.refusal, e.worker_failures.values())), None)
        if refused is not None:  # a planted or foreign checkpoint: stop, say so in one line
            raise refused from None
        raise
    report = final[training.VAL_REPORT]
    scores = dict(zip(final[training.VAL_SCORES]["rid"], final[training.VAL_SCORES]["score"]))
    meta = {
        "objective": cfg.objective, "pair_scope": cfg.pair_scope, "base_model": cfg.model,
        "max_length": cfg.max_length, "fold": fold, "step": report["step"],
        "metrics": {k: v for k, v in report.items() if k.startswith("val_")},
        "score_stats": report["score_stats"], "lang_accuracy": report["lang_accuracy"],
        "data": {k: int(v) for k, v in stats.items()},
        "train_qids": sorted({r["qid"] for r in train_rows}),
        "val_qids": sorted({r["qid"] for r in val_rows}),
        "config": dataclasses.asdict(cfg),
    }
    storage.write_text(storage.join(out, RM_INFO_FILE), json.dumps(meta, indent=2) + "\n")
    storage.write_text(storage.join(out, card.MODEL_CARD),
                       card.model_card(cfg, meta, train_rows, val_rows))
    return FitResult(report, scores)


def _written_scores(pool_uri: str, table: pa.Table, held: set[str]) -> dict[int, Optional[float]]:
    """Scores an earlier run wrote for a kept fold, by row index of `table`."""
    written = pool.read_pool(pool_uri)
    by_identity = dict(zip(pool.identities(written), written.column("score").to_pylist()))
    qids = table.column("qid").to_pylist()
    return {i: by_identity.get(identity) for i, identity in enumerate(pool.identities(table))
            if qids[i] in held}


def _drop(fs: pafs.FileSystem, path: str) -> None:
    """Training state is only for resuming: a finished output does not keep it."""
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
