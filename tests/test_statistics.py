"""Statistics against scipy, and cases with a known answer; the two-stage bootstrap on simulated data."""
import numpy as np
import pytest
from scipy import stats

from benchmark.evaluation.statistics import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    bootstrap_ci,
    claim_verdict,
    holm,
    mean_std,
    two_stage_bootstrap,
    wilcoxon_p,
)


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


def test_two_stage_bootstrap_reduces_to_the_image_bootstrap_when_every_seed_is_identical():
    rng = np.random.default_rng(4)
    reference, other = rng.random(60), rng.random(60)
    expected = bootstrap_ci(reference - other, n_resamples=5000, seed=7)
    result = two_stage_bootstrap(np.tile(reference, (3, 1)), np.tile(other, (2, 1)), n_resamples=5000, seed=7)
    assert (result.low, result.high) == pytest.approx(expected, abs=1e-12)
    one_seed = two_stage_bootstrap(reference[None], other[None], n_resamples=5000, seed=7)
    assert (one_seed.low, one_seed.high) == pytest.approx(expected, abs=1e-12)


def test_two_stage_bootstrap_widens_when_seeds_differ_while_images_do_not():
    images = np.full(40, 50.0)  # every test image scores the same: no image-sampling variation at all
    seed_effects = np.array([[-2.0], [0.0], [2.0]])
    reference, other = images + 5 + seed_effects, images + 0 * seed_effects
    seed_averaged = bootstrap_ci(reference.mean(0) - other.mean(0), n_resamples=4000)
    assert seed_averaged == pytest.approx((5.0, 5.0)), "images alone see no uncertainty"
    result = two_stage_bootstrap(reference, other, n_resamples=4000)
    assert result.low < 5 - 1 and result.high > 5 + 1, "the seeds' spread widens the interval"
    assert 3 - 1e-9 <= result.low and result.high <= 7 + 1e-9, "but never beyond the seed means themselves"
    # the percentile CI of the mean of 3 seeds drawn from {-2, 0, 2}: each extreme has probability 1/27 > 2.5%
    assert (result.low, result.high) == pytest.approx((3.0, 7.0), abs=1e-9)


def test_two_stage_bootstrap_p_value():
    constant = two_stage_bootstrap(np.full((2, 10), 3.0), np.full((2, 10), 1.0), n_resamples=999)
    assert constant.p_value == pytest.approx(2 / 1000), "no resample on the other side of 0: the smallest p"
    none = two_stage_bootstrap(np.full((2, 10), 1.0), np.full((2, 10), 1.0), n_resamples=999)
    assert none.p_value == 1.0 and (none.low, none.high) == pytest.approx((0.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match="different numbers of images"):
        two_stage_bootstrap(np.zeros((2, 5)), np.zeros((2, 6)))


def test_two_stage_bootstrap_covers_the_known_difference_of_a_two_level_model():
    """Per-image scores = run effect + training-seed effect + image effects + noise, both levels random:
    the 95% interval must contain the true difference (5 points) in about 95% of simulated studies."""
    rng = np.random.default_rng(2024)
    seeds, images, studies, hits = 10, 100, 250, 0
    for study in range(studies):
        difficulty = rng.normal(0, 10, images)  # shared by both runs: cancels in the paired difference
        reference = 50 + difficulty + rng.normal(0, 2, (seeds, 1)) + rng.normal(0, 5, (seeds, images))
        other = 45 + difficulty + rng.normal(0, 8, images) + rng.normal(0, 2, (seeds, 1)) + \
            rng.normal(0, 5, (seeds, images))
        result = two_stage_bootstrap(reference, other, n_resamples=1000, seed=study)
        hits += result.low <= 5.0 <= result.high
    assert 0.91 <= hits / studies <= 0.99, f"coverage {hits / studies:.3f}"


def test_holm_adjustment_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]), "capped at 1"
    assert holm([]) == []
