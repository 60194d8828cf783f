"""A study's race across conditions: per condition the ranking of its entries on held-out Dice, how far two
conditions' rankings agree (Kendall's tau with a bootstrap interval), and the paper's Table-1 claims
(the reference entry minus every other) judged at each condition.

Inputs are per-image held-out Dice matrices, (training seeds x fresh images), one per (condition, entry).
The bootstrap is the report's two-stage one (benchmark.evaluation.statistics): every entry's seeds are
drawn with replacement, then the fresh images, the same draw for every entry of a condition (the images
are shared: paired), independently per condition (they are other images at another size).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from benchmark.evaluation.statistics import NOT_JUDGED, claim_verdict, mean_std, two_stage_bootstrap
from benchmark.reporting.paper_results import paper_row

CONFIDENCE = 0.95
RESAMPLES = 2000  # of the tau interval (the claims use the report's 10,000)
CLAIM_RESAMPLES = 10000


@dataclass(frozen=True)
class Entry:
    name: str  # the study entry (a run of params.yaml)
    row: str  # the paper's row
    strong: float  # strong-label percentage

    @property
    def label(self) -> str:
        return f"{self.row} {self.strong:g}%"


def ranking(matrices: dict[str, np.ndarray]) -> list[tuple[str, float, float, int]]:
    """(entry, mean Dice %, std over seeds, seeds), best first; a seed's Dice is its mean over the images (the
    matrices hold per-image Dice in 0..1, as the score files do)."""
    rows = []
    for name, matrix in matrices.items():
        mean, std, n = mean_std(100 * matrix.mean(axis=1))
        rows.append((name, mean, std, n))
    return sorted(rows, key=lambda row: -row[1])


def _resampled_means(matrices: dict[str, np.ndarray], names: list[str], rng: np.random.Generator) -> np.ndarray:
    n_images = next(iter(matrices.values())).shape[1]
    images = rng.integers(0, n_images, n_images)
    means = []
    for name in names:
        matrix = matrices[name]
        seeds = rng.integers(0, len(matrix), len(matrix))
        means.append(matrix[np.ix_(seeds, images)].mean())
    return np.asarray(means)


def kendall_tau(first: dict[str, np.ndarray], second: dict[str, np.ndarray], resamples: int = RESAMPLES,
                seed: int = 0) -> tuple[float, float, float, int]:
    """(tau of the two rankings' mean Dice, interval low, high, entries) over the entries both conditions have."""
    names = sorted(set(first) & set(second))
    if len(names) < 3:
        raise ValueError("Kendall's tau needs at least three entries in both conditions")
    point = stats.kendalltau([first[n].mean() for n in names], [second[n].mean() for n in names]).statistic
    rng = np.random.default_rng(seed)
    taus = [stats.kendalltau(_resampled_means(first, names, rng), _resampled_means(second, names, rng)).statistic
            for _ in range(resamples)]
    tail = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(taus, [tail, 1 - tail])
    return float(point), float(low), float(high), len(names)


@dataclass(frozen=True)
class Claim:
    other: Entry
    mean: float  # reference minus other, Dice points
    low: float
    high: float
    paper: float | None  # the same difference in the paper's Table 1 (CBIS Dice)
    verdict: str | None


def claims(reference: Entry, matrices: dict[str, np.ndarray], entries: dict[str, Entry]) -> list[Claim]:
    """The reference entry minus every other entry of one condition, two-stage bootstrap CI, the paper's sign."""
    ours = paper_row(reference.row, reference.strong)
    found = []
    for name, matrix in matrices.items():
        if name == reference.name or reference.name not in matrices:
            continue
        other = entries[name]
        theirs = paper_row(other.row, other.strong)
        boot = two_stage_bootstrap(100 * matrices[reference.name], 100 * matrix, n_resamples=CLAIM_RESAMPLES,
                                   confidence=CONFIDENCE)
        paper = round(ours.cbis_dice - theirs.cbis_dice, 2) if ours is not None and theirs is not None else None
        verdict = claim_verdict(paper, boot.low, boot.high) if paper is not None else None
        if verdict is not None and min(len(matrices[reference.name]), len(matrix)) < 2:
            verdict = NOT_JUDGED
        mean = float(100 * (matrices[reference.name].mean() - matrix.mean()))
        found.append(Claim(other, mean, boot.low, boot.high, paper, verdict))
    return found
