"""Statistics of the report: spread over seeds and paired comparisons on the same test images.

- `mean_std`: mean and sample standard deviation (ddof=1) over seeds; std 0.0 for one seed.
- `wilcoxon_p`: two-sided Wilcoxon signed-rank p-value on per-image differences (scipy),
  1.0 when every difference is zero (no evidence of a difference).
- `bootstrap_ci`: percentile bootstrap confidence interval of the mean difference, images
  resampled with replacement, seeded so the report is deterministic.
- `claim_verdict`: whether a paired confidence interval agrees with the sign of a difference the
  paper reports (entirely on the paper's side of 0), disagrees (entirely on the other side), or
  neither.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, std with ddof=1, n); the std of a single value is reported as 0.0, not NaN."""
    values = np.asarray(values, float)
    if values.size == 0:
        raise ValueError("no values to summarise")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std, int(values.size)


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
    if len(difference) == 0:
        raise ValueError("no paired images to resample")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(difference), size=(n_resamples, len(difference)))
    means = difference[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def claim_verdict(paper_difference: float, low: float, high: float) -> str | None:
    """Our CI [low, high] of a difference against the sign of the paper's difference; None if the paper has a tie."""
    if paper_difference == 0:
        return None
    if low > 0 or high < 0:
        return AGREES if (low > 0) == (paper_difference > 0) else DISAGREES
    return INCONCLUSIVE
