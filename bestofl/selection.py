"""Selectors, and their expected accuracy when k responses are drawn from a question's pool.

One question's responses are encoded as numpy arrays (see bestofl.evaluation):
- `cls`: answer class, 0 = the correct answer (every correct response), 1.. = distinct
  wrong answers, -1 = no answer (null answer or a row with `error`: it took a slot in the
  budget but cannot be picked as correct and casts no vote);
- `rank`: position in the question's total order, best first: by score (higher first,
  null scores last), ties broken by a seeded random key, so every choice is reproducible;
- `weight`: the rm_vote weight of a response, sigmoid(score) (null scores weigh ~0).

A draw at an allocation (k_1, ..., k_L) takes k_l of the n_l responses in language l,
uniformly without replacement, independently per language (mono is the allocation with
all k in the target language). Selectors on one draw (`draw_value` is the definition):
  random    one of the k drawn uniformly              -> (#correct drawn) / k
  oracle    any drawn response correct                -> 0 or 1
  rm_best   the best-ranked drawn response            -> 0 or 1
  majority  the most frequent answer                  -> 1/#tied if correct is among the tied
  rm_vote   the answer with the largest weight sum    -> same, with weights
Voting ties count as a uniformly random pick among the tied answers (so the value is the
expected correctness, with no arbitrary preference). The expectation over draws is exact
for random, oracle and rm_best (`expected_*`) and seeded Monte Carlo for the votes
(`expected_votes`), where no tractable closed form exists for stratified draws.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

SELECTORS = ("random", "majority", "rm_best", "rm_vote", "oracle")
NEEDS_SCORES = frozenset({"rm_best", "rm_vote"})
EXACT = frozenset({"random", "rm_best", "oracle"})
# Weight floor: every answered response is a (tiny) voter, so a class is present iff its
# total is positive, even where sigmoid underflows or the score is null.
MIN_WEIGHT = 1e-12


def vote_weights(scores: np.ndarray) -> np.ndarray:
    """rm_vote weights: sigmoid(score) floored at MIN_WEIGHT; null (NaN) scores get the floor."""
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(over="ignore"):
        w = 1.0 / (1.0 + np.exp(-s))
    return np.where(np.isnan(w), MIN_WEIGHT, np.maximum(w, MIN_WEIGHT))


def draw_value(selector: str, cls: Sequence[int], rank: Sequence[int] | None = None,
               weight: Sequence[float] | None = None) -> float:
    """Expected correctness of `selector` on one concrete draw (the selectors' definition)."""
    cls = np.asarray(cls)
    if len(cls) == 0:
        raise ValueError("a draw needs at least one response")
    if selector == "random":
        return float(np.mean(cls == 0))
    if selector == "oracle":
        return float(np.any(cls == 0))
    if selector == "rm_best":
        return float(cls[int(np.argmin(rank))] == 0)
    if selector not in ("majority", "rm_vote"):
        raise ValueError(f"unknown selector {selector!r}; known: {', '.join(SELECTORS)}")
    votes = np.ones(len(cls)) if selector == "majority" else np.asarray(weight, dtype=np.float64)
    totals: dict[int, float] = {}
    for c, v in zip(cls.tolist(), votes.tolist()):
        if c >= 0:
            totals[c] = totals.get(c, 0.0) + v
    if not totals:
        return 0.0
    top = max(totals.values())
    tied = [c for c, v in totals.items() if v == top]
    return (0 in tied) / len(tied)


# ------------------------------------------------------------------ exact forms
def _log_factorial(n_max: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n_max + 1)))])


def _none_drawn(n: np.ndarray, marked: np.ndarray, k: np.ndarray, lf: np.ndarray) -> np.ndarray:
    """P(none of `marked` items is among k drawn from n without replacement) = C(n-m,k)/C(n,k)."""
    free = n - marked
    ok = free >= k
    f, kk, nn = np.where(ok, free, 0), np.where(ok, k, 0), np.where(ok, n, 0)
    return np.where(ok, np.exp(lf[f] - lf[f - kk] - lf[nn] + lf[nn - kk]), 0.0)


def expected_random(n: np.ndarray, n_correct: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """random at allocations `alloc` (K, L) for questions with counts n, n_correct (Q, L): (K, Q).

    sum_l (k_l / k) * (c_l / n_l): a uniformly random one of the k drawn responses.
    """
    rate = np.divide(n_correct, n, out=np.zeros(n.shape), where=n > 0)  # (Q, L)
    k = alloc.sum(axis=1, keepdims=True)  # (K, 1)
    return (alloc / k) @ rate.T


def expected_oracle(n: np.ndarray, n_correct: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """oracle: 1 - prod_l C(n_l - c_l, k_l) / C(n_l, k_l). Shapes as expected_random."""
    lf = _log_factorial(int(max(n.max(initial=0), alloc.max(initial=0))))
    none = _none_drawn(n[None], n_correct[None], alloc[:, None, :], lf)  # (K, Q, L)
    return 1.0 - none.prod(axis=2)


def expected_rm_best(lang: np.ndarray, within: np.ndarray, n_item: np.ndarray,
                     correct: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """rm_best, exact. Items are (Q, N) arrays in each question's rank order (best first):
    `lang` (-1 = padding), `within` = rank among the question's items of the same language,
    `n_item` = how many items that language has for the question, `correct` (bool).

    G(p) = P(none of the p best items is drawn) = prod_l C(n_l - a_l(p), k_l) / C(n_l, k_l),
    where a_l(p) counts language-l items among the first p. Adding item p (language l,
    within-rank j) multiplies G by f_p = (n_l - j - k_l)^+ / (n_l - j), and item p is the
    pick iff none better is drawn and it is: P = G(p) - G(p + 1). So the accuracy is
    sum_p correct_p (G(p) - G(p+1)) = correct_0 + sum_p G(p+1) (correct_{p+1} - correct_p).
    Returns (K, Q).
    """
    valid = lang >= 0
    alloc_pad = np.concatenate([alloc, np.zeros((alloc.shape[0], 1), alloc.dtype)], axis=1)
    lang_idx = np.where(valid, lang, alloc.shape[1])
    left = np.where(valid, n_item - within, 1).astype(np.float64)  # >= 1 on real items
    c = (correct & valid).astype(np.float64)
    step_c = np.concatenate([c[:, 1:], np.zeros((c.shape[0], 1))], axis=1) - c
    out = np.empty((alloc.shape[0], lang.shape[0]))
    step = max(1, 2**18 // max(1, lang.size))  # budgets per slice: stays in cache
    for lo in range(0, alloc.shape[0], step):
        g = np.maximum(left - alloc_pad[lo:lo + step][:, lang_idx], 0.0)
        g /= left
        np.cumprod(g, axis=2, out=g)
        out[lo:lo + step] = c[:, 0] + np.einsum("kqn,qn->kq", g, step_c)
    return out


# ------------------------------------------------------------------ Monte Carlo votes
def expected_votes(cls: np.ndarray, weight: np.ndarray, slots: np.ndarray,
                   plans: Mapping[object, tuple[Sequence[int], Sequence[int]]],
                   draws: int, seed: int, selectors: Sequence[str] = ("majority", "rm_vote"),
                   ) -> dict[object, dict[str, np.ndarray]]:
    """majority and rm_vote by seeded Monte Carlo over draws.

    cls, weight: (Q, N) per item; slots: (Q, L, M) item positions of each language,
    padded with N. plans: key -> (order, budgets): `order` lists the language index of
    each successive response of the draw (its first k entries are the allocation at k),
    budgets are the k to report (each <= len(order), and <= what every question holds).
    Draw d is a random permutation of every (question, language), seeded by (seed, d);
    at budget k it takes the first k_l of language l's permutation, so the budgets of one
    draw are nested (common random numbers across budgets, pools and targets). Votes are
    added one response at a time for all plans at once: a class total only grows, so the
    leader and the number of classes tied with it update in O(1). Returns
    key -> {selector: (K, Q)}.
    """
    unknown = set(selectors) - {"majority", "rm_vote"}
    if unknown:
        raise ValueError(f"expected_votes estimates majority and rm_vote, not {sorted(unknown)}")
    keys = list(plans)
    q, n = cls.shape
    n_lang, width = slots.shape[1], slots.shape[2] + 1
    dummy = int(cls.max(initial=0)) + 1  # class column of responses without an answer
    n_class = dummy + 1
    k_max = max((max(b, default=0) for _, b in plans.values()), default=0)
    # Per plan and step: which language, and which place in that language's permutation
    # (`width - 1` is a padding place: no vote once a plan's order is used up).
    lang_seq = np.zeros((len(keys), k_max), dtype=np.int64)
    place_seq = np.full((len(keys), k_max), width - 1, dtype=np.int64)
    for p, key in enumerate(keys):
        seen: dict[int, int] = {}
        for i, lang in enumerate(plans[key][0][:k_max]):
            lang_seq[p, i], place_seq[p, i] = lang, seen.get(lang, 0)
            seen[lang] = seen.get(lang, 0) + 1
    record = sorted({k for _, b in plans.values() for k in b})
    at = {k: i for i, k in enumerate(record)}
    sums = {sel: np.zeros((len(record), q, len(keys))) for sel in selectors}

    cls_ext = np.concatenate([np.where(cls >= 0, cls, dummy), np.full((q, 1), dummy)],
                             axis=1).astype(np.int32)
    w_ext = np.concatenate([np.where(cls >= 0, weight, 0.0), np.zeros((q, 1))], axis=1)
    slots_ext = np.concatenate([slots, np.full((q, n_lang, 1), n)], axis=2).astype(np.int32)
    padding = slots_ext >= n
    rows = np.arange(q)[None, :, None, None]
    # Draws per chunk: the per-step arrays (s, Q, plans) stay in cache and the class
    # totals stay small. Chunking changes nothing in the result (draws are seeded singly).
    per_draw = q * len(keys)
    chunk = int(np.clip(min(2**15 // per_draw, 2**22 // (per_draw * n_class)), 1, draws))
    for lo in range(0, draws, chunk):
        s = min(chunk, draws - lo)
        rand = np.stack([np.random.default_rng([seed, d]).random(slots_ext.shape, dtype=np.float32)
                         for d in range(lo, lo + s)])
        rand[:, padding] = 2.0  # padding sorts last
        pos = np.take_along_axis(np.broadcast_to(slots_ext, rand.shape),
                                 np.argsort(rand, axis=-1), -1)  # (s, Q, L, width)
        # Step i of plan p adds response pos[.., lang_seq[p, i], place_seq[p, i]]:
        # gathered once into step-major (k_max, s, Q, plans) arrays.
        pick = pos[:, :, lang_seq, place_seq]  # (s, Q, plans, k_max)
        step_cls = np.ascontiguousarray(np.moveaxis(cls_ext[rows, pick], 3, 0))
        base = np.arange(s * per_draw).reshape(s, q, len(keys)) * n_class
        step_idx = step_cls + base  # flat index of (draw, question, plan, class)
        for sel in selectors:
            if sel == "rm_vote":
                step_inc = np.ascontiguousarray(np.moveaxis(w_ext[rows, pick], 3, 0))
                totals = np.zeros(s * per_draw * n_class)
            else:  # majority: every answered response is one vote
                step_inc = (step_cls != dummy).astype(np.int32)
                totals = np.zeros(s * per_draw * n_class, dtype=np.int32)
            top = np.zeros((s, q, len(keys)), dtype=totals.dtype)
            n_top = np.ones((s, q, len(keys)), dtype=np.int32)  # read only once top > 0
            for i in range(k_max):
                idx = step_idx[i]
                old = totals[idx]
                new = old + step_inc[i]
                totals[idx] = new
                above = new > top
                joins = (new == top) & (old < top)
                n_top = np.where(above, 1, n_top + joins)
                np.maximum(top, new, out=top)
                if i + 1 in at:
                    win = (totals[base] == top) & (top > 0)
                    sums[sel][at[i + 1]] += (win / n_top).sum(axis=0)
    out: dict[object, dict[str, np.ndarray]] = {}
    for p, key in enumerate(keys):
        rows_k = [at[k] for k in plans[key][1]]
        out[key] = {sel: sums[sel][rows_k, :, p] / draws for sel in selectors}
    return out
