"""Statistics of the report: spread over seeds and paired comparisons on the same test images.

- `mean_std`: mean and sample standard deviation (ddof=1) over seeds; std 0.0 for one seed.
- `wilcoxon_p`: two-sided Wilcoxon signed-rank p-value on per-image differences (scipy),
  1.0 when every difference is zero (no evidence of a difference).
- `bootstrap_ci`: percentile bootstrap confidence interval of the mean difference, images
  resampled with replacement, seeded so the report is deterministic.
- `two_stage_bootstrap`: the paired comparison of two runs with both sources of variation: each
  resample draws every run's training seeds with replacement (the runs' seeds are independent
  trainings), then test images with replacement (the same images for both runs: paired), and takes
  the mean over the drawn seeds and images of one run minus the other's. Seeds and images are
  crossed (every seed is scored on every image), so both are resampled independently (Owen's
  pigeonhole bootstrap for crossed designs). Returns the percentile CI and the two-sided bootstrap
  p-value of "no difference". With every seed identical it is exactly `bootstrap_ci` of the
  seed-averaged per-image differences (the same image draws); with one seed per run it reflects test
  images only. With `paired_seeds` one draw of seed indices serves both runs (the seeds are shared factors).
- `holm`: Holm's step-down adjustment of p-values for a family of tests (family-wise error rate).
- `claim_verdict`: whether a paired confidence interval agrees with the sign of a difference the
  paper reports (entirely on the paper's side of 0), disagrees (entirely on the other side), or
  neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
NOT_JUDGED = "not judged (one seed)"


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


@dataclass(frozen=True)
class PairedBootstrap:
    low: float
    high: float
    p_value: float  # two-sided: 2 x the smaller tail share of resampled means on either side of 0


def _seed_weights(rng: np.random.Generator, n_seeds: int, n_resamples: int) -> np.ndarray:
    """(resamples, seeds): how often each seed is drawn in each resample, divided by the number of seeds."""
    picks = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    return (picks[:, :, None] == np.arange(n_seeds)).sum(axis=1) / n_seeds


def two_stage_bootstrap(reference: np.ndarray, other: np.ndarray, n_resamples: int = 10000,
                        confidence: float = 0.95, seed: int = 0, paired_seeds: bool = False) -> PairedBootstrap:
    """CI and p-value of mean(reference) - mean(other), resampling each run's seeds, then the shared images.

    reference: (seeds of the reference run, images), other: (seeds of the other run, images), per-image
    values with the same images in the same column order. paired_seeds: the rows are the same seeds in the same
    order, and one draw of seed indices serves both runs (for seeds whose effects are shared between runs)."""
    reference, other = np.atleast_2d(np.asarray(reference, float)), np.atleast_2d(np.asarray(other, float))
    if reference.shape[1] != other.shape[1]:
        raise ValueError(f"the runs are scored on different numbers of images: {reference.shape[1]} and "
                         f"{other.shape[1]}")
    n_images = reference.shape[1]
    if n_images == 0 or 0 in (len(reference), len(other)):
        raise ValueError("no paired images (or no seeds) to resample")
    # the image draws are bootstrap_ci's exactly (same generator, same calls); seeds from a second stream
    image_picks = np.random.default_rng(seed).integers(0, n_images, size=(n_resamples, n_images))
    seed_rng = np.random.default_rng([seed, 1])
    if paired_seeds:
        if len(reference) != len(other):
            raise ValueError(f"paired seeds need the same seeds in both runs: {len(reference)} and {len(other)}")
        weights = [_seed_weights(seed_rng, len(reference), n_resamples)] * 2
    else:
        weights = [_seed_weights(seed_rng, len(values), n_resamples) for values in (reference, other)]
    # how often each image is drawn in each resample: (resamples, images), so a run's resampled per-seed
    # means are one matrix product
    rows = np.repeat(np.arange(n_resamples), n_images)
    image_counts = np.bincount(rows * n_images + image_picks.ravel(), minlength=n_resamples * n_images)
    image_counts = image_counts.reshape(n_resamples, n_images) / n_images
    run_means = [(weight * (image_counts @ values.T)).sum(axis=1)
                 for weight, values in zip(weights, (reference, other))]
    means = run_means[0] - run_means[1]
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    below, above = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1), \
        (np.count_nonzero(means >= 0) + 1) / (n_resamples + 1)
    return PairedBootstrap(float(low), float(high), float(min(1.0, 2 * min(below, above))))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order): the k-th smallest is max over j <= k of (m - j + 1) p_(j), capped at 1."""
    p = np.asarray(p_values, float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def claim_verdict(paper_difference: float, low: float, high: float) -> str | None:
    """Our CI [low, high] of a difference against the sign of the paper's difference; None if the paper has a tie."""
    if paper_difference == 0:
        return None
    if low > 0 or high < 0:
        return AGREES if (low > 0) == (paper_difference > 0) else DISAGREES
    return INCONCLUSIVE
