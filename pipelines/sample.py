"""`bestofl sample`: questions -> candidate pool, with vLLM engines on Ray Data actors.

    questions (driver) -> work items (qid, question_lang, response_lang, indices to draw)
        -> from_items -> map_batches(Sampler: one vLLM engine per actor, batches_in_flight calls at once)
        -> each actor writes its batch's rows as Parquet parts (partitioned by response_lang)
        -> the driver counts the one-row summaries that come back

Resumable: a rerun into an unfinished output draws only the sample indices it lacks, so a
crash loses at most the batches in flight. Actors that die are restarted by Ray and their
batches retried (Ray Data's default max_restarts/max_task_retries = -1); a batch's part
names derive from its work items, so a retry overwrites what its dead attempt wrote.
The finished pool is checked for duplicate row identities before it is marked done.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Sequence

import pyarrow.compute as pc
import ray
from tqdm import tqdm

from bestofl import engine, models, pool, preflight, sampling, storage
from bestofl.config import SampleConfig
from bestofl.plan import command_main
from bestofl.languages import resolve_languages
from bestofl.questions import load_questions
from bestofl.ray_runtime import init_ray


def check(cfg: SampleConfig) -> None:
    """What fails before any Ray work: the model, and a KV cache too small for it."""
    models.check_language_model(cfg.model)
    engine.check_kv_cache(engine.engine_args(cfg.model, cfg.engine, cfg.actors.num_gpus))


def run(cfg: SampleConfig) -> dict[str, Any]:
    storage.check_output_apart(cfg.output, [cfg.questions, cfg.model])
    cfg = dataclasses.replace(cfg, model=models.absolute_model(cfg.model),
                              output=storage.absolute(cfg.output))
    check(cfg)
    if cfg.mode == "forcing":
        questions = load_questions(cfg.questions, [cfg.question_lang], cfg.limit, cfg.skip_malformed)
        languages = resolve_languages(cfg.languages) if cfg.languages else sorted(
            {q["lang"] for q in load_questions(cfg.questions, None, 1, cfg.skip_malformed)})
    else:
        questions = load_questions(cfg.questions, cfg.languages or None, cfg.limit, cfg.skip_malformed)
        languages = resolve_languages(cfg.languages, {q["lang"] for q in questions})
    if not questions or not languages:
        raise ValueError(f"no questions to sample from {cfg.questions} (languages {languages})")
    model = sampling.model_name(cfg)
    preflight.require(cfg)  # before writing anything: fails in seconds where Ray would wait forever

    if storage.prepare_output(cfg.output, cfg.overwrite):
        sampling.check_resumable(cfg.output, cfg)
    storage.save_config(cfg.output, cfg)
    done = sampling.written(cfg.output, model)
    items = sampling.work_items(questions, cfg.mode, languages, cfg.question_lang, cfg.n, done)
    n_questions = len({q["qid"] for q in questions})
    todo = sum(len(it["sample_idxs"]) for it in items)
    already = sum(len(v) for v in done.values())
    print(f"bestofl sample: {n_questions} questions x {len(languages)} languages ({cfg.mode}), "
          f"n={cfg.n}: {todo} samples to draw, {already} already in {cfg.output}; "
          f"{cfg.actors.num_actors} actor(s) of {model}", flush=True)

    start = time.perf_counter()
    new = tokens = errors = 0
    first = None  # seconds to the first finished batch: Ray, actors and engines starting
    if items:
        init_ray(cfg.ray)
        a = cfg.actors
        # One block per actor batch: each batch's rows come back (progress, resume) on their own.
        blocks = -(-len(items) // a.batch_size)
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            sampling.Sampler, fn_constructor_kwargs={"cfg": cfg, "model": model},
            batch_size=a.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                size=a.num_actors, max_concurrent_calls_per_actor=a.batches_in_flight),
            num_cpus=a.num_cpus, num_gpus=a.num_gpus, resources=a.resources or None,
            runtime_env={"env_vars": {**sampling.ACTOR_ENV, **a.env_vars}})
        with tqdm(total=todo, desc="samples", unit="sample", dynamic_ncols=True) as bar:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                first = first or time.perf_counter() - start
                rows = pc.sum(table.column("rows")).as_py() or 0
                new += rows
                tokens += pc.sum(table.column("tokens")).as_py() or 0
                errors += pc.sum(table.column("errors")).as_py() or 0
                bar.update(rows)
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}", errors=errors)
    seconds = time.perf_counter() - start
    pool.drop_staging(cfg.output)  # what actors killed mid-write left (readers skip it anyway)
    pool.read_pool(cfg.output, columns=list(pool.IDENTITY))  # refuses an identity written twice
    summary = {"questions": n_questions, "languages": languages, "mode": cfg.mode, "model": model,
               "samples": already + new, "new_samples": new, "generated_tokens": tokens,
               "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
               "errors": errors, "seconds": round(seconds, 1),
               "first_batch_s": round(first, 1) if first else None}
    storage.mark_finished(cfg.output, summary)
    print(f"bestofl sample: {n_questions} questions, {already + new} samples ({new} new), "
          f"{tokens} generated tokens, {summary['tokens_per_s']} tokens/s, {errors} errors, "
          f"{seconds:.0f} s -> {cfg.output}", flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("sample", argv, run)


if __name__ == "__main__":
    sys.exit(main())
