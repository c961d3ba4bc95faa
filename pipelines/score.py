"""`bestofl score`: candidate pool + reward model -> the same pool with `score`.

    read_parquet(input) -> sort_by_length (windows, minus rows already in output)
        -> blocks of actors.batch_size rows
        -> PoolScorer actors (reward model, concurrency = actors.num_actors), each writing
           its batches as pool parts (partitioned by response_lang); the driver counts rows

Resumable: rerunning into an unfinished output scores only the rows it lacks (by row
identity). Rows with `error` set or an empty response get score null; a score the input
already had is replaced.
"""
from __future__ import annotations

import dataclasses
import posixpath
import sys
import time
from typing import Any, Sequence

import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
from ray.data.datasource import Partitioning
from tqdm import tqdm

from bestofl import models, pool, preflight, scoring, storage
from bestofl.config import ScoreConfig
from bestofl.plan import command_main
from bestofl.ray_runtime import init_ray

# A partial output may only be continued by the same job: other scores would mix in.
SAME_JOB_KEYS = ("input", "model", "max_length", "dtype")


def run(cfg: ScoreConfig) -> dict[str, Any]:
    cfg = dataclasses.replace(cfg, input=storage.absolute(cfg.input),
                              model=models.absolute_model(cfg.model),
                              output=storage.absolute(cfg.output))
    storage.check_output_apart(cfg.output, [cfg.input, cfg.model])
    models.check_reward_model(cfg.model, cfg.trust_remote_code)
    source = pool.read_pool(cfg.input, pool.IDENTITY)
    if source.num_rows == 0:
        raise pool.PoolError(f"input pool {cfg.input} holds no rows")
    preflight.require(cfg)  # before writing anything: fails in seconds where Ray would wait forever

    resuming = storage.prepare_output(cfg.output, cfg.overwrite)
    dropped: list[str] = []
    if resuming:
        storage.resume_same_job(cfg.output, cfg, SAME_JOB_KEYS, cfg.overwrite)
        dropped = scoring.drop_partial_files(cfg.output)
    storage.save_config(cfg.output, cfg)
    done = pool.identity_keys(pool.read_pool(cfg.output, pool.IDENTITY))
    if len(done) and not pc.all(pc.is_in(done, value_set=pool.identity_keys(source))).as_py():
        raise pool.PoolError(f"{cfg.output} holds rows that are not in {cfg.input}: "
                             "remove it or choose another output")
    todo = source.num_rows - len(done)
    print(f"bestofl score: {source.num_rows} rows in {cfg.input}; {len(done)} already scored "
          f"in {cfg.output}; scoring {todo} with {cfg.actors.num_actors} actor(s)"
          + (f"; dropped {len(dropped)} half-written file(s)" if dropped else ""), flush=True)

    start = time.perf_counter()
    if todo > 0:
        init_ray(cfg.ray)
        in_fs, in_path = storage.filesystem(cfg.input)
        one_file = in_fs.get_file_info(in_path).type == pafs.FileType.File
        base = posixpath.dirname(in_path) if one_file else in_path
        use_gpu = cfg.actors.num_gpus > 0
        ds = ray.data.read_parquet(
            pool.parquet_files(cfg.input), filesystem=in_fs,
            partitioning=Partitioning("hive", base_dir=base, filesystem=in_fs))
        ds = ds.map_batches(scoring.sort_by_length, batch_size=cfg.sort_window,
                            batch_format="pyarrow", fn_kwargs={"done": done if len(done) else None})
        # Cut sorted windows into actor-batch blocks (order kept): every actor gets work
        # and progress moves batch by batch, not window by window.
        ds = ds.repartition(target_num_rows_per_block=cfg.actors.batch_size)
        ds = ds.map_batches(
            scoring.PoolScorer, batch_size=cfg.actors.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.actors.num_actors),
            num_cpus=cfg.actors.num_cpus,
            num_gpus=cfg.actors.num_gpus if use_gpu else None,
            resources=dict(cfg.actors.resources) or None,
            runtime_env={"env_vars": dict(cfg.actors.env_vars)} if cfg.actors.env_vars else None,
            fn_constructor_kwargs=dict(
                model=cfg.model, dtype=cfg.dtype, max_length=cfg.max_length,
                batch_size=cfg.forward_batch_size, output=cfg.output, use_gpu=use_gpu,
                threads=None if use_gpu else (cfg.torch_threads or max(1, int(cfg.actors.num_cpus))),
                trust_remote_code=cfg.trust_remote_code))
        # The actors write the parts (staged, then moved into place): the driver only counts rows.
        with tqdm(total=todo, desc="scored", unit="row", dynamic_ncols=True) as bar:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(pc.sum(table.column("rows")).as_py() or 0)
        pool.drop_staging(cfg.output)  # what actors killed mid-write left (readers skip it anyway)
    seconds = time.perf_counter() - start

    result = pool.read_pool(cfg.output, [*pool.IDENTITY, "score"])
    if result.num_rows != source.num_rows:
        raise pool.PoolError(f"{cfg.output} holds {result.num_rows} rows, the input "
                             f"{source.num_rows}; rerun to finish the missing ones")
    scored = result.num_rows - result.column("score").null_count
    summary = {
        "rows": result.num_rows, "already_scored": len(done), "scored_now": todo,
        "with_score": scored, "null_score": result.num_rows - scored,
        "seconds": round(seconds, 2), "rows_per_s": round(todo / seconds, 2) if todo else None,
        "languages": pool.languages(result), "model": cfg.model,
    }
    print("bestofl score: finished")
    for key, value in summary.items():
        print(f"  {key:<15} {value}")
    storage.mark_finished(cfg.output, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("score", argv, run)


if __name__ == "__main__":
    sys.exit(main())
