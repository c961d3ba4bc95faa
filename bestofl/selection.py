"""Selectors, and their expected accuracy when k responses are drawn from a question's pool.

One question's responses are encoded as numpy arrays (see bestofl.evaluation):
- `cls`: answer class, 0 = the correct answer (every correct response), 1.. = distinct
  wrong answers, -1 = no answer (null answer or a row with `error`: it took a slot in the
  budget but cannot be picked as correct and casts no vote);
- `rank`: position in the question's total order, best first: by score (or calibrated
  probability; higher first, null scores last), ties broken by a seeded random key;
- `weight`: the rm_vote weight of a response, its calibrated P(correct) (null scores
  weigh ~0);
- `lang_rank`: per question and language, the rank of the language's out-of-fold accuracy
  (higher is better; equal accuracies share a rank).

A draw (`Draw`) takes `fixed[l]` responses from each language l plus one more from each of
`extra` languages chosen uniformly without replacement from `candidates`; within a
language the responses are drawn uniformly without replacement. Selectors on one concrete
draw (`draw_value` is the definition):
  random     one of the k drawn uniformly              -> (#correct drawn) / k
  oracle     any drawn response correct                -> 0 or 1
  rm_best    the best-ranked drawn response            -> 0 or 1
  majority   the most frequent answer                  -> 1/#tied if correct is among the tied
  rm_vote    the answer with the largest weight sum    -> same, with weights
  lang_prior majority among the drawn responses whose language ranks highest
Voting ties count as a uniformly random pick among the tied answers (so the value is the
expected correctness, with no arbitrary preference). The expectation over draws is exact
for random, oracle and rm_best (`expected_*`: closed forms per allocation, averaged over
the candidate subsets by elementary symmetric polynomials) and seeded Monte Carlo for the
votes (`expected_votes`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numba
import numpy as np

SELECTORS = ("random", "majority", "rm_best", "rm_vote", "lang_prior", "oracle")
NEEDS_SCORES = frozenset({"rm_best", "rm_vote"})
EXACT = frozenset({"random", "rm_best", "oracle"})
VOTES = ("majority", "rm_vote", "lang_prior")  # Monte Carlo, in the kernel's order
# Weight floor: every answered response is a (tiny) voter, so a class is present iff its
# total is positive, even where a probability underflows or the score is null.
MIN_WEIGHT = 1e-12


def vote_weights(scores: np.ndarray) -> np.ndarray:
    """sigmoid(score) floored at MIN_WEIGHT; null (NaN) scores get the floor. For callers
    without labels (the endpoint); evaluate weighs by calibrated probabilities instead."""
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(over="ignore"):
        w = 1.0 / (1.0 + np.exp(-s))
    return np.where(np.isnan(w), MIN_WEIGHT, np.maximum(w, MIN_WEIGHT))


@dataclass(frozen=True)
class Draw:
    """The allocation at one budget: `fixed[l]` responses from language l for sure, plus one
    from each of `extra` languages drawn uniformly without replacement from `candidates`."""

    fixed: tuple[int, ...]
    candidates: tuple[int, ...] = ()
    extra: int = 0

    @property
    def k(self) -> int:
        return sum(self.fixed) + self.extra

    def mean(self) -> np.ndarray:
        """Expected responses per language."""
        m = np.array(self.fixed, dtype=np.float64)
        if self.extra:
            m[list(self.candidates)] += self.extra / len(self.candidates)
        return m

    def allocations(self) -> list[tuple[int, ...]]:
        """Every allocation the draw can take; all equally likely."""
        out = []
        for chosen in itertools.combinations(self.candidates, self.extra):
            a = list(self.fixed)
            for lang in chosen:
                a[lang] += 1
            out.append(tuple(a))
        return out


def round_robin(languages: Sequence[str], first: str) -> list[str]:
    """The `round_robin` allocation's order: `languages` rotated to start at `first` (as
    listed when `first` is not among them); the budget cycles through it."""
    langs = list(languages)
    at = langs.index(first) if first in langs else 0
    return langs[at:] + langs[:at]


@dataclass(frozen=True)
class Schedule:
    """How a pool hands out responses as the budget grows: in rounds, each round one response
    from every language it lists (a language drops out once its capacity is used). Within a
    round the target comes first; `shuffle` puts the other languages in a uniformly random
    order per draw (allocation `uniform`), else in the listed order (`round_robin`, mono)."""

    target: int
    rounds: tuple[tuple[int, ...], ...]
    shuffle: bool
    n_langs: int

    @property
    def capacity(self) -> int:
        return sum(map(len, self.rounds))

    def draw(self, k: int) -> Draw:
        if not 1 <= k <= self.capacity:
            raise ValueError(f"budget {k} outside 1..{self.capacity}")
        fixed, left = [0] * self.n_langs, k
        for rnd in self.rounds:
            if left >= len(rnd):
                for lang in rnd:
                    fixed[lang] += 1
                left -= len(rnd)
                continue
            if left == 0:
                break
            if not self.shuffle:
                for lang in rnd[:left]:
                    fixed[lang] += 1
                return Draw(tuple(fixed))
            others = tuple(lang for lang in rnd if lang != self.target)
            if len(others) < len(rnd):
                fixed[self.target] += 1
                left -= 1
            return Draw(tuple(fixed), others, left) if left else Draw(tuple(fixed))
        return Draw(tuple(fixed))


def draw_value(selector: str, cls: Sequence[int], rank: Sequence[int] | None = None,
               weight: Sequence[float] | None = None,
               lang_rank: Sequence[int] | None = None) -> float:
    """Expected correctness of `selector` on one concrete draw (the selectors' definition);
    `lang_rank`: the rank of each drawn response's language (lang_prior)."""
    cls = np.asarray(cls)
    if len(cls) == 0:
        raise ValueError("a draw needs at least one response")
    if selector == "random":
        return float(np.mean(cls == 0))
    if selector == "oracle":
        return float(np.any(cls == 0))
    if selector == "rm_best":
        return float(cls[int(np.argmin(rank))] == 0)
    if selector not in VOTES:
        raise ValueError(f"unknown selector {selector!r}; known: {', '.join(SELECTORS)}")
    votes = np.asarray(weight, dtype=np.float64) if selector == "rm_vote" else np.ones(len(cls))
    if selector == "lang_prior":
        lr = np.asarray(lang_rank)
        votes = votes * (lr == lr.max())
    totals: dict[int, float] = {}
    for c, v in zip(cls.tolist(), votes.tolist()):
        if c >= 0 and v > 0:
            totals[c] = totals.get(c, 0.0) + v
    if not totals:
        return 0.0
    top = max(totals.values())
    tied = [c for c, v in totals.items() if v == top]
    return (0 in tied) / len(tied)


# ------------------------------------------------------------------ exact forms
def _log_factorial(n_max: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n_max + 1)))])


def _none_drawn(n: np.ndarray, marked: np.ndarray, k: int | np.ndarray,
                lf: np.ndarray) -> np.ndarray:
    """P(none of `marked` items is among k drawn from n without replacement) = C(n-m,k)/C(n,k)."""
    free = n - marked
    ok = free >= k
    f, kk, nn = np.where(ok, free, 0), np.where(ok, k, 0), np.where(ok, n, 0)
    return np.where(ok, np.exp(lf[f] - lf[f - kk] - lf[nn] + lf[nn - kk]), 0.0)


def _over_subsets(draws: Sequence[Draw], factor) -> list[np.ndarray]:
    """For each draw, E over its candidate subsets of prod_l factor(l, k_l), where
    factor(l, v) is the term of language l drawn v times (v >= 1; 1 when v = 0). The
    candidates' terms combine as the coefficient of x^extra in prod_c (b_c + a_c x) (an
    elementary symmetric polynomial: every term non-negative, no cancellation), divided by
    the number of subsets; draws sharing fixed counts and candidates share one expansion."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(draws):
        groups.setdefault((d.fixed, d.candidates), []).append(i)
    out: list[np.ndarray] = [None] * len(draws)  # type: ignore[list-item]
    for (fixed, candidates), members in groups.items():
        base = None
        for lang, v in enumerate(fixed):
            if v and lang not in candidates:
                base = factor(lang, v) if base is None else base * factor(lang, v)
        degree = max(draws[i].extra for i in members)
        coef: list = [1.0]
        for c in candidates if degree else ():
            b = factor(c, fixed[c]) if fixed[c] else 1.0
            a = factor(c, fixed[c] + 1)
            new = [coef[0] * b]
            for j in range(1, min(len(coef), degree) + 1):
                new.append((coef[j] * b if j < len(coef) else 0.0) + coef[j - 1] * a)
            coef = new
        for i in members:
            e = draws[i].extra
            part = coef[e] / math.comb(len(candidates), e) if e else coef[0]
            if base is not None:
                part = base * part
            out[i] = np.asarray(part, dtype=np.float64)
    return out


def expected_random(n: np.ndarray, n_correct: np.ndarray, draws: Sequence[Draw]) -> np.ndarray:
    """random for questions with counts n, n_correct (Q, L): (K, Q).

    sum_l (E[k_l] / k) * (c_l / n_l): a uniformly random one of the k drawn responses.
    """
    rate = np.divide(n_correct, n, out=np.zeros(n.shape), where=n > 0)  # (Q, L)
    alloc = np.stack([d.mean() / d.k for d in draws])  # (K, L)
    return alloc @ rate.T


def expected_oracle(n: np.ndarray, n_correct: np.ndarray, draws: Sequence[Draw]) -> np.ndarray:
    """oracle: 1 - E[prod_l C(n_l - c_l, k_l) / C(n_l, k_l)]. Shapes as expected_random."""
    lf = _log_factorial(int(n.max(initial=0)))
    out = np.empty((len(draws), n.shape[0]))
    none = _over_subsets(draws, lambda lang, v: _none_drawn(n[:, lang], n_correct[:, lang], v, lf))
    for i, g in enumerate(none):
        out[i] = 1.0 - g
    return out


def expected_rm_best(lang: np.ndarray, n: np.ndarray, correct: np.ndarray,
                     draws: Sequence[Draw]) -> np.ndarray:
    """rm_best, exact. Items are (Q, N) arrays in each question's rank order (best first):
    `lang` (-1 = padding), `correct` (bool); n (Q, L) responses per language.

    G(p) = P(none of the p best items is drawn) = prod_l C(n_l - a_l(p), k_l) / C(n_l, k_l),
    where a_l(p) counts language-l items among the first p; item p is the pick iff none
    better is drawn and it is: P = G(p) - G(p + 1). So the accuracy is
    sum_p correct_p (G(p) - G(p+1)) = correct_0 + sum_p G(p+1) (correct_{p+1} - correct_p),
    linear in G: over random candidate subsets E[G] is `_over_subsets`. Returns (K, Q).
    """
    q, width = lang.shape
    n_lang = n.shape[1]
    lf = _log_factorial(int(n.max(initial=0)))
    c = (correct & (lang >= 0)).astype(np.float64)
    step_c = np.concatenate([c[:, 1:], np.zeros((q, 1))], axis=1) - c
    # Only prefixes after which correctness changes contribute: keep those per question
    # (padded with a zero step at the last position).
    flips = step_c != 0
    cols = np.argsort(~flips, axis=1, kind="stable")[:, :max(1, int(flips.sum(axis=1).max()))]
    cols = np.where(np.take_along_axis(flips, cols, 1), cols, width - 1)
    step_c = np.where(np.take_along_axis(flips, cols, 1), np.take_along_axis(step_c, cols, 1), 0.0)
    seen = np.cumsum(lang[:, :, None] == np.arange(n_lang), axis=1)
    seen = np.take_along_axis(seen, cols[:, :, None], 1)  # (Q, C, L)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def factor(lang_: int, v: int) -> np.ndarray:
        if (lang_, v) not in cache:
            cache[(lang_, v)] = _none_drawn(n[:, lang_, None], seen[:, :, lang_], v, lf)
        return cache[(lang_, v)]

    out = np.empty((len(draws), q))
    for i, g in enumerate(_over_subsets(draws, factor)):
        out[i] = c[:, 0] + np.einsum("qn,qn->q", np.broadcast_to(g, step_c.shape), step_c)
    return out


# ------------------------------------------------------------------ Monte Carlo votes
@numba.njit(cache=True, parallel=True)
def _vote_kernel(cls, weight, lang_rank, slots, n_items, rand_items, rand_langs, plan_q,
                 rounds, round_len, in_round, target, shuffle, record, n_class, out):
    n_draws, q_count, n_lang = rand_langs.shape
    # Questions in parallel: each writes only its own out[..., q].
    for q in numba.prange(q_count):
        perm = np.empty(slots.shape[1:], dtype=np.int64)
        lang_perm = np.empty(n_lang, dtype=np.int64)
        seq = np.empty(n_lang, dtype=np.int64)
        totals = np.zeros((3, n_class))
        top = np.zeros(3)
        n_top = np.ones(3, dtype=np.int64)
        for d in range(n_draws):
            for lang in range(n_lang):  # Fisher-Yates from the supplied uniforms
                m = n_items[q, lang]
                for i in range(m):
                    perm[lang, i] = slots[q, lang, i]
                for i in range(m - 1):
                    j = i + int(rand_items[d, q, lang, i] * (m - i))
                    if j >= m:
                        j = m - 1
                    t = perm[lang, i]
                    perm[lang, i] = perm[lang, j]
                    perm[lang, j] = t
            for i in range(n_lang):
                lang_perm[i] = i
            for i in range(n_lang - 1):
                j = i + int(rand_langs[d, q, i] * (n_lang - i))
                if j >= n_lang:
                    j = n_lang - 1
                t = lang_perm[i]
                lang_perm[i] = lang_perm[j]
                lang_perm[j] = t
            for p in range(plan_q.shape[0]):
                if not plan_q[p, q]:
                    continue
                totals[:, :] = 0.0
                top[:] = 0.0
                n_top[:] = 1
                best = -1
                step = 0
                for r in range(rounds.shape[1]):
                    length = round_len[p, r]
                    if length == 0:
                        break
                    if shuffle[p]:
                        m = 0
                        if in_round[p, r, target[p]]:
                            seq[0] = target[p]
                            m = 1
                        for i in range(n_lang):
                            lang = lang_perm[i]
                            if lang != target[p] and in_round[p, r, lang]:
                                seq[m] = lang
                                m += 1
                    else:
                        for i in range(length):
                            seq[i] = rounds[p, r, i]
                    for i in range(length):
                        lang = seq[i]
                        item = perm[lang, r]
                        c = cls[q, item]
                        rk = lang_rank[q, lang]
                        if rk > best:  # lang_prior: a better language restarts its count
                            best = rk
                            for x in range(n_class):
                                totals[2, x] = 0.0
                            top[2] = 0.0
                            n_top[2] = 1
                        if c >= 0:
                            for s in range(3):
                                if s == 2 and rk != best:
                                    continue
                                inc = weight[q, item] if s == 1 else 1.0
                                old = totals[s, c]
                                new = old + inc
                                totals[s, c] = new
                                # Totals only grow: the leader and its ties update in O(1).
                                if new > top[s]:
                                    top[s] = new
                                    n_top[s] = 1
                                elif new == top[s] and old < top[s]:
                                    n_top[s] += 1
                        step += 1
                        slot = record[p, step]
                        if slot >= 0:
                            for s in range(3):
                                if top[s] > 0 and totals[s, 0] == top[s]:
                                    out[s, p, slot, q] += 1.0 / n_top[s]


def expected_votes(cls: np.ndarray, weight: np.ndarray, lang_rank: np.ndarray,
                   slots: np.ndarray, n: np.ndarray,
                   plans: Mapping[object, tuple[Schedule, np.ndarray, Sequence[int]]],
                   draws: int, seed: int) -> dict[object, dict[str, np.ndarray]]:
    """majority, rm_vote and lang_prior by seeded Monte Carlo over draws.

    cls, weight: (Q, N) per item; lang_rank (Q, L); slots: (Q, L, M) item positions of each
    language (the first n[q, l] are real). plans: key -> (schedule, questions (Q,) bool,
    budgets). Draw d shuffles every (question, language) and the language order from
    uniforms seeded by (seed, d); budget k takes the schedule's first k responses, so the
    budgets of one draw are nested (common random numbers across budgets, pools and
    targets). Returns key -> {selector: (K, Q)} (zero outside the plan's questions).
    """
    keys = list(plans)
    q, n_lang = n.shape
    width = slots.shape[2]
    n_rounds = max((len(s.rounds) for s, _, _ in plans.values()), default=0)
    k_max = max((max(b, default=0) for _, _, b in plans.values()), default=0)
    rounds = np.full((len(keys), n_rounds, n_lang), -1, dtype=np.int64)
    round_len = np.zeros((len(keys), n_rounds + 1), dtype=np.int64)
    in_round = np.zeros((len(keys), n_rounds, n_lang), dtype=np.bool_)
    # Budget slot recorded after each step (-1: none); a round may run past k_max.
    record = np.full((len(keys), k_max + n_lang + 1), -1, dtype=np.int64)
    plan_q = np.zeros((len(keys), q), dtype=np.bool_)
    for p, key in enumerate(keys):
        sched, questions, budgets = plans[key]
        for r, rnd in enumerate(sched.rounds):
            rounds[p, r, :len(rnd)] = rnd
            round_len[p, r] = len(rnd)
            in_round[p, r, list(rnd)] = True
        for i, k in enumerate(budgets):
            record[p, k] = i
        # The kernel stops after the last budget: rounds past it are cut.
        total = 0
        for r in range(n_rounds):
            if total >= max(budgets, default=0):
                round_len[p, r] = 0
            total += round_len[p, r]
        plan_q[p] = questions
    n_record = max((len(b) for _, _, b in plans.values()), default=0)
    n_class = int(cls.max(initial=0)) + 1
    out = np.zeros((3, len(keys), n_record, q))
    cls64 = np.ascontiguousarray(cls, dtype=np.int64)
    weight64 = np.ascontiguousarray(weight, dtype=np.float64)
    ranks = np.ascontiguousarray(lang_rank, dtype=np.int64)
    slots64 = np.ascontiguousarray(slots, dtype=np.int64)
    n64 = np.ascontiguousarray(n, dtype=np.int64)
    # Draws per chunk bound the uniforms held at once; a draw's numbers do not depend on it.
    chunk = int(np.clip(2**23 // max(1, q * n_lang * width), 1, max(draws, 1)))
    for lo in range(0, draws, chunk):
        ds = range(lo, min(draws, lo + chunk))
        gens = [np.random.default_rng([seed, d]) for d in ds]
        items = np.stack([g.random((q, n_lang, width), dtype=np.float32) for g in gens])
        langs = np.stack([g.random((q, n_lang), dtype=np.float32) for g in gens])
        _vote_kernel(cls64, weight64, ranks, slots64, n64, items, langs, plan_q, rounds,
                     round_len, in_round, np.array([plans[k][0].target for k in keys]),
                     np.array([plans[k][0].shuffle for k in keys]), record, n_class, out)
    result: dict[object, dict[str, np.ndarray]] = {}
    for p, key in enumerate(keys):
        m = len(plans[key][2])
        result[key] = {sel: out[s, p, :m] / draws for s, sel in enumerate(VOTES)}
    return result
