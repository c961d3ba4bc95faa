"""Budgeted evaluation: accuracy per (target language, mono|cross pool, selector, budget),
and the paired difference cross - mono.

For a target language t and budget k, *mono* draws all k responses of a question from t;
*cross* (Best-of-L) draws them from the language set L as the allocation says, in rounds
(one response per language per round; a language drops out once the pool's responses in
it are used; `selection.Schedule`):
- uniform (default): each round takes t first, then the other languages in a uniformly
  random order per draw, so at k <= |L| the draw is t plus k-1 partners chosen uniformly
  without replacement from L - t, and beyond |L| every language has floor(k/|L|) and the
  remainder follows the same rule. No language order is ever chosen by hand.
- round_robin: each round in the fixed `order` (rotated to start at t) the user gave.

Which questions count: those with a known gold answer (some row has `correct` set), minus
those the reward model trained on (rm_stats' `train_qids`); for target t, those that hold
at least one response in t. What the pool holds for a language is the least any such
question holds; budgets beyond what a (target, pool) holds are not reported for it. A row
with `error` set, or a null answer, is a drawn response without an answer: it uses its
place in the budget, is never correct and casts no vote.

Accuracy at k is the mean over questions of the expected correctness over which k
responses are drawn (selection.py: exact for random, oracle, rm_best; seeded Monte Carlo
for majority, rm_vote, lang_prior). Intervals: percentile bootstrap over questions, one
resampling shared by every row, so cross - mono (and the mean of those over targets) are
paired. Statistics fitted on labels (score calibration, language accuracies) are fitted
out of fold (bestofl.folds).

Scores must come from a reward model that never saw the question (question-level
held-out split or k-fold cross-fitting, as `train-rm cv=K` writes): `score_provenance`
(or the scored pool's own record of it) says so, and a warning says when it is unknown.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bestofl import bootstrap, storage
from bestofl.folds import assign_folds, language_ranks, platt
from bestofl.languages import resolve_languages
from bestofl.pool import IDENTITY
from bestofl.reward import RM_INFO_FILE
from bestofl.selection import (MIN_WEIGHT, NEEDS_SCORES, VOTES, Draw, Schedule,
                               expected_oracle, expected_random, expected_rm_best,
                               expected_votes, round_robin)

POOLS = ("mono", "cross")
NEEDS_FOLDS = frozenset({"rm_vote", "lang_prior"})  # selectors using out-of-fold statistics


@dataclass
class PoolArrays:
    """A pool as padded arrays: Q questions, N item slots per question, L languages.

    Items of a question are in its rank order (best score first, or best calibrated
    probability with `calibrate`; null scores last; ties by a seeded random key over the
    canonically sorted pool); padding has lang -1.
    """

    qids: list[str]
    languages: list[str]
    n: np.ndarray  # (Q, L) responses per question and language
    n_correct: np.ndarray  # (Q, L)
    lang: np.ndarray  # (Q, N) language index, -1 = padding
    cls: np.ndarray  # (Q, N) 0 correct, 1.. wrong answers, -1 no answer / padding
    weight: np.ndarray  # (Q, N) rm_vote weights: out-of-fold calibrated P(correct)
    slots: np.ndarray  # (Q, L, M) item positions per language in rank order, padded with N
    fold: np.ndarray  # (Q,) out-of-fold fold of each question
    lang_rank: np.ndarray  # (Q, L) out-of-fold rank of each language's accuracy
    tokens: np.ndarray  # (Q, L) mean num_tokens per response (NaN where unknown)
    scored: bool  # some row has a score
    n_dropped: int  # questions dropped: gold unknown
    n_error: int  # rows with `error` set
    n_unscored: int  # answered rows without a score, in a scored pool


@dataclass
class Plan:
    """One (target, pool): its questions (rows of PoolArrays), how responses are handed out
    as the budget grows, and the budgets it reports."""

    target: str
    pool: str
    questions: np.ndarray
    schedule: Schedule
    languages: list[str]  # the language index space of `schedule`
    budgets: list[int] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return self.schedule.capacity

    @property
    def n_questions(self) -> int:
        return len(self.questions)

    def draw(self, k: int) -> Draw:
        return self.schedule.draw(k)

    def describe(self, k: int) -> str:
        """The draw at k in words, e.g. 'en:1 + 2 of {de,fr,ja}'."""
        d = self.draw(k)
        fixed = " ".join(f"{self.languages[i]}:{c}" for i, c in enumerate(d.fixed) if c)
        if not d.extra:
            return fixed
        pool = ",".join(self.languages[i] for i in d.candidates)
        return f"{fixed} + {d.extra} of {{{pool}}}".strip(" +")


@dataclass
class Evaluation:
    languages: list[str]  # target languages
    cross_languages: list[str]  # the set L
    budgets: list[int]
    selectors: list[str]  # those evaluated (rm_* dropped on an unscored pool)
    results: list[dict[str, Any]]
    differences: list[dict[str, Any]]  # cross - mono per (target, selector, budget)
    mean_differences: list[dict[str, Any]]  # the mean of those over targets
    notices: list[str]
    plans: dict[tuple[str, str], Plan]
    qids: list[str] = field(default_factory=list)
    # (target, pool, selector, budget) -> per-question expected correctness (plan questions)
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


def default_budgets(capacities: Sequence[int]) -> list[int]:
    """1, 2, 4, ... up to the largest capacity, plus every full capacity (all responses)."""
    top = max(capacities, default=0)
    powers = [2**i for i in range(top.bit_length()) if 2**i <= top]
    return sorted(set(powers) | {c for c in capacities if c > 0})


# ------------------------------------------------------------------ rows and arrays
def select_rows(table: pa.Table, cfg: Any, rm_info: Mapping[str, Any] | None,
                notices: list[str]) -> pa.Table:
    """Apply the filters (question_langs, models, methods) and drop the reward model's
    training questions; warn where a pool merges what a filter could separate."""
    for key, column in (("question_langs", "question_lang"), ("models", "model"),
                        ("methods", "method")):
        wanted = list(getattr(cfg, key, None) or [])
        present = sorted(set(table[column].to_pylist()))
        if wanted:
            if key == "question_langs":
                wanted = resolve_languages(wanted)
            absent = [w for w in wanted if w not in present]
            if absent:
                raise ValueError(f"{key} {absent} not in the pool (it has {present})")
            table = table.filter(pc.is_in(table[column], pa.array(wanted)))
            continue
        if key == "question_langs":
            pairs = table.group_by("response_lang").aggregate([("question_lang", "count_distinct")])
            mixed = pairs.filter(pc.greater(pairs["question_lang_count_distinct"], 1))
            if mixed.num_rows:
                notices.append(
                    f"WARNING: responses in {sorted(mixed['response_lang'].to_pylist())} come "
                    f"from questions posed in several languages ({present}); they are merged. "
                    f"Filter with question_langs=[...] to keep one setup")
        elif len(present) > 1:
            notices.append(f"WARNING: the pool mixes {key} {present}; they are merged. "
                           f"Filter with {key}=[...] to evaluate one")
    train = set((rm_info or {}).get("train_qids") or [])
    if train:
        seen = set(table["qid"].to_pylist())
        left_out = seen & train
        if left_out:
            table = table.filter(pc.invert(pc.is_in(table["qid"], pa.array(sorted(train)))))
            notices.append(f"{len(left_out)} question(s) the reward model trained on "
                           f"(bestofl_rm.json train_qids) are left out")
    if table.num_rows == 0:
        raise ValueError("no rows left after the filters and the reward model's training "
                         "questions are taken out")
    return table


def pool_arrays(table: pa.Table, languages: Sequence[str], seed: int, folds: int = 5,
                calibrate: bool = False) -> PoolArrays:
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
    tokens_col = table["num_tokens"].to_numpy(zero_copy_only=False).astype(np.float64) \
        if "num_tokens" in table.column_names else np.full(rows, np.nan)

    qids, qcode = np.unique(qid, return_inverse=True)
    n_q, n_l = len(qids), len(languages)
    fold = assign_folds(n_q, folds, seed) if n_q >= 2 else np.zeros(n_q, dtype=np.int64)
    prob = platt(score, correct, lang, fold[qcode], answered & ~np.isnan(score), n_l) \
        if scored and n_q >= 2 else np.full(rows, np.nan)
    rank_by = prob if calibrate else score
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
    neg = np.where(np.isnan(rank_by), np.inf, -rank_by)
    order = np.lexsort((tiebreak, neg, qcode))
    qcode, lang, cls, correct = qcode[order], lang[order], cls[order], correct[order]
    weight = np.where(np.isnan(prob[order]), MIN_WEIGHT, np.maximum(prob[order], MIN_WEIGHT))
    per_q = np.bincount(qcode, minlength=n_q)
    pos = np.arange(rows) - (np.cumsum(per_q) - per_q)[qcode]
    key = qcode * n_l + lang
    by_key = np.argsort(key, kind="stable")  # stable: keeps rank order within a language
    n = np.bincount(key, minlength=n_q * n_l).reshape(n_q, n_l)
    within = np.empty(rows, dtype=np.int64)
    within[by_key] = np.arange(rows) - (np.cumsum(n.ravel()) - n.ravel())[key[by_key]]
    n_correct = np.bincount(key, weights=correct, minlength=n_q * n_l).reshape(n_q, n_l)
    tok = tokens_col[order]
    has_tok = ~np.isnan(tok)
    tok_sum = np.bincount(key[has_tok], weights=tok[has_tok], minlength=n_q * n_l)
    tok_n = np.bincount(key[has_tok], minlength=n_q * n_l)
    tokens = np.where(tok_n > 0, tok_sum / np.maximum(tok_n, 1), np.nan).reshape(n_q, n_l)

    width = int(per_q.max(initial=0))
    shape = (n_q, width)
    lang_a, cls_a, weight_a = np.full(shape, -1), np.full(shape, -1), np.zeros(shape)
    for a, v in ((lang_a, lang), (cls_a, cls), (weight_a, weight)):
        a[qcode, pos] = v
    slots = np.full((n_q, n_l, int(n.max(initial=0))), width, dtype=np.int64)
    slots[qcode, lang, within] = pos
    n_correct = n_correct.astype(np.int64)
    return PoolArrays(
        qids=qids.tolist(), languages=list(languages), n=n, n_correct=n_correct, lang=lang_a,
        cls=cls_a, weight=weight_a, slots=slots, fold=fold,
        lang_rank=language_ranks(n, n_correct, fold), tokens=tokens, scored=scored,
        n_dropped=n_all - n_q, n_error=int(error.sum()),
        n_unscored=int((np.isnan(score) & answered).sum()) if scored else 0)


# ------------------------------------------------------------------ checks and notices
def _languages(table: pa.Table, cfg: Any) -> tuple[list[str], list[str]]:
    """Target languages and the set L, checked against the pool and the allocation."""
    pool_langs = sorted(set(table["response_lang"].to_pylist()))

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
    order = list(getattr(cfg, "order", None) or [])
    if cfg.allocation == "round_robin":
        if not order:
            raise ValueError("allocation=round_robin needs order=[...]: the language order of "
                             "each round, fixed before looking at results")
        order = resolve_languages(order)
        if sorted(order) != sorted(cross) or len(set(order)) != len(order):
            raise ValueError(f"order {order} must list each language of cross_languages "
                             f"{cross} exactly once")
        cross = order
    elif order:
        raise ValueError("order only applies to allocation=round_robin")
    return targets, cross


def _selectors(arrays: PoolArrays, cfg: Any, notices: list[str]) -> list[str]:
    """The selectors that can run on this pool, with notices about the data."""
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
    if len(arrays.qids) < 2:
        if cfg.calibrate:
            raise ValueError("calibrate=true fits its calibration out of fold: it needs at "
                             "least 2 questions with a gold answer")
        skipped = [s for s in selectors if s in NEEDS_FOLDS]
        selectors = [s for s in selectors if s not in NEEDS_FOLDS]
        if skipped:
            notices.append(f"one question: {', '.join(skipped)} skipped (their statistics are "
                           f"fitted on the other questions)")
    if not selectors:
        raise ValueError(f"no selector left to evaluate (asked for {list(cfg.selectors)})")
    return selectors


# ------------------------------------------------------------------ plans
def make_plans(arrays: PoolArrays, targets: Sequence[str], cross: Sequence[str], cfg: Any,
               notices: list[str]) -> tuple[dict[tuple[str, str], Plan], list[int]]:
    """Questions, schedule and budgets of every (target, pool); the budgets reported."""
    lang_index = {lang: i for i, lang in enumerate(arrays.languages)}
    n_l = len(arrays.languages)
    plans: dict[tuple[str, str], Plan] = {}
    for t in targets:
        questions = np.flatnonzero(arrays.n[:, lang_index[t]] > 0)
        cap = {lang: int(arrays.n[questions, lang_index[lang]].min()) for lang in cross}
        mono = Schedule(lang_index[t], tuple((lang_index[t],) for _ in range(cap[t])), False, n_l)
        uniform = cfg.allocation == "uniform"
        rotation = [t] + sorted(x for x in cross if x != t) if uniform \
            else round_robin(cross, t)
        seq = [lang_index[x] for x in rotation if cap[x] > 0]
        rounds = tuple(tuple(x for x in seq if cap[arrays.languages[x]] > j)
                       for j in range(max(cap.values())))
        plans[(t, "mono")] = Plan(t, "mono", questions, mono, list(arrays.languages))
        plans[(t, "cross")] = Plan(t, "cross", questions,
                                   Schedule(lang_index[t], rounds, uniform, n_l),
                                   list(arrays.languages))
        empty = [lang for lang in cross if cap[lang] == 0]
        if empty:
            notices.append(f"target {t}: cross pool leaves out {empty} (some questions "
                           f"have no response in them)")
    capacities = [p.capacity for p in plans.values()]
    if cfg.budgets:
        budgets = sorted(set(cfg.budgets))
        too_big = [k for k in budgets if k > max(capacities)]
        if too_big:
            raise ValueError(f"budget(s) {too_big} exceed what the pool holds: at most "
                             f"{max(capacities)} responses per question")
    else:
        budgets = default_budgets(capacities)
    for (t, pool), plan in plans.items():
        plan.budgets = [k for k in budgets if k <= plan.capacity]
        beyond = [k for k in budgets if k > plan.capacity]
        if beyond and cfg.budgets:
            notices.append(f"target {t}, {pool}: the pool holds {plan.capacity} responses per "
                           f"question; budget(s) {beyond} not reported")
    return plans, budgets


# ------------------------------------------------------------------ expected values
def expected_values(arrays: PoolArrays, plans: Mapping[tuple[str, str], Plan],
                    selectors: Sequence[str], cfg: Any
                    ) -> dict[tuple[str, str, str, int], np.ndarray]:
    """Per-question expected correctness of every (target, pool, selector, budget)."""
    values: dict[tuple[str, str, str, int], np.ndarray] = {}

    def put(plan: Plan, sel: str, v: np.ndarray) -> None:
        for r, k in enumerate(plan.budgets):
            values[(plan.target, plan.pool, sel, k)] = np.clip(v[r], 0.0, 1.0)

    votes = [s for s in selectors if s in VOTES]
    if votes:
        live = {key: p for key, p in plans.items() if p.budgets}
        masks = {key: np.isin(np.arange(len(arrays.qids)), p.questions) for key, p in live.items()}
        got = expected_votes(arrays.cls, arrays.weight, arrays.lang_rank, arrays.slots, arrays.n,
                             {key: (p.schedule, masks[key], p.budgets) for key, p in live.items()},
                             cfg.monte_carlo, cfg.seed)
        for key, p in live.items():
            for sel in votes:
                put(p, sel, got[key][sel][:, p.questions])
    cross_groups: dict[bytes, list[Plan]] = {}
    for plan in plans.values():
        if not plan.budgets:
            continue
        rows = plan.questions
        draws = [plan.draw(k) for k in plan.budgets]
        n, n_correct = arrays.n[rows], arrays.n_correct[rows]
        if "random" in selectors:
            put(plan, "random", expected_random(n, n_correct, draws))
        if "oracle" in selectors:
            put(plan, "oracle", expected_oracle(n, n_correct, draws))
        if "rm_best" in selectors and plan.pool == "mono":
            # Only the target's items can be drawn: a narrow slice, one language.
            t = plan.schedule.target
            pos = arrays.slots[rows, t]
            real = pos < arrays.lang.shape[1]
            take = np.where(real, pos, 0)
            correct = real & (np.take_along_axis(arrays.cls[rows], take, 1) == 0)
            put(plan, "rm_best", expected_rm_best(np.where(real, 0, -1), n[:, [t]], correct,
                                                  [Draw((d.k,)) for d in draws]))
        elif "rm_best" in selectors:
            cross_groups.setdefault(rows.tobytes(), []).append(plan)
    for group in cross_groups.values():  # one pass per question set: cached factors shared
        rows = group[0].questions
        draws = [p.draw(k) for p in group for k in p.budgets]
        v = expected_rm_best(arrays.lang[rows], arrays.n[rows], arrays.cls[rows] == 0, draws)
        at = 0
        for p in group:
            put(p, "rm_best", v[at:at + len(p.budgets)])
            at += len(p.budgets)
    return values


def expected_tokens(arrays: PoolArrays, plan: Plan, k: int) -> float:
    """Mean over the plan's questions of the expected generated tokens of the k drawn."""
    mean = plan.draw(k).mean()
    return float(np.nanmean(arrays.tokens[plan.questions] @ mean))


# ------------------------------------------------------------------ intervals
def intervals(arrays: PoolArrays, plans: Mapping[tuple[str, str], Plan],
              values: Mapping[tuple[str, str, str, int], np.ndarray], targets: Sequence[str],
              selectors: Sequence[str], cfg: Any
              ) -> tuple[list[dict], list[dict], list[dict]]:
    """results, differences (cross - mono) and their mean over targets, with percentile
    bootstrap intervals from one resampling of the questions (so every pair is paired:
    a difference's resampled mean is the difference of its arms' resampled means)."""
    n_q = len(arrays.qids)
    keys = [(t, pool, sel, k) for t in targets for pool in POOLS for sel in selectors
            for k in plans[(t, pool)].budgets]
    if not keys:
        return [], [], []
    row = {key: i for i, key in enumerate(keys)}
    matrix = np.zeros((len(keys), n_q))
    for i, (t, pool, sel, k) in enumerate(keys):
        matrix[i, plans[(t, pool)].questions] = values[(t, pool, sel, k)]
    # Both pools of a target share its questions; mean over those (in each resample).
    target_of = np.array([targets.index(key[0]) for key in keys])
    members = np.zeros((len(targets), n_q))
    for j, t in enumerate(targets):
        members[j, plans[(t, "mono")].questions] = 1.0
    point = matrix.sum(axis=1) / members.sum(axis=1)[target_of]
    means = None
    if cfg.bootstrap:
        counts = bootstrap.resample_counts(n_q, cfg.bootstrap, np.random.default_rng(cfg.seed))
        means = bootstrap.resampled_means(matrix, counts, members, target_of)

    def ci(m: np.ndarray | None, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (p, p) if m is None else bootstrap.interval(m, cfg.confidence)

    lo, hi = ci(means, point)
    results = [{"target_lang": t, "pool": pool, "selector": sel, "budget": int(k),
                "accuracy": float(point[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i]),
                "n_questions": plans[(t, pool)].n_questions}
               for i, (t, pool, sel, k) in enumerate(keys)]
    pairs = [(t, sel, k) for t in targets for sel in selectors
             for k in plans[(t, "mono")].budgets if k in plans[(t, "cross")].budgets]
    if not pairs:
        return results, [], []
    cross_i = np.array([row[(t, "cross", sel, k)] for t, sel, k in pairs])
    mono_i = np.array([row[(t, "mono", sel, k)] for t, sel, k in pairs])
    d_point = point[cross_i] - point[mono_i]
    d_means = None if means is None else means[cross_i] - means[mono_i]
    d_lo, d_hi = ci(d_means, d_point)
    differences = [{"target_lang": t, "selector": sel, "budget": int(k), "diff": float(d_point[i]),
                    "ci_low": float(d_lo[i]), "ci_high": float(d_hi[i])}
                   for i, (t, sel, k) in enumerate(pairs)]
    by_pair: dict[tuple[str, int], list[int]] = {}
    for i, (t, sel, k) in enumerate(pairs):
        by_pair.setdefault((sel, k), []).append(i)
    # The mean over targets only where every target has both pools at that budget.
    full = [(sel, k) for (sel, k), idx in by_pair.items() if len(idx) == len(targets)]
    if not full:
        return results, differences, []
    m_point = np.array([d_point[by_pair[key]].mean() for key in full])
    m_means = None if d_means is None else np.stack([d_means[by_pair[key]].mean(axis=0)
                                                     for key in full])
    m_lo, m_hi = ci(m_means, m_point)
    mean_differences = [{"selector": sel, "budget": int(k), "diff": float(m_point[i]),
                         "ci_low": float(m_lo[i]), "ci_high": float(m_hi[i]),
                         "n_targets": len(targets)} for i, (sel, k) in enumerate(full)]
    return results, differences, mean_differences


def verdict(lo: float, hi: float) -> str:
    """How a paired interval of cross - mono reads."""
    if lo > 0:
        return "cross beats mono"
    if hi < 0:
        return "mono beats cross"
    return "no clear difference"


def evaluate(table: pa.Table, cfg: Any, rm_info: Mapping[str, Any] | None = None) -> Evaluation:
    """Evaluate a pool (see module doc). `cfg` is an EvaluateConfig; `rm_info` the reward
    model's bestofl_rm.json (its `train_qids` are left out). Every user error (filter,
    language, budget) is raised before the computation."""
    notices: list[str] = []
    if table.num_rows == 0:
        raise ValueError("the pool is empty")
    table = select_rows(table, cfg, rm_info, notices)
    targets, cross = _languages(table, cfg)
    all_langs = sorted(set(targets) | set(cross))
    arrays = pool_arrays(table, all_langs, cfg.seed, getattr(cfg, "folds", 5), cfg.calibrate)
    if not arrays.qids:
        raise ValueError("no question in the pool has a known gold answer")
    selectors = _selectors(arrays, cfg, notices)
    if getattr(cfg, "budget_unit", "responses") == "tokens" and np.isnan(arrays.tokens).all():
        raise ValueError("budget_unit=tokens needs num_tokens in the pool (sampled pools have "
                         "it; `bestofl import tokenizer=MODEL` fills it)")
    plans, budgets = make_plans(arrays, targets, cross, cfg, notices)
    values = expected_values(arrays, plans, selectors, cfg)
    results, differences, mean_differences = intervals(arrays, plans, values, targets,
                                                       selectors, cfg)
    if getattr(cfg, "budget_unit", "responses") == "tokens":
        for r in results:
            r["tokens"] = expected_tokens(arrays, plans[(r["target_lang"], r["pool"])],
                                          r["budget"])
    return Evaluation(languages=list(targets), cross_languages=list(cross), budgets=budgets,
                      selectors=selectors, results=results, differences=differences,
                      mean_differences=mean_differences, notices=notices, plans=plans,
                      qids=arrays.qids, values=values)


def per_question_table(ev: Evaluation) -> pa.Table:
    """per_question.parquet: target_lang, pool, selector, budget, qid, accuracy (expected)."""
    keys = list(ev.values)
    sizes = [ev.plans[(t, pool)].n_questions for t, pool, _, _ in keys]
    row_of = np.repeat(np.arange(len(keys)), sizes)

    def labels(i: int) -> pa.DictionaryArray:
        names = sorted({key[i] for key in keys})
        code = np.array([names.index(key[i]) for key in keys], dtype=np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(code[row_of]), pa.array(names, pa.string()))

    rows = np.concatenate([ev.plans[(t, pool)].questions for t, pool, _, _ in keys]) \
        if keys else np.zeros(0, dtype=np.int64)
    return pa.table({
        "target_lang": labels(0), "pool": labels(1), "selector": labels(2),
        "budget": pa.array(np.array([key[3] for key in keys], dtype=np.int64)[row_of]),
        "qid": pa.DictionaryArray.from_arrays(pa.array(rows.astype(np.int32)),
                                              pa.array(ev.qids, pa.string())),
        "accuracy": pa.array(np.concatenate([ev.values[key] for key in keys])
                             if keys else np.zeros(0))})
