"""Statistics against scipy, and cases with a known answer."""
import numpy as np
import pytest
from scipy import stats

from benchmark.statistics import (AGREES, DISAGREES, INCONCLUSIVE, bootstrap_ci, claim_verdict, mean_std,
                                  wilcoxon_p)


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


def test_wilcoxon_with_ties_and_zeros_matches_scipy():
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4, 0.3])
    b = a - np.array([0.1, 0.1, 0.0, -0.1, 0.2, 0.1, 0.3])  # tied absolute differences and one zero
    assert wilcoxon_p(a, b) == pytest.approx(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
    with pytest.raises(ValueError):
        wilcoxon_p(np.array([]), np.array([]))


def test_bootstrap_ci_is_seeded_and_needs_data():
    difference = np.random.default_rng(5).normal(0, 1, 50)
    assert bootstrap_ci(difference, seed=1) == bootstrap_ci(difference, seed=1)
    assert bootstrap_ci(difference, seed=1) != bootstrap_ci(difference, seed=2)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def test_bootstrap_ci_of_a_two_valued_sample_matches_its_binomial_quantiles():
    # mean of 4 draws from {-10, +10} is -10 with probability 1/16 > 2.5%: the 2.5% quantile is exactly -10
    low, high = bootstrap_ci(np.array([-10.0, 10.0, -10.0, 10.0]), n_resamples=20000)
    assert low == -10.0 and high == 10.0


def test_mean_std_uses_the_sample_std_and_reports_one_seed_as_zero():
    assert mean_std([47.0, 43.0]) == pytest.approx((45.0, np.sqrt(8.0), 2))
    assert mean_std([1.0, 2.0, 3.0, 4.0])[1] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert mean_std([24.89]) == (24.89, 0.0, 1)
    with pytest.raises(ValueError):
        mean_std([])


@pytest.mark.parametrize("paper, low, high, verdict", [
    (+6.6, 1.0, 9.0, AGREES),  # paper: reference better; our CI entirely above 0
    (-3.2, -16.0, -5.7, AGREES),  # paper: reference worse; our CI entirely below 0
    (+7.4, -11.6, -1.5, DISAGREES),
    (-1.4, 0.5, 3.0, DISAGREES),
    (+5.0, -1.8, 5.3, INCONCLUSIVE),
    (+5.0, 0.0, 5.3, INCONCLUSIVE),  # touching 0 is not "entirely on one side"
    (0.0, 1.0, 2.0, None),  # the paper reports a tie: no claim
])
def test_claim_verdict(paper, low, high, verdict):
    assert claim_verdict(paper, low, high) == verdict
