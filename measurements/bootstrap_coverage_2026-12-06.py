"""How often the claims' two-stage bootstrap CI (95%) excludes 0 when the two runs do not differ at all.

    PYTHONPATH=. python measurements/bootstrap_coverage_2026-12-06.py

Simulates the two-level model of benchmark.evaluation.resolving_power (seed effect per run, paired image effect,
seed x image noise; values in Dice points, 100 images) in two regimes: where the seeds weigh most (seed sd 5,
image-difference sd 1, noise 12) and where the images weigh most (seed sd 2, image-difference sd 8, noise 12, the
regime of this benchmark's claims), at 2, 3 and 5 seeds per run, independent seeds. A calibrated 95% CI excludes 0
in 5% of the trials; the bootstrap resamples only n seeds, so it under-states their spread at small n.
"""
import numpy as np

from benchmark.evaluation.statistics import two_stage_bootstrap

IMAGES, TRIALS, RESAMPLES = 100, 400, 1000


def simulate(rng, seeds, seed_sd, image_sd, noise_sd):
    common, differing = rng.normal(50, 10, IMAGES), rng.normal(0, image_sd, IMAGES)
    return tuple(common + sign * differing / 2 + rng.normal(0, seed_sd, (seeds, 1))
                 + rng.normal(0, noise_sd, (seeds, IMAGES)) for sign in (1, -1))


for regime, (seed_sd, image_sd) in {"seeds weigh most": (5.0, 1.0), "images weigh most": (2.0, 8.0)}.items():
    for seeds in (2, 3, 5):
        rng = np.random.default_rng(seeds)
        wrong = sum(not (b.low <= 0 <= b.high) for b in (
            two_stage_bootstrap(*simulate(rng, seeds, seed_sd, image_sd, 12.0), n_resamples=RESAMPLES, seed=k)
            for k in range(TRIALS)))
        rate, se = wrong / TRIALS, np.sqrt(wrong / TRIALS * (1 - wrong / TRIALS) / TRIALS)
        print(f"| {regime} | {seeds} | {100 * rate:.1f}% ± {100 * se:.1f} |", flush=True)
