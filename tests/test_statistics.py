"""Statistics against scipy and a case with a known answer."""
import numpy as np
import pytest
from scipy import stats

from benchmark.statistics import bootstrap_ci, wilcoxon_p


def test_wilcoxon_matches_scipy_and_handles_ties():
    rng = np.random.default_rng(1)
    a = rng.random(40)
    b = a - 0.05 + 0.02 * rng.standard_normal(40)
    assert wilcoxon_p(a, b) == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert wilcoxon_p(a, b) < 0.001
    assert wilcoxon_p(a, a) == 1.0


def test_bootstrap_ci_of_a_constant_difference_is_that_constant():
    low, high = bootstrap_ci(np.full(30, 0.2))
    assert low == pytest.approx(0.2) and high == pytest.approx(0.2)


def test_bootstrap_ci_covers_the_mean_with_the_normal_width():
    rng = np.random.default_rng(0)
    difference = rng.normal(0.1, 1.0, 400)
    low, high = bootstrap_ci(difference, n_resamples=4000, seed=3)
    half_width = 1.96 * difference.std(ddof=1) / np.sqrt(len(difference))
    assert low < difference.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert bootstrap_ci(difference, n_resamples=4000, seed=3) == (low, high)
