"""Paired comparisons of two methods on the same test images.

- `wilcoxon_p`: two-sided Wilcoxon signed-rank p-value on per-image differences (scipy),
  1.0 when every difference is zero (no evidence of a difference).
- `bootstrap_ci`: percentile bootstrap confidence interval of the mean difference, images
  resampled with replacement, seeded so the report is deterministic.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    difference = np.asarray(a, float) - np.asarray(b, float)
    if len(difference) == 0:
        raise ValueError("no paired images to compare")
    if np.all(difference == 0):
        return 1.0
    return float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_ci(difference: np.ndarray, n_resamples: int = 10000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    difference = np.asarray(difference, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(difference), size=(n_resamples, len(difference)))
    means = difference[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
