"""Scoring throughput: `bestofl score` (Ray Data actors) versus a plain batched forward pass.

Both sides score the same rows (real multilingual reasoning traces from
../shared/data/xling-traces) with the same reward model, max_length, forward batch size
and torch threads. The plain side is `bestofl.reward.model.score` in this process on rows
already in memory, model already loaded (half the rows before the pipeline run, half after). The pipeline side is the whole `score` job after
Ray is up: reading the pool, actor start-up and model load, length grouping, scoring,
writing the partitioned output and verifying it.

    python benchmarks/score_throughput.py [--rows N] [--model RM_DIR]

Prints a table, then `score_throughput_ratio: <pipeline rows/s / plain rows/s>`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRACES = ROOT.parent / "shared" / "data" / "xling-traces" / "s1.1-14B"


def trace_rows(source: Path, n: int) -> list[dict]:
    """Up to n pool rows (0: all), taken round-robin over (method, language) files so lengths mix."""
    files = sorted(p for p in source.glob("*/*.jsonl.gz") if p.parent.name != "nxn-en-query")
    if not files:
        sys.exit(f"no traces under {source}")
    streams = [(p.parent.name, p.name.split(".")[0], gzip.open(p, "rt", encoding="utf-8"))
               for p in files]
    rows: list[dict] = []
    for i in range(250):
        for method, lang, f in streams:
            line = f.readline()
            if line and (n == 0 or len(rows) < n):
                rec = json.loads(line)
                rows.append(dict(qid=f"mgsm-{i:03d}", question_lang=lang, response_lang=lang,
                                 sample_idx=0, model=source.name, method=method,
                                 prompt=rec["prompt"], response=rec["output"],
                                 gold=str(rec["gold_answer"])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=0,
                    help="0: every trace of the source (13,000 for s1.1-14B), a job where the fixed "
                         "start-up weighs what it does at scale (~25 s on 2 cores: the actor's "
                         "torch/transformers imports and model load, while the read starts)")
    ap.add_argument("--model", default=None, help="reward-model folder (default: a tiny RM)")
    ap.add_argument("--source", default=str(TRACES), help="an xling-traces model folder")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--forward-batch-size", type=int, default=16)
    ap.add_argument("--actor-batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch threads, both sides (the actor's num_cpus)")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import ray
    import torch

    from bestofl import pool
    from bestofl.config import load_config
    from bestofl.reward.model import load_reward_model, score
    from bestofl.tiny import write_tiny_model
    from pipelines.score import run

    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    model = args.model or str(write_tiny_model(work / "rm", kind="rm"))
    rows = trace_rows(Path(args.source), args.rows)
    pool.write_pool(pool.to_table(rows), str(work / "pool"))
    chars = sum(len(r["prompt"]) + len(r["response"]) for r in rows) / len(rows)

    # Plain: one process, rows in memory, model loaded, same threads. Half the rows before
    # the pipeline and half after, so load drift on a shared machine hits both sides alike.
    torch.set_num_threads(args.threads)
    rm, tokenizer = load_reward_model(model, args.dtype)

    def plain(part: list[dict]) -> tuple[list[float], float]:
        t0 = time.perf_counter()
        values = score(rm, tokenizer, [r["prompt"] for r in part], [r["response"] for r in part],
                       max_length=args.max_length, batch_size=args.forward_batch_size)
        return values, time.perf_counter() - t0

    half = len(rows) // 2
    plain_scores, plain_s = plain(rows[:half])

    # Pipeline: Ray start-up excluded (up before the clock), everything else included.
    cfg = load_config("score", None, [
        f"input={work / 'pool'}", f"model={model}", f"output={work / 'scored'}",
        f"max_length={args.max_length}", f"dtype={args.dtype}",
        f"forward_batch_size={args.forward_batch_size}", f"actors.batch_size={args.actor_batch_size}",
        f"actors.num_cpus={args.threads}", f"torch_threads={args.threads}",
        f"ray.num_cpus={args.threads + 2}"])
    from bestofl.ray_runtime import init_ray

    init_ray(cfg.ray)
    t0 = time.perf_counter()
    run(cfg)
    pipe_s = time.perf_counter() - t0
    ray.shutdown()
    values, after_s = plain(rows[half:])
    before_s, plain_s, plain_scores = plain_s, plain_s + after_s, plain_scores + values

    got = {tuple(r[c] for c in pool.IDENTITY): r["score"]
           for r in pool.read_pool(str(work / "scored")).to_pylist()}
    diff = max(abs(got[tuple(r.get(c) for c in pool.IDENTITY)] - s)
               for r, s in zip(rows, plain_scores) if r["response"].strip())
    plain_rate, pipe_rate = len(rows) / plain_s, len(rows) / pipe_s
    print(f"\nrows {len(rows)}, mean {chars:.0f} chars, max_length {args.max_length}, "
          f"threads {args.threads}, dtype {args.dtype}, model {model}")
    print(f"{'side':<28}{'seconds':>10}{'rows/s':>10}")
    print(f"{'plain, first half (before)':<28}{before_s:>10.2f}{half / before_s:>10.2f}")
    print(f"{'plain, second half (after)':<28}{after_s:>10.2f}{(len(rows) - half) / after_s:>10.2f}")
    print(f"{'plain batched forward':<28}{plain_s:>10.2f}{plain_rate:>10.2f}")
    print(f"{'bestofl score (1 actor)':<28}{pipe_s:>10.2f}{pipe_rate:>10.2f}")
    print(f"max |score difference| {diff:.2e}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"score_throughput_ratio: {pipe_rate / plain_rate:.3f}")


if __name__ == "__main__":
    main()
