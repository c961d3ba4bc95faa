"""`bestofl compare REPORT_A REPORT_B`: paired differences B - A of every row the two
evaluate reports share (target, pool, selector, budget), from their per_question.parquet.

Paired: each row's difference is taken per question, and one bootstrap resampling of
the questions serves every row, so both reports see the same resampled questions. The
two reports must cover the same questions for every shared row (e.g. two reward models
scored on the same pool); anything else is refused.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq

from bestofl import bootstrap, storage

KEY = ("target_lang", "pool", "selector", "budget")
PER_QUESTION_FILE = "per_question.parquet"


def read_per_question(report: str) -> dict[tuple, dict[str, float]]:
    """(target, pool, selector, budget) -> {qid: expected accuracy} of one report folder."""
    uri = storage.join(report, PER_QUESTION_FILE)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} not found: compare needs reports written by "
                                f"`bestofl evaluate` (per_question.parquet)")
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs)
    missing = [c for c in (*KEY, "qid", "accuracy") if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri} lacks columns {missing}")
    rows: dict[tuple, dict[str, float]] = {}
    cols = [table[c].to_pylist() for c in (*KEY, "qid", "accuracy")]
    for t, pool, sel, k, qid, acc in zip(*cols):
        rows.setdefault((t, pool, sel, int(k)), {})[qid] = acc
    return rows


def compare(report_a: str, report_b: str, resamples: int = 1000, confidence: float = 0.95,
            seed: int = 0) -> list[dict[str, Any]]:
    """One dict per shared row: the key, accuracy_a, accuracy_b, diff (B - A), ci_low,
    ci_high, n_questions."""
    a, b = read_per_question(report_a), read_per_question(report_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"{report_a} and {report_b} share no (target, pool, selector, budget) row")
    for key in shared:
        if set(a[key]) != set(b[key]):
            only_a, only_b = len(set(a[key]) - set(b[key])), len(set(b[key]) - set(a[key]))
            raise ValueError(f"the reports cover different questions for {'/'.join(map(str, key))} "
                             f"({only_a} only in A, {only_b} only in B): a paired comparison "
                             f"needs the same questions")
    qids = sorted({q for key in shared for q in a[key]})
    at = {q: i for i, q in enumerate(qids)}
    sets: dict[frozenset, int] = {}
    acc = np.zeros((2, len(shared), len(qids)))
    group = np.empty(len(shared), dtype=np.int64)
    for e, key in enumerate(shared):
        idx = [at[q] for q in a[key]]
        acc[0, e, idx] = list(a[key].values())
        acc[1, e, idx] = [b[key][q] for q in a[key]]
        group[e] = sets.setdefault(frozenset(a[key]), len(sets))
    members = np.zeros((len(sets), len(qids)))
    for s, g in sets.items():
        members[g, [at[q] for q in s]] = 1.0
    diff = acc[1] - acc[0]
    size = members.sum(axis=1)[group]
    point = diff.sum(axis=1) / size
    if resamples:
        counts = bootstrap.resample_counts(len(qids), resamples, np.random.default_rng(seed))
        lo, hi = bootstrap.interval(bootstrap.resampled_means(diff, counts, members, group),
                                    confidence)
    else:
        lo = hi = point
    return [{"target_lang": key[0], "pool": key[1], "selector": key[2], "budget": key[3],
             "accuracy_a": float(acc[0, e].sum() / size[e]),
             "accuracy_b": float(acc[1, e].sum() / size[e]), "diff": float(point[e]),
             "ci_low": float(lo[e]), "ci_high": float(hi[e]), "n_questions": int(size[e])}
            for e, key in enumerate(shared)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bestofl compare",
        description="paired differences B - A of every row two evaluate reports share")
    parser.add_argument("report_a")
    parser.add_argument("report_b")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the questions")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.bootstrap < 0 or not 0 < args.confidence < 1:
        raise ValueError("--bootstrap must be >= 0 and --confidence in (0, 1)")
    rows = compare(args.report_a, args.report_b, args.bootstrap, args.confidence, args.seed)
    print(f"A: {args.report_a}\nB: {args.report_b}\naccuracy (%) and the paired difference "
          f"B - A in points, {100 * args.confidence:.0f}% bootstrap interval over the same "
          f"resampled questions ({args.bootstrap} resamples)")
    print(f"{'target':<7}{'pool':<6}{'selector':<11}{'k':>5}{'A':>8}{'B':>8}"
          f"{'B - A':>9}  interval")
    for r in rows:
        mark = " *" if r["ci_low"] > 0 or r["ci_high"] < 0 else ""
        print(f"{r['target_lang']:<7}{r['pool']:<6}{r['selector']:<11}{r['budget']:>5}"
              f"{100 * r['accuracy_a']:>8.1f}{100 * r['accuracy_b']:>8.1f}"
              f"{100 * r['diff']:>+9.1f}  [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
              f"{mark}")
    print("*: the interval excludes 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
