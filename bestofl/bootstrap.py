"""Percentile bootstrap over questions, shared by evaluate and compare.

One resampling of the questions (`resample_counts`) serves every row of a report, so
differences between rows (cross - mono, report B - report A) are paired: both arms see
the same resampled questions.
"""
from __future__ import annotations

import numpy as np


def resample_counts(n_questions: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, Q): how often each question is drawn in each of B resamples of Q questions
    with replacement (the indices come from rng.integers(0, Q, size=(B, Q)))."""
    idx = rng.integers(0, n_questions, size=(resamples, n_questions))
    flat = (np.arange(resamples)[:, None] * n_questions + idx).ravel()
    return np.bincount(flat, minlength=resamples * n_questions).reshape(resamples, n_questions)


def resampled_means(values: np.ndarray, counts: np.ndarray, members: np.ndarray,
                    group: np.ndarray) -> np.ndarray:
    """(E, B) mean of each row of `values` (E, Q; zero outside its questions) over its
    questions in each resample; row e's questions are members[group[e]] (G, Q) of 0/1.
    NaN where a resample holds none of them."""
    c = counts.T.astype(np.float64)  # float: BLAS, not numpy's integer matmul
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values @ c) / (members @ c)[group]


def interval(means: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each row of `means` (E, B) (NaN resamples ignored)."""
    alpha = (1.0 - confidence) / 2
    quantile = np.nanquantile if np.isnan(means).any() else np.quantile
    lo, hi = quantile(means, [alpha, 1.0 - alpha], axis=1)
    return lo, hi
