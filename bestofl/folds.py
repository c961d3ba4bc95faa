"""Statistics fitted on labels, out of fold: every question gets values fitted on the
other folds' questions only, so its own labels never reach the selector that judges it.

- `assign_folds`: a seeded shuffle of the (sorted) question ids dealt into K folds; it
  depends on the ids alone, never on labels.
- `platt`: per-language Platt scaling of reward-model scores to P(correct), fitted per
  fold on the other folds' answered, scored responses (Platt's smoothed targets keep a
  separable fold finite). A constant shift of all scores moves only the intercept, so the
  probabilities do not move.
- `language_ranks`: per question, the rank of each language's accuracy on the other folds
  (higher is better; equal accuracies share a rank).
"""
from __future__ import annotations

import numpy as np


def assign_folds(n_questions: int, folds: int, seed: int) -> np.ndarray:
    """Fold (0..K-1) of each of `n_questions` questions given in sorted-qid order."""
    if n_questions < 2:
        raise ValueError(f"out-of-fold statistics need at least 2 questions, got {n_questions}")
    k = min(folds, n_questions)
    order = np.random.default_rng([seed, 7]).permutation(n_questions)
    fold = np.empty(n_questions, dtype=np.int64)
    fold[order] = np.arange(n_questions) % k
    return fold


def platt(score: np.ndarray, correct: np.ndarray, lang: np.ndarray, fold: np.ndarray,
          usable: np.ndarray, n_lang: int, iterations: int = 50) -> np.ndarray:
    """Out-of-fold P(correct) of every row (rows: score, correct, lang index, fold of the
    row's question); `usable` rows (answered and scored) are the training data. Rows
    without a score get NaN. A (fold, language) without training rows gets 0.5."""
    prob = np.full(len(score), np.nan)
    for f in range(int(fold.max(initial=-1)) + 1):
        train = usable & (fold != f)
        g, s, y = lang[train], score[train], correct[train].astype(np.float64)
        count = np.bincount(g, minlength=n_lang).astype(np.float64)
        pos = np.bincount(g, weights=y, minlength=n_lang)
        # Standardise per language (conditioning only: the fit absorbs any affine map).
        mean = np.divide(np.bincount(g, weights=s, minlength=n_lang), count,
                         out=np.zeros(n_lang), where=count > 0)
        var = np.divide(np.bincount(g, weights=(s - mean[g]) ** 2, minlength=n_lang), count,
                        out=np.zeros(n_lang), where=count > 0)
        std = np.where(var > 0, np.sqrt(var), 1.0)
        x = (s - mean[g]) / std[g]
        target = np.where(y > 0, ((pos + 1) / (pos + 2))[g], (1 / (count - pos + 2))[g])
        a = np.zeros(n_lang)
        base = (pos + 1) / (count + 2)
        b = np.log(base / (1 - base))
        # Newton steps on each language's sigmoid(a x + b): ga, gb the gradient, haa, hab,
        # hbb the Hessian of the log-loss.
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(a[g] * x + b[g])))
            r, w = p - target, p * (1 - p)
            ga = np.bincount(g, weights=r * x, minlength=n_lang)
            gb = np.bincount(g, weights=r, minlength=n_lang)
            haa = np.bincount(g, weights=w * x * x, minlength=n_lang) + 1e-9
            hab = np.bincount(g, weights=w * x, minlength=n_lang)
            hbb = np.bincount(g, weights=w, minlength=n_lang) + 1e-9
            det = haa * hbb - hab * hab
            da = (hbb * ga - hab * gb) / det
            db = (haa * gb - hab * ga) / det
            scale = np.minimum(1.0, 5.0 / np.maximum(np.abs(da), np.abs(db)).clip(1e-300))
            a -= scale * da
            b -= scale * db
            if max(np.abs(da).max(initial=0), np.abs(db).max(initial=0)) < 1e-12:
                break
        rows = fold == f
        gl = lang[rows]
        z = a[gl] * (score[rows] - mean[gl]) / std[gl] + b[gl]
        prob[rows] = np.where(count[gl] > 0, 1.0 / (1.0 + np.exp(-z)), 0.5)
    return np.where(np.isnan(score), np.nan, prob)


def language_ranks(n: np.ndarray, n_correct: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """(Q, L) rank of each language's accuracy over the other folds' responses, for every
    question (n, n_correct: responses and correct responses per question and language)."""
    ranks = np.zeros(n.shape, dtype=np.int64)
    for f in range(int(fold.max(initial=-1)) + 1):
        other = fold != f
        total = n[other].sum(axis=0)
        acc = np.where(total > 0, n_correct[other].sum(axis=0) / np.maximum(total, 1), -1.0)
        ranks[fold == f] = np.searchsorted(np.unique(acc), acc)
    return ranks
