"""What a paired comparison of two runs can resolve, from the two-stage model the claims use.

The claims compare two runs r (the reference) and o (another row) on the same test images; each run has its own
training seeds, and every seed is scored on every image (a crossed design). The model of one per-image value:

    y[r, s, i] = mu_r + a[r, s] + b[r, i] + e[r, s, i]

a: the training seed's effect (variance sigma_a^2, its own per run); b: the image's effect, paired between the
runs (the same images), so only var(b_r - b_o) = sigma_d^2 matters; e: seed x image interaction and noise
(sigma_e^2, per run). The claims' estimate D = mean(y_r) - mean(y_o) over seeds and images then has, at n_r and
n_o seeds and I images, the sampling variance

    V(n) = sum_runs (sigma_a^2 + sigma_e^2 / I) / n  +  sigma_d^2 / I.

The two-stage bootstrap (benchmark.evaluation.statistics) that sets the claims' CI estimates it with two known
biases: resampling n seeds shrinks their spread by (n - 1) / n, and the interaction is counted in both stages
(a resampled seed mean carries it, and so does a resampled image mean). Its expected variance is

    V_boot(n) = sum_runs (n - 1) / n^2 (sigma_a^2 + sigma_e^2 / I + sigma_e^2 (I - 1) / I^2)
                + (I - 1) / I^2 (sigma_d^2 + sum_runs sigma_e^2 / n),

and the 95% CI's half-width is about z * sqrt(V_boot(n)) (z = 1.96). A claim of true difference delta is
*resolved* when the CI excludes 0 on delta's side, which happens with probability (power)

    power(n) = Phi((|delta| - z sqrt(V_boot(n))) / sqrt(V(n)))    (normal approximation; the other side ~ 0).

`seeds_needed` is the least n (the same for both runs) with power >= 0.8, at the test images' count I; None when
the images alone keep the power below it however many seeds are trained (then only more test images help).

The components are estimated from the runs themselves (two-way ANOVA, unbiased): the variance of a run's per-seed
means (ddof 1) estimates sigma_a^2 + sigma_e^2 / I; the residual mean square of its seeds x images table
estimates sigma_e^2; the variance over images of the seed-averaged difference, minus each run's sigma_e^2 / n,
estimates sigma_d^2 (clipped at 0). Assumptions: seeds independent across runs (unless paired, below), images
exchangeable, effects additive with constant variance; with three seeds a run's seed variance is itself known only
to within a factor of about 3 (a chi-square with 2 degrees of freedom), so seeds-needed is an order of magnitude,
not a promise.

Seeds paired across runs: every method draws its initial weights and its batches from the same seed, so the seed
index may carry a shared effect (two runs' seed s correlated). `seed_pairing` measures it over all runs at once:
the pooled correlation of the runs' per-seed deviations over every pair of runs with the same seeds, with a
permutation p-value (each run's seeds shuffled independently). The claims pair the seeds (one draw of seed indices
for both runs of a comparison, `two_stage_bootstrap(paired_seeds=True)`) only where that correlation is positive
at p < 0.05.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

TARGET_POWER = 0.8  # the conventional power at which a design "can resolve" a difference
MAX_SEEDS = 1000  # seeds-needed is reported as "over MAX_SEEDS" beyond this


@dataclass(frozen=True)
class Components:
    """Variance components of one comparison (reference minus other), in the squared units of the values."""

    seed: tuple[float, float]  # per run: sigma_a^2 + sigma_e^2 / I (the variance of one seed's mean)
    residual: tuple[float, float]  # per run: sigma_e^2
    image: float  # sigma_d^2: the variance over images of the paired difference's image effect
    n_images: int

    def variance(self, seeds: tuple[int, int]) -> float:
        """Sampling variance of the claims' estimate D with these numbers of seeds per run."""
        return sum(v / n for v, n in zip(self.seed, seeds)) + self.image / self.n_images

    def bootstrap_variance(self, seeds: tuple[int, int]) -> float:
        """Expected variance of the two-stage bootstrap's distribution of D (what the CI is read from)."""
        images = self.n_images
        seed_part = sum((n - 1) / n**2 * (v + e * (images - 1) / images**2)
                        for v, e, n in zip(self.seed, self.residual, seeds))
        image_part = (images - 1) / images**2 * (self.image + sum(e / n for e, n in zip(self.residual, seeds)))
        return seed_part + image_part

    def half_width(self, seeds: tuple[int, int], confidence: float = 0.95) -> float:
        """Expected half-width of the two-stage bootstrap CI: the smallest difference the design calls."""
        return float(stats.norm.ppf(0.5 + confidence / 2) * np.sqrt(self.bootstrap_variance(seeds)))

    def power(self, difference: float, seeds: tuple[int, int], confidence: float = 0.95) -> float:
        """Probability that the CI excludes 0 on the side of a true `difference`."""
        spread = np.sqrt(self.variance(seeds))
        if spread == 0:
            return float(abs(difference) > self.half_width(seeds, confidence))
        return float(stats.norm.cdf((abs(difference) - self.half_width(seeds, confidence)) / spread))

    def seeds_needed(self, difference: float, confidence: float = 0.95, target: float = TARGET_POWER) -> int | None:
        """Least seeds per run (>= 2) at which a true `difference` is resolved with `target` power at this test
        set's size; None when no number of seeds reaches it (the images' own spread is the limit)."""
        if difference == 0 or self._power_with_infinite_seeds(difference, confidence) < target:
            return None
        low, high = 2, 2
        while self.power(difference, (high, high), confidence) < target:
            low, high = high, high * 2
            if high > MAX_SEEDS:
                return MAX_SEEDS + 1
        while low < high:  # power grows with n here: the bootstrap's half-width and the true spread both shrink
            middle = (low + high) // 2
            low, high = (middle + 1, high) if self.power(difference, (middle, middle), confidence) < target \
                else (low, middle)
        return low

    def _power_with_infinite_seeds(self, difference: float, confidence: float) -> float:
        images = self.n_images
        limit = Components((0.0, 0.0), (0.0, 0.0), self.image, images)
        return limit.power(difference, (10**9, 10**9), confidence)


def components(reference: np.ndarray, other: np.ndarray, paired_seeds: bool = False) -> Components:
    """Estimate the components from two (seeds, images) tables of per-image values on the same images.

    paired_seeds: the rows are the same seeds in both runs, resampled jointly; then the bootstrap sees one table, the
    per-seed, per-image difference reference - other, and every component is that table's (carried on the
    reference's side, the other's zero): whatever a seed shares across the runs, its main effect or its per-image
    deviations, cancels in the seed term and in the residual alike."""
    tables = [np.atleast_2d(np.asarray(values, float)) for values in (reference, other)]
    n_images = tables[0].shape[1]
    if tables[1].shape[1] != n_images or n_images < 2:
        raise ValueError("both runs need the same test images, at least two")
    if min(len(t) for t in tables) < 2:
        raise ValueError("variance components need at least two seeds per run")
    if paired_seeds:
        if len(tables[0]) != len(tables[1]):
            raise ValueError("paired seeds need the same seeds in both runs")
        differences = tables[0] - tables[1]
        residual = _residual_mean_square(differences)
        image = float(differences.mean(axis=0).var(ddof=1)) - residual / len(differences)
        return Components((float(differences.mean(axis=1).var(ddof=1)), 0.0), (residual, 0.0), max(image, 0.0),
                          n_images)
    seed = tuple(float(t.mean(axis=1).var(ddof=1)) for t in tables)
    residuals = tuple(_residual_mean_square(t) for t in tables)
    difference = tables[0].mean(axis=0) - tables[1].mean(axis=0)
    image = float(difference.var(ddof=1)) - sum(e / len(t) for e, t in zip(residuals, tables))
    return Components(seed, residuals, max(image, 0.0), n_images)


def _residual_mean_square(table: np.ndarray) -> float:
    """sigma_e^2 of a seeds x images table: the two-way ANOVA residual without replication."""
    centred = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
    seeds, images = table.shape
    return float((centred**2).sum() / ((seeds - 1) * (images - 1)))


@dataclass(frozen=True)
class SeedPairing:
    """Whether the same seed index gives correlated results across runs (see the module docstring)."""

    correlation: float  # pooled over every pair of runs with the same seeds
    p_value: float  # permutation, two-sided
    pairs: int  # pairs of runs pooled
    seeds: int  # seeds per run

    def used(self, alpha: float = 0.05) -> bool:
        return self.pairs > 0 and self.correlation > 0 and self.p_value < alpha


def seed_pairing(seed_means: dict[str, dict[int, float]], n_permutations: int = 2000, seed: int = 0) -> SeedPairing:
    """Pooled correlation of per-seed deviations (a run's per-seed mean minus its mean) between every pair of runs
    trained with the same seeds, and its permutation p-value (each run's seed labels shuffled on its own)."""
    by_seeds: dict[tuple[int, ...], list[np.ndarray]] = {}
    for means in seed_means.values():
        if len(means) >= 2:
            values = np.array([means[s] for s in sorted(means)], float)
            by_seeds.setdefault(tuple(sorted(means)), []).append(values - values.mean())
    groups = [np.array(rows) for rows in by_seeds.values() if len(rows) >= 2]
    pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    if not pairs:
        return SeedPairing(float("nan"), 1.0, 0, 0)

    def pooled(tables: list[np.ndarray]) -> float:
        products = squares = 0.0
        for table in tables:
            for a, b in itertools.combinations(range(len(table)), 2):
                products += float(table[a] @ table[b])
                squares += float(np.sqrt((table[a] @ table[a]) * (table[b] @ table[b])))
        return products / squares if squares else 0.0

    observed = pooled(groups)
    rng = np.random.default_rng(seed)
    null = np.array([pooled([rng.permuted(g, axis=1) for g in groups]) for _ in range(n_permutations)])
    p_value = (np.count_nonzero(np.abs(null) >= abs(observed) - 1e-12) + 1) / (n_permutations + 1)
    return SeedPairing(float(observed), float(p_value), pairs, int(max(g.shape[1] for g in groups)))
