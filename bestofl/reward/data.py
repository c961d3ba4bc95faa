"""Reward-model training data from candidate pools.

Rows the reward model reads are those `bestofl score` scores (no error, a non-blank
response), with the pool's `prompt` as the question. From them:
- pointwise examples: (prompt, response, label = correct);
- Bradley-Terry pairs: a correct and an incorrect response to the same question, within
  one response language, across two, or both (a set share of each).
Every question contributes at most `max_per_question` items, drawn round-robin over its
languages (pointwise) or language pairs (pairwise), so neither a question with many
samples nor a language with many wrong answers dominates. Splits and folds are by
question: a qid is never on both sides.

Questions whose responses are all correct (or all incorrect) give no pair and are left
out of pairwise training (counted in `stats`); pointwise training keeps them, as they are
still labelled examples.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any, Sequence

import pyarrow as pa

from bestofl.pool import read_pools
from bestofl.scoring import needs_score

# Columns a response row carries through training and validation.
ROW_COLUMNS = ("qid", "response_lang", "prompt", "response", "correct")


def load_pools(inputs: Sequence[str]) -> pa.Table:
    """All input pools as one table; a row identity in two pools is an error."""
    if not inputs:
        raise ValueError("input: give at least one candidate pool")
    return read_pools(inputs)


def response_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows the reward model reads, each with `rid` = its index in `table`."""
    keep = needs_score(table)
    columns = {c: table.column(c).to_pylist() for c in ROW_COLUMNS}
    return [dict(rid=i, **{c: columns[c][i] for c in ROW_COLUMNS})
            for i in range(table.num_rows) if keep[i]]


def split_questions(qids: Sequence[str], val_fraction: float, seed: int
                    ) -> tuple[list[str], list[str]]:
    """(train qids, validation qids), disjoint; at least one of each when there are two+."""
    unique = sorted(set(qids))
    random.Random(seed).shuffle(unique)
    n_val = round(len(unique) * val_fraction)
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    return sorted(unique[n_val:]), sorted(unique[:n_val])


def question_folds(qids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """K disjoint folds of questions covering every qid, sizes within one of each other."""
    unique = sorted(set(qids))
    if len(unique) < k:
        raise ValueError(f"cv={k} needs at least {k} questions, the pools have {len(unique)}")
    random.Random(seed).shuffle(unique)
    return [sorted(unique[i::k]) for i in range(k)]


def round_robin(buckets: Sequence[Sequence[Any]], limit: int) -> list[Any]:
    """One item from each bucket in turn until `limit` items or all buckets run dry."""
    out: list[Any] = []
    depth = 0
    while len(out) < limit and any(depth < len(b) for b in buckets):
        for bucket in buckets:
            if depth < len(bucket) and len(out) < limit:
                out.append(bucket[depth])
        depth += 1
    return out


def _interleave(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    return round_robin([a, b], len(a) + len(b))


def _by_question(rows: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["correct"] is not None:
            groups[row["qid"]].append(row)
    return dict(sorted(groups.items()))


def pointwise_examples(rows: Sequence[dict], max_per_question: int, seed: int,
                       stats: Counter | None = None) -> list[dict]:
    """(prompt, response, label) examples: per question, round-robin over languages,
    alternating correct and incorrect within a language."""
    rng = random.Random(seed)
    out = []
    for qid, group in _by_question(rows).items():
        langs: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for row in group:
            langs[row["response_lang"]][0 if row["correct"] else 1].append(row)
        buckets = []
        for lang in sorted(langs):
            good, bad = langs[lang]
            rng.shuffle(good)
            rng.shuffle(bad)
            buckets.append(_interleave(good, bad))
        rng.shuffle(buckets)
        for row in round_robin(buckets, max_per_question):
            out.append({"qid": qid, "prompt": row["prompt"] or "", "response": row["response"],
                        "label": float(row["correct"])})
        if stats is not None:
            stats["questions"] += 1
            stats["one_sided_questions"] += len({r["correct"] for r in group}) == 1
    rng.shuffle(out)
    return out


def pairwise_examples(rows: Sequence[dict], scope: str, max_per_question: int, seed: int,
                      stats: Counter | None = None, cross_fraction: float = 0.5) -> list[dict]:
    """Bradley-Terry pairs (a = correct, b = incorrect) of the same question.

    Candidate pairs are bucketed by (language of a, language of b); buckets of a kind
    (within one language, across two) are visited round-robin. With scope `both`, a
    question gives `cross_fraction` of its pairs across languages and the rest within,
    however many buckets of each kind it has; a kind that runs short leaves its share
    to the other.
    """
    if scope not in ("within", "cross", "both"):
        raise ValueError(f"pair scope must be within|cross|both, got {scope!r}")
    rng = random.Random(seed)
    out = []
    for qid, group in _by_question(rows).items():
        good: dict[str, list] = defaultdict(list)
        bad: dict[str, list] = defaultdict(list)
        for row in group:
            (good if row["correct"] else bad)[row["response_lang"]].append(row)
        within, cross = [], []
        for la in sorted(good):
            for lb in sorted(bad):
                if (la == lb and scope == "cross") or (la != lb and scope == "within"):
                    continue
                chosen, rejected = good[la], bad[lb]
                n = len(chosen) * len(rejected)
                # Sampling indices of the product keeps this cheap for 64+ samples.
                picks = rng.sample(range(n), min(n, max_per_question))
                pairs = [(chosen[p // len(rejected)], rejected[p % len(rejected)]) for p in picks]
                (within if la == lb else cross).append(pairs)
        rng.shuffle(within)
        rng.shuffle(cross)
        picked = _split_pick(within, cross, max_per_question, cross_fraction)
        for a, b in picked:
            out.append({"qid": qid, "prompt_a": a["prompt"] or "", "response_a": a["response"],
                        "prompt_b": b["prompt"] or "", "response_b": b["response"]})
        if stats is not None:
            stats["questions"] += 1
            stats["questions_without_pairs"] += not picked
            stats["one_sided_questions"] += len({r["correct"] for r in group}) == 1
    rng.shuffle(out)
    return out


def _split_pick(within: Sequence[Sequence[Any]], cross: Sequence[Sequence[Any]], limit: int,
                cross_fraction: float) -> list[Any]:
    """Up to `limit` items: round(limit x cross_fraction) from the cross buckets, the rest
    from the within buckets (each kind round-robin), a short kind's share to the other."""
    available_within = sum(map(len, within))
    available_cross = sum(map(len, cross))
    n_cross = min(round(limit * cross_fraction), available_cross)
    n_within = min(limit - n_cross, available_within)
    n_cross = min(limit - n_within, available_cross)  # what within could not fill
    return _interleave(round_robin(within, n_within), round_robin(cross, n_cross))


def training_examples(rows: Sequence[dict], objective: str, scope: str, max_per_question: int,
                      seed: int, cross_fraction: float = 0.5, max_total: int | None = None
                      ) -> tuple[list[dict], Counter]:
    """Examples for `objective` (pairwise | pointwise) and counts describing them; at most
    `max_total` in all (a uniform draw), so runs with other settings can see as many."""
    stats: Counter = Counter()
    if objective == "pairwise":
        examples = pairwise_examples(rows, scope, max_per_question, seed, stats, cross_fraction)
    elif objective == "pointwise":
        examples = pointwise_examples(rows, max_per_question, seed, stats)
    else:
        raise ValueError(f"objective must be pairwise|pointwise, got {objective!r}")
    if max_total is not None and len(examples) > max_total:
        stats["dropped_by_max_pairs"] = len(examples) - max_total
        examples = examples[:max_total]  # already shuffled
    stats["examples"] = len(examples)
    return examples, stats
