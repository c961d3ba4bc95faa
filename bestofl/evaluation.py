"""Budgeted evaluation: accuracy per (target language, mono|cross pool, selector, budget).

For a target language t and budget k, *mono* draws all k responses of a question from t;
*cross* (Best-of-L) draws them from the language set L, k_l from each language l, as the
allocation policy says. Policies are sequences (`allocation_order`): the draw at k is
the first k entries, so a draw never exceeds k and budgets are nested.
- round_robin: one response per language per round, starting from t (k=1 is t alone,
  k=|L| one per language); a language whose responses run out is skipped.
- weighted: the next response goes to the language with the largest w_l / (k_l + 1)
  (D'Hondt: shares proportional to the weights w_l, the reward model's per-language
  validation accuracy from bestofl_rm.json `lang_accuracy`); ties go in round-robin order.

Which questions count: those with a known gold answer (some row has `correct` set); for
target t, those that hold at least one response in t. What the pool holds for a language
is the least any such question holds; budgets beyond what a (target, pool) holds are not
reported for it. A row with `error` set, or a null answer, is a drawn response without an
answer: it uses its place in the budget, is never correct and casts no vote.

Accuracy at k is the mean over questions of the expected correctness over which k
responses are drawn (selection.py: exact for random, oracle, rm_best; seeded Monte Carlo
for majority, rm_vote), with a percentile bootstrap interval over questions (resamples
seeded per target language and shared by its mono and cross rows, so they are paired).

Scores must come from a reward model that never saw the question (question-level
held-out split or k-fold cross-fitting, as `train-rm cv=K` writes): the pool cannot show
where its scores came from, so `score_provenance` records it and a warning says so when
it is unset.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bestofl import storage
from bestofl.languages import resolve_languages
from bestofl.pool import IDENTITY
from bestofl.selection import (EXACT, NEEDS_SCORES, expected_oracle, expected_random,
                               expected_rm_best, expected_votes, vote_weights)

POOLS = ("mono", "cross")
ALLOCATIONS = ("round_robin", "weighted")
PROVENANCE = ("cross_fit", "held_out", "in_sample")
RM_INFO_FILE = "bestofl_rm.json"


@dataclass
class PoolArrays:
    """A pool as padded arrays: Q questions, N item slots per question, L languages.

    Items of a question are in its rank order (best score first; null scores last; ties
    by a seeded random key over the canonically sorted pool); padding has lang -1.
    """

    qids: list[str]
    languages: list[str]
    n: np.ndarray  # (Q, L) responses per question and language
    n_correct: np.ndarray  # (Q, L)
    lang: np.ndarray  # (Q, N) language index, -1 = padding
    within: np.ndarray  # (Q, N) rank among the question's items of the same language
    cls: np.ndarray  # (Q, N) 0 correct, 1.. wrong answers, -1 no answer / padding
    weight: np.ndarray  # (Q, N) rm_vote weights
    slots: np.ndarray  # (Q, L, M) item positions per language in rank order, padded with N
    scored: bool  # some row has a score
    n_dropped: int  # questions dropped: gold unknown
    n_error: int  # rows with `error` set
    n_unscored: int  # answered rows without a score, in a scored pool


@dataclass
class Evaluation:
    languages: list[str]  # target languages
    cross_languages: list[str]  # the set L
    budgets: list[int]
    selectors: list[str]  # those evaluated (rm_* dropped on an unscored pool)
    results: list[dict[str, Any]]
    notices: list[str]
    # (target, pool) -> {"capacity": int, "n_questions": int, "allocation": {k: {lang: k_l}}}
    plans: dict[tuple[str, str], dict[str, Any]]
    # (target, pool, selector, budget) -> per-question expected correctness
    values: dict[tuple[str, str, str, int], np.ndarray] = field(repr=False, default_factory=dict)


def load_rm_info(path: str) -> dict[str, Any]:
    """bestofl_rm.json of a reward-model folder (or the file itself)."""
    uri = path if path.endswith(".json") else storage.join(path, RM_INFO_FILE)
    if not storage.exists(uri):
        raise FileNotFoundError(f"reward-model statistics not found: {uri}")
    try:
        return json.loads(storage.read_text(uri))
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri} is not valid JSON: {e}") from None


def allocation_order(languages: Sequence[str], target: str, capacity: Mapping[str, int],
                     weights: Mapping[str, float] | None = None) -> list[str]:
    """Language of each successive response of a draw; its first k entries are budget k.

    Round-robin over `languages` starting from `target` (weights None), else D'Hondt by
    `weights`; a language never gets more than its `capacity`.
    """
    if target not in languages:
        raise ValueError(f"target language {target!r} is not in the language set {list(languages)}")
    i = list(languages).index(target)
    rotation = list(languages[i:]) + list(languages[:i])
    taken = {lang: 0 for lang in rotation}
    total = sum(capacity[lang] for lang in rotation)
    order: list[str] = []
    while len(order) < total:
        if weights is None:
            for lang in rotation:
                if taken[lang] < capacity[lang]:
                    order.append(lang)
                    taken[lang] += 1
        else:
            open_ = [lang for lang in rotation if taken[lang] < capacity[lang]]
            # max() keeps the first of equal values: ties go in rotation order
            lang = max(open_, key=lambda x: weights[x] / (taken[x] + 1))
            order.append(lang)
            taken[lang] += 1
    return order


def allocation(order: Sequence[str], k: int) -> dict[str, int]:
    """Responses per language at budget k (languages in order of first appearance)."""
    if k > len(order):
        raise ValueError(f"budget {k} exceeds the {len(order)} responses the pool holds")
    counts: dict[str, int] = {}
    for lang in order[:k]:
        counts[lang] = counts.get(lang, 0) + 1
    return counts


def default_budgets(capacities: Sequence[int]) -> list[int]:
    """1, 2, 4, ... up to the largest capacity, plus every full capacity (all responses)."""
    top = max(capacities, default=0)
    powers = [2**i for i in range(top.bit_length()) if 2**i <= top]
    return sorted(set(powers) | {c for c in capacities if c > 0})


def pool_arrays(table: pa.Table, languages: Sequence[str], seed: int,
                calibration: Mapping[str, Mapping[str, float]] | None = None) -> PoolArrays:
    """Encode the rows of `table` whose response_lang is in `languages` (see PoolArrays)."""
    table = table.filter(pc.is_in(table["response_lang"], pa.array(list(languages))))
    table = table.sort_by([(c, "ascending") for c in IDENTITY])  # canonical: layout-independent
    qid = table["qid"].to_numpy(zero_copy_only=False).astype(str)
    known = table["correct"].is_valid().to_numpy(zero_copy_only=False)
    n_all = len(np.unique(qid))
    keep = np.isin(qid, np.unique(qid[known]))
    table, qid = table.filter(pa.array(keep)), qid[keep]
    rows = table.num_rows
    error = table["error"].is_valid().to_numpy(zero_copy_only=False)
    answer = table["answer"].to_numpy(zero_copy_only=False)
    answered = table["answer"].is_valid().to_numpy(zero_copy_only=False) & ~error
    correct = pc.fill_null(table["correct"], False).to_numpy(zero_copy_only=False) & answered
    lang_code = {lang: i for i, lang in enumerate(languages)}
    lang = np.array([lang_code[x] for x in table["response_lang"].to_pylist()], dtype=np.int64)
    score = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    scored = bool(np.any(~np.isnan(score)))
    if calibration is not None:
        mean = np.array([calibration[x]["mean"] for x in languages], dtype=np.float64)
        std = np.array([calibration[x]["std"] for x in languages], dtype=np.float64)
        score = (score - mean[lang]) / std[lang]

    qids, qcode = np.unique(qid, return_inverse=True)
    n_q, n_l = len(qids), len(languages)
    # Classes: 0 = correct; wrong answers numbered per question; -1 = no answer.
    cls = np.full(rows, -1, dtype=np.int64)
    cls[correct] = 0
    wrong = answered & ~correct
    if wrong.any():
        _, acode = np.unique(answer[wrong].astype(str), return_inverse=True)
        pairs, pair_idx = np.unique(qcode[wrong] * (acode.max() + 1) + acode, return_inverse=True)
        pair_q = pairs // (acode.max() + 1)
        first = np.searchsorted(pair_q, pair_q, side="left")
        cls[wrong] = (np.arange(len(pairs)) - first + 1)[pair_idx]

    # Rank order per question: score descending, null scores last, ties by a seeded key.
    tiebreak = np.random.default_rng(seed).permutation(rows)
    neg = np.where(np.isnan(score), np.inf, -score)
    order = np.lexsort((tiebreak, neg, qcode))
    qcode, lang, cls, correct = qcode[order], lang[order], cls[order], correct[order]
    weight = vote_weights(score[order])
    per_q = np.bincount(qcode, minlength=n_q)
    pos = np.arange(rows) - (np.cumsum(per_q) - per_q)[qcode]
    key = qcode * n_l + lang
    by_key = np.argsort(key, kind="stable")  # stable: keeps rank order within a language
    n = np.bincount(key, minlength=n_q * n_l).reshape(n_q, n_l)
    within = np.empty(rows, dtype=np.int64)
    within[by_key] = np.arange(rows) - (np.cumsum(n.ravel()) - n.ravel())[key[by_key]]
    n_correct = np.bincount(key, weights=correct, minlength=n_q * n_l).reshape(n_q, n_l)

    width = int(per_q.max(initial=0))
    shape = (n_q, width)
    lang_a, within_a, cls_a = np.full(shape, -1), np.zeros(shape, np.int64), np.full(shape, -1)
    weight_a = np.zeros(shape)
    for a, v in ((lang_a, lang), (within_a, within), (cls_a, cls), (weight_a, weight)):
        a[qcode, pos] = v
    slots = np.full((n_q, n_l, int(n.max(initial=0))), width, dtype=np.int64)
    slots[qcode, lang, within] = pos
    return PoolArrays(
        qids=qids.tolist(), languages=list(languages), n=n, n_correct=n_correct.astype(np.int64),
        lang=lang_a, within=within_a, cls=cls_a, weight=weight_a, slots=slots, scored=scored,
        n_dropped=n_all - n_q, n_error=int(error.sum()),
        n_unscored=int((np.isnan(score) & answered).sum()) if scored else 0)


def _bootstrap(values: np.ndarray, resamples: int, confidence: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of the mean over questions for each row of `values` (E, Q)."""
    n_q = values.shape[1]
    mean = values.mean(axis=1)
    if resamples == 0 or n_q == 0:
        return mean, mean
    idx = rng.integers(0, n_q, size=(resamples, n_q))
    counts = np.bincount((np.arange(resamples)[:, None] * n_q + idx).ravel(),
                         minlength=resamples * n_q).reshape(resamples, n_q)
    means = values @ counts.T / n_q  # (E, B)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], axis=1)
    # The percentile interval may miss the point estimate on skewed data; keep it inside.
    return np.minimum(lo, mean), np.maximum(hi, mean)


def evaluate(table: pa.Table, cfg: Any, rm_info: Mapping[str, Any] | None = None) -> Evaluation:
    """Evaluate a pool (see module doc). `cfg` is an EvaluateConfig; `rm_info` the
    reward model's bestofl_rm.json (needed for calibrate / weighted allocation).
    Every user error (language, budget, statistics) is raised before the computation."""
    notices: list[str] = []
    pool_langs = sorted(set(table["response_lang"].to_pylist()))
    if not pool_langs:
        raise ValueError("the pool is empty")

    def in_pool(codes: Sequence[str], what: str) -> list[str]:
        if not codes:
            return list(pool_langs)
        resolved = resolve_languages(codes)
        absent = [c for c in resolved if c not in pool_langs]
        if absent:
            raise ValueError(f"{what} {absent} not in the pool (it has {pool_langs})")
        return resolved

    cross = in_pool(cfg.cross_languages, "cross_languages")
    targets = in_pool(cfg.languages, "languages") if cfg.languages else \
        [lang for lang in pool_langs if lang in cross]
    outside = [t for t in targets if t not in cross]
    if outside:
        raise ValueError(f"target language(s) {outside} are not in cross_languages {cross}: "
                         f"a cross-lingual draw starts from its target language")
    weights = calibration = None
    if cfg.allocation == "weighted" or cfg.calibrate:
        if rm_info is None:
            raise ValueError("allocation=weighted and calibrate=true need rm_stats=<reward-model "
                             "folder> (its bestofl_rm.json)")
    if cfg.allocation == "weighted":
        weights = dict(rm_info.get("lang_accuracy") or {})
        missing = [lang for lang in cross if lang not in weights]
        if missing:
            raise ValueError(f"allocation=weighted: lang_accuracy in bestofl_rm.json lacks "
                             f"{missing}")
        if any(not np.isfinite(weights[x]) or weights[x] < 0 for x in cross):
            raise ValueError(f"allocation=weighted: lang_accuracy must be >= 0, got {weights}")
    all_langs = sorted(set(targets) | set(cross))
    if cfg.calibrate:
        stats = dict(rm_info.get("score_stats") or {})
        missing = [lang for lang in all_langs if lang not in stats]
        if missing:
            raise ValueError(f"calibrate=true: score_stats in bestofl_rm.json lacks {missing}")
        if any(not stats[x].get("std", 0) > 0 for x in all_langs):
            raise ValueError("calibrate=true: score_stats need a positive std for every language")
        calibration = stats

    arrays = pool_arrays(table, all_langs, cfg.seed, calibration)
    if not arrays.qids:
        raise ValueError("no question in the pool has a known gold answer")
    if arrays.n_dropped:
        notices.append(f"{arrays.n_dropped} question(s) without a gold answer are left out")
    if arrays.n_error:
        notices.append(f"{arrays.n_error} row(s) carry an error: each counts as a drawn "
                       f"response without an answer")
    selectors = list(cfg.selectors)
    if not arrays.scored:
        skipped = [s for s in selectors if s in NEEDS_SCORES]
        selectors = [s for s in selectors if s not in NEEDS_SCORES]
        if skipped:
            notices.append(f"the pool has no scores: {', '.join(skipped)} skipped "
                           f"(run `bestofl score` first)")
    elif any(s in NEEDS_SCORES for s in selectors):
        if arrays.n_unscored:
            notices.append(f"{arrays.n_unscored} answered row(s) have no score: they rank last "
                           f"for rm_best and carry no weight in rm_vote")
        provenance = getattr(cfg, "score_provenance", None)
        if provenance is None:
            notices.append("WARNING: score_provenance is not set: rm_best / rm_vote are only "
                           "honest if the scores come from a reward model that never saw these "
                           "questions (train-rm cross-fitting or a question-level held-out "
                           "split); say so with score_provenance=cross_fit|held_out")
        elif provenance == "in_sample":
            notices.append("WARNING: score_provenance=in_sample: the reward model saw these "
                           "questions in training; rm_best / rm_vote accuracies are optimistic")
    if not selectors:
        raise ValueError(f"no selector left to evaluate (asked for {list(cfg.selectors)})")

    # Plans: questions, capacities and allocation order of every (target, pool).
    li = {lang: i for i, lang in enumerate(all_langs)}
    plans: dict[tuple[str, str], dict[str, Any]] = {}
    for t in targets:
        qi = np.flatnonzero(arrays.n[:, li[t]] > 0)
        for pool in POOLS:
            langs = [t] if pool == "mono" else cross
            capacity = {lang: int(arrays.n[qi, li[lang]].min()) for lang in langs}
            order = allocation_order(langs, t, capacity, weights if pool == "cross" else None)
            plans[(t, pool)] = {"questions": qi, "order": order, "capacity": len(order),
                                "n_questions": len(qi)}
            if pool == "cross":
                empty = [lang for lang in langs if capacity[lang] == 0]
                if empty:
                    notices.append(f"target {t}: cross pool leaves out {empty} (some questions "
                                   f"have no response in them)")
    capacities = [p["capacity"] for p in plans.values()]
    if cfg.budgets:
        budgets = sorted(set(cfg.budgets))
        too_big = [k for k in budgets if k > max(capacities)]
        if too_big:
            raise ValueError(f"budget(s) {too_big} exceed what the pool holds: at most "
                             f"{max(capacities)} responses per question")
    else:
        budgets = default_budgets(capacities)
    for (t, pool), plan in plans.items():
        plan["budgets"] = [k for k in budgets if k <= plan["capacity"]]
        plan["allocation"] = {k: allocation(plan["order"], k) for k in plan["budgets"]}
        beyond = [k for k in budgets if k > plan["capacity"]]
        if beyond and cfg.budgets:
            notices.append(f"target {t}, {pool}: the pool holds {plan['capacity']} responses per "
                           f"question; budget(s) {beyond} not reported")

    # Per-question expected correctness.
    values: dict[tuple[str, str, str, int], np.ndarray] = {}
    vote_selectors = [s for s in selectors if s not in EXACT]
    if vote_selectors:
        vote_plans = {key: ([li[x] for x in p["order"]], p["budgets"]) for key, p in plans.items()}
        votes = expected_votes(arrays.cls, arrays.weight, arrays.slots, vote_plans,
                               cfg.monte_carlo, cfg.seed, vote_selectors)
    for (t, pool), plan in plans.items():
        qi, ks = plan["questions"], plan["budgets"]
        if not ks:
            continue
        alloc = np.zeros((len(ks), len(all_langs)), dtype=np.int64)
        for r, k in enumerate(ks):
            for lang, c in plan["allocation"][k].items():
                alloc[r, li[lang]] = c
        n, n_correct = arrays.n[qi], arrays.n_correct[qi]
        per: dict[str, np.ndarray] = {}
        if "random" in selectors:
            per["random"] = expected_random(n, n_correct, alloc)
        if "oracle" in selectors:
            per["oracle"] = expected_oracle(n, n_correct, alloc)
        if "rm_best" in selectors:
            if pool == "mono":  # only the target's items can be drawn: a narrow slice
                pos = arrays.slots[qi, li[t]]
                real = pos < arrays.lang.shape[1]
                take = np.where(real, pos, 0)
                per["rm_best"] = expected_rm_best(
                    np.where(real, li[t], -1), np.broadcast_to(np.arange(pos.shape[1]), pos.shape),
                    np.broadcast_to(n[:, li[t]][:, None], pos.shape),
                    real & (np.take_along_axis(arrays.cls[qi], take, 1) == 0), alloc)
            else:
                n_item = np.take_along_axis(n, np.maximum(arrays.lang[qi], 0), 1)
                per["rm_best"] = expected_rm_best(arrays.lang[qi], arrays.within[qi], n_item,
                                                  arrays.cls[qi] == 0, alloc)
        for sel in vote_selectors:
            per[sel] = votes[(t, pool)][sel][:, qi]
        for sel, v in per.items():
            for r, k in enumerate(ks):
                values[(t, pool, sel, k)] = np.clip(v[r], 0.0, 1.0)

    # Bootstrap per target (paired across its pools, selectors and budgets) -> results.
    results: list[dict[str, Any]] = []
    for t in targets:
        keys = [(t, pool, sel, k) for pool in POOLS for sel in selectors
                for k in plans[(t, pool)]["budgets"]]
        if not keys:
            continue
        matrix = np.stack([values[key] for key in keys])
        rng = np.random.default_rng([cfg.seed, zlib.crc32(t.encode())])
        lo, hi = _bootstrap(matrix, cfg.bootstrap, cfg.confidence, rng)
        for (t_, pool, sel, k), acc, a, b in zip(keys, matrix.mean(axis=1), lo, hi):
            results.append({"target_lang": t, "pool": pool, "selector": sel, "budget": int(k),
                            "accuracy": float(acc), "ci_low": float(a), "ci_high": float(b),
                            "n_questions": int(matrix.shape[1])})
    for plan in plans.values():
        plan.pop("questions")
    return Evaluation(languages=targets, cross_languages=cross, budgets=budgets,
                      selectors=selectors, results=results, notices=notices, plans=plans,
                      values=values)
