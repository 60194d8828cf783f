"""Simulation tests of the resolving-power model: on a two-level model with known variance components the formula's
CI half-width matches the two-stage bootstrap's, and the seeds it says a difference needs achieve the target power
(within Monte-Carlo error)."""
import numpy as np
import pytest

from benchmark.evaluation.resolving_power import TARGET_POWER, Components, components, seed_pairing
from benchmark.evaluation.statistics import two_stage_bootstrap

IMAGES = 100


def simulate(rng, seeds: int, seed_sd: float, image_sd: float, noise_sd: float, difference: float,
             shared_seed_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two runs' (seeds x images) values: y = mu + a_seed + b_image + e, the image effects paired between the runs
    (a common part that cancels plus a part of sd image_sd that differs), optionally a seed effect both runs share."""
    common = rng.normal(50, 10, IMAGES)
    differing = rng.normal(0, image_sd, IMAGES)
    shared = rng.normal(0, shared_seed_sd, (seeds, 1))
    reference = (difference + common + differing / 2 + shared + rng.normal(0, seed_sd, (seeds, 1))
                 + rng.normal(0, noise_sd, (seeds, IMAGES)))
    other = common - differing / 2 + shared + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd,
                                                                                             (seeds, IMAGES))
    return reference, other


def known(seed_sd: float, image_sd: float, noise_sd: float) -> Components:
    seed = seed_sd**2 + noise_sd**2 / IMAGES
    return Components((seed, seed), (noise_sd**2, noise_sd**2), image_sd**2, IMAGES)


def test_components_recover_the_simulated_variances():
    rng = np.random.default_rng(0)
    reference, other = simulate(rng, 60, seed_sd=3.0, image_sd=8.0, noise_sd=12.0, difference=0.0)
    estimate, truth = components(reference, other), known(3.0, 8.0, 12.0)
    assert estimate.residual == pytest.approx(truth.residual, rel=0.05)
    assert estimate.image == pytest.approx(truth.image, rel=0.3)
    assert estimate.seed == pytest.approx(truth.seed, rel=0.45)  # 59 degrees of freedom each


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_formula_half_width_is_the_bootstraps(seeds):
    rng = np.random.default_rng(seeds)
    truth = known(2.0, 8.0, 12.0)
    widths = []
    for k in range(150):
        boot = two_stage_bootstrap(*simulate(rng, seeds, 2.0, 8.0, 12.0, 0.0), n_resamples=1000, seed=k)
        widths.append((boot.high - boot.low) / 2)
    assert np.mean(widths) == pytest.approx(truth.half_width((seeds, seeds)), rel=0.06)


@pytest.mark.parametrize("seed_sd, image_sd, difference", [(2.0, 8.0, 4.0),  # the images weigh most
                                                           (5.0, 4.0, 10.0)])  # the seeds weigh most
def test_seeds_needed_achieve_the_target_power(seed_sd, image_sd, difference):
    truth = known(seed_sd, image_sd, 12.0)
    needed = truth.seeds_needed(difference)
    assert needed is not None and 3 <= needed <= 12
    assert truth.power(difference, (needed, needed)) >= TARGET_POWER > truth.power(difference, (needed - 1, needed - 1))
    rng = np.random.default_rng(int(10 * difference))
    trials = 300
    resolved = sum(two_stage_bootstrap(*simulate(rng, needed, seed_sd, image_sd, 12.0, difference),
                                       n_resamples=1000, seed=k).low > 0 for k in range(trials))
    monte_carlo_sd = np.sqrt(TARGET_POWER * (1 - TARGET_POWER) / trials)
    assert resolved / trials == pytest.approx(truth.power(difference, (needed, needed)), abs=3 * monte_carlo_sd)


def test_no_number_of_seeds_beats_the_images_own_spread():
    truth = known(2.0, 30.0, 12.0)  # image differences of sd 30 over 100 images: the CI cannot shrink below ±5.8
    assert truth.seeds_needed(5.0) is None
    assert truth.seeds_needed(12.0) is not None


def test_seed_pairing_finds_a_shared_seed_effect_and_only_then():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 2.0, 3)
    with_shared = {f"run{k}": dict(enumerate(shared + rng.normal(0, 0.5, 3))) for k in range(8)}
    without = {f"run{k}": dict(enumerate(rng.normal(0, 2.0, 3))) for k in range(8)}
    assert seed_pairing(with_shared).used() and seed_pairing(with_shared).correlation > 0.8
    assert not seed_pairing(without).used()
    assert seed_pairing({"a": {0: 1.0, 1: 2.0}, "b": {3: 1.0, 4: 2.0}}).pairs == 0, "different seeds never pair"


def test_paired_seeds_narrow_the_ci_by_the_shared_part_and_the_model_follows():
    rng = np.random.default_rng(5)
    reference, other = simulate(rng, 5, seed_sd=0.5, image_sd=4.0, noise_sd=6.0, difference=1.0, shared_seed_sd=4.0)
    independent = two_stage_bootstrap(reference, other, n_resamples=4000)
    paired = two_stage_bootstrap(reference, other, n_resamples=4000, paired_seeds=True)
    assert paired.high - paired.low < 0.6 * (independent.high - independent.low)
    model = components(reference, other, paired_seeds=True)
    assert (paired.high - paired.low) / 2 == pytest.approx(model.half_width((5, 5)), rel=0.15)
    with pytest.raises(ValueError, match="same seeds"):
        two_stage_bootstrap(reference, other[:3], paired_seeds=True)


def test_paired_components_hold_when_a_seed_shares_its_per_image_deviations():
    """Runs that share a seed's initial weights and batch order may share its per-image deviations too, not only its
    mean. The paired model must then read everything from the table of differences: differencing only the seed
    means left each run's own interaction in the residual, so the image term collapsed to 0 and the half-width
    missed the paired bootstrap's by ~40%."""
    rng = np.random.default_rng(11)
    widths, models, images = [], [], []
    for k in range(40):
        reference, other = simulate(rng, 3, seed_sd=0.5, image_sd=3.0, noise_sd=2.0, difference=0.0)
        shared = rng.normal(0, 10.0, (3, IMAGES))  # the same seed's per-image deviation in both runs
        reference, other = reference + shared, other + shared
        boot = two_stage_bootstrap(reference, other, n_resamples=1000, seed=k, paired_seeds=True)
        widths.append((boot.high - boot.low) / 2)
        model = components(reference, other, paired_seeds=True)
        models.append(model.half_width((3, 3)))
        images.append(model.image)
    assert np.mean(models) == pytest.approx(np.mean(widths), rel=0.1)
    assert np.mean(images) == pytest.approx(3.0**2, rel=0.3), "the image term survives the shared deviations"
