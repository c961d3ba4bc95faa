"""`bestofl train-rm`: candidate pools -> outcome reward model (Ray Train + DeepSpeed).

    pools -> response rows -> question split (cv=0) or K question folds (cv=K)
      -> Bradley-Terry pairs / pointwise examples (bestofl.reward.data)
      -> Ray Data: `train` split across workers, `val` read whole by each worker
      -> TorchTrainer(reward.training.train_loop), checkpoints under storage_path
      -> Hugging Face folder + bestofl_rm.json + metrics.jsonl

cv=0: `output` is the reward-model folder. cv=K: `output/fold-<k>/` is the model trained
without fold k, `output/pool/` the input rows with `score` = out-of-fold scores (each row
scored once, by the model that never saw its question), `output/bestofl_rm.json` the
score statistics of those scores. Rerunning an unfinished output resumes: finished folds
are kept, a fold in progress continues from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.train
from omegaconf import OmegaConf
from ray.train.torch import TorchTrainer
from transformers import AutoConfig

from bestofl import pool, storage
from bestofl.config import TrainRMConfig, parse_command_line
from bestofl.ray_runtime import init_ray, train_logging
from bestofl.reward import data, training

RM_METADATA = "bestofl_rm.json"
METRICS = "metrics.jsonl"
# A partial output may only be continued by the same job: its checkpoints depend on these.
SAME_JOB_KEYS = ("input", "model", "cv", "objective", "pair_scope", "max_pairs_per_question",
                 "max_length", "val_fraction", "epochs", "batch_size", "grad_accum", "seed",
                 "num_workers", "deepspeed")
FAULT_ENV = "BESTOFL_FAULT_AFTER_STEP"  # tests: make every worker fail after that step


def _local(uri: str, must_exist: bool = False) -> str:
    """Absolute local paths for workers (they run in other folders); URIs and hub ids
    (a model path that is not on disk) stay as given."""
    if "://" in uri or (must_exist and not os.path.exists(uri)):
        return uri
    return os.path.abspath(uri)


def _same_job(cfg: TrainRMConfig) -> bool:
    """Whether a partial output may be resumed; another job's is refused, or cleared
    when overwrite=true (its checkpoints would not fit this run)."""
    text = storage.saved_config(cfg.output)
    if text is None:
        return True
    saved = OmegaConf.to_container(OmegaConf.create(text))
    now = dataclasses.asdict(cfg)
    diff = [k for k in SAME_JOB_KEYS if saved.get(k) != now[k]]
    if not diff:
        return True
    if not cfg.overwrite:
        raise ValueError(f"{cfg.output} holds a partial run of another job (different "
                         f"{', '.join(diff)}); pass overwrite=true to start it over")
    fs, path = storage.filesystem(cfg.output)
    fs.delete_dir_contents(path)
    return False


def _fit(cfg: TrainRMConfig, train_rows: list[dict], val_rows: list[dict], out: str,
         fold: int | None, storage_path: str, name: str) -> dict[str, Any]:
    """Train one model on `train_rows`, validate on `val_rows`; write the HF folder,
    bestofl_rm.json and metrics.jsonl to `out`. Returns the final validation report."""
    examples, stats = data.training_examples(train_rows, cfg.objective, cfg.pair_scope,
                                             cfg.max_pairs_per_question, cfg.seed)
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
    fault = os.environ.get(FAULT_ENV)
    loop_config = {**dataclasses.asdict(cfg), "steps_per_epoch": steps_per_epoch, "fold": fold,
                   "metrics_path": storage.join(out, METRICS),
                   "fault_after_step": int(fault) if fault else None}
    resources = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    val_columns = ("rid", *data.ROW_COLUMNS)
    datasets = {"train": ray.data.from_items(examples),
                "val": ray.data.from_items([{c: r[c] for c in val_columns} for r in val_rows])}
    for ds in datasets.values():  # every worker's bars would flood this console; train-rm logs progress
        ds.context.enable_progress_bars = False
    trainer = TorchTrainer(
        training.train_loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            logging_config=train_logging()),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    checkpoint = result.checkpoint
    fs, path = checkpoint.filesystem, checkpoint.path
    out_fs, out_path = storage.filesystem(out)
    pafs.copy_files(f"{path}/model", out_path, source_filesystem=fs, destination_filesystem=out_fs)
    with fs.open_input_stream(f"{path}/{training.VAL_REPORT}") as f:
        report = json.loads(f.read())
    report["scores"] = pq.read_table(f"{path}/{training.VAL_SCORES}", filesystem=fs)
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
    storage.write_text(storage.join(out, RM_METADATA), json.dumps(meta, indent=2) + "\n")
    return report


def run(cfg: TrainRMConfig) -> dict[str, Any]:
    cfg = dataclasses.replace(cfg, input=[_local(p) for p in cfg.input],
                              model=_local(cfg.model, must_exist=True),
                              output=_local(cfg.output),
                              storage_path=_local(cfg.storage_path) if cfg.storage_path else None)
    storage.check_output_apart(cfg.output, [*cfg.input, cfg.model if os.path.exists(cfg.model) else None])
    try:  # a wrong model path fails here, not minutes later in every worker
        AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"model {cfg.model!r} cannot be loaded: {e}") from None
    table = data.load_pools(cfg.input)
    rows = data.response_rows(table)
    if not any(r["correct"] is not None for r in rows):
        raise ValueError(f"no row of {cfg.input} has `correct` set: nothing to learn from "
                         "(sample or import with gold answers)")
    resuming = storage.prepare_output(cfg.output, cfg.overwrite) and _same_job(cfg)
    storage.save_config(cfg.output, cfg)
    storage_path = cfg.storage_path or storage.join(cfg.output, "ray")
    # Run names unique per output, so two outputs sharing one storage_path never mix.
    digest = hashlib.sha1(cfg.output.encode()).hexdigest()[:8]
    run_name = f"{os.path.basename(cfg.output.rstrip('/'))}-{digest}"
    fs, base = storage.filesystem(storage_path)
    if not resuming and cfg.storage_path:
        for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if os.path.basename(info.path).startswith(run_name):  # stale run of a deleted output
                fs.delete_dir(info.path)
    init_ray(cfg.ray)

    if not cfg.cv:
        qids = [r["qid"] for r in rows]
        train_q, val_q = data.split_questions(qids, cfg.val_fraction, cfg.seed)
        if not val_q:
            raise ValueError(f"validation needs at least one question of its own: the pools "
                             f"hold {len(train_q)} question(s) at val_fraction={cfg.val_fraction}")
        train_q = set(train_q)
        report = _fit(cfg, [r for r in rows if r["qid"] in train_q],
                      [r for r in rows if r["qid"] not in train_q], cfg.output, None,
                      storage_path, run_name)
        summary = {k: v for k, v in report.items() if k.startswith("val_")}
    else:
        folds = data.question_folds([r["qid"] for r in rows], cfg.cv, cfg.seed)
        pool_uri = storage.join(cfg.output, "pool")
        for k, held_out in enumerate(folds):
            fold_out = storage.join(cfg.output, f"fold-{k}")
            if storage.is_finished(fold_out):
                print(f"bestofl train-rm: fold {k} already finished, kept", flush=True)
                continue
            held = set(held_out)
            report = _fit(cfg, [r for r in rows if r["qid"] not in held],
                          [r for r in rows if r["qid"] in held], fold_out, k,
                          storage_path, f"{run_name}-fold-{k}")
            # The held-out questions' rows (all of them, scored or not) with their scores.
            idx = [i for i, q in enumerate(table.column("qid").to_pylist()) if q in held]
            part = table.take(idx)
            scores = dict(zip(report["scores"].column("rid").to_pylist(),
                              report["scores"].column("score").to_pylist()))
            part = part.set_column(part.schema.get_field_index("score"), "score",
                                   pa.array([scores.get(i) for i in idx], pa.float64()))
            pool.write_pool(part, pool_uri, basename=f"fold-{k}")  # same name on a rerun
            storage.mark_finished(fold_out, {"fold": k, "rows": part.num_rows})
            _drop(fs, f"{base}/{run_name}-fold-{k}")
        summary = _oof_metadata(cfg, pool_uri, folds)
    _drop(fs, base if not cfg.storage_path else f"{base}/{run_name}")
    print("bestofl train-rm: finished")
    for key, value in summary.items():
        print(f"  {key:<18} {value}")
    storage.mark_finished(cfg.output, summary)
    return summary


def _oof_metadata(cfg: TrainRMConfig, pool_uri: str, folds: list[list[str]]) -> dict[str, Any]:
    """bestofl_rm.json for the out-of-fold pool: metrics and per-language statistics of
    the scores evaluate will read (calibration must match those, not one fold's)."""
    scored = pool.read_pool(pool_uri)
    rows = [r for r in scored.select(["qid", "response_lang", "correct", "score"]).to_pylist()
            if r["score"] is not None]
    report = training.evaluate_scores(rows, [r["score"] for r in rows], cfg.pair_scope,
                                      cfg.objective)
    summary = {k: v for k, v in report.items() if k.startswith("val_")}
    summary.update(rows=scored.num_rows, scored_rows=len(rows))
    meta = {"objective": cfg.objective, "pair_scope": cfg.pair_scope, "base_model": cfg.model,
            "max_length": cfg.max_length, "cv": cfg.cv, "folds": folds,
            "models": [f"fold-{k}" for k in range(cfg.cv)], "pool": "pool",
            "metrics": summary, "score_stats": report["score_stats"],
            "lang_accuracy": report["lang_accuracy"], "config": dataclasses.asdict(cfg)}
    storage.write_text(storage.join(cfg.output, RM_METADATA), json.dumps(meta, indent=2) + "\n")
    return summary


def _drop(fs: pafs.FileSystem, path: str) -> None:
    """Training state is only for resuming: a finished output does not keep it."""
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_command_line("train_rm", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
