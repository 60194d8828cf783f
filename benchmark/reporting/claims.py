"""The paper's claims put to our runs: paired comparisons of the reference row with every other row (two-stage
bootstrap over training seeds and test images, Wilcoxon on seed-averaged values, Holm across the claims), what each
comparison could resolve (benchmark.evaluation.resolving_power: the CI's half-width, the seeds the paper's
difference would need), the comparisons table and the summary's verdict lines."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.evaluation.resolving_power import MAX_SEEDS, TARGET_POWER, SeedPairing, components, seed_pairing
from benchmark.evaluation.statistics import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    NOT_JUDGED,
    claim_verdict,
    holm,
    two_stage_bootstrap,
    wilcoxon_p,
)
from benchmark.reporting.paper_results import paper_row
from benchmark.reporting.results import DATASETS, Protocol, RunResult, seed_by_image
from benchmark.reporting.tables import PAPER_FIELDS

CONFIDENCE = 0.95  # of every CI; 1 - CONFIDENCE is the family-wise level of the Holm correction
DEFAULT_RESAMPLES = 10000


@dataclass
class Comparison:
    """Reference run minus another run on one test set, in Dice points."""

    other: RunResult
    dataset: str
    n_images: int
    mean: float
    low: float  # the CI the verdict reads: seeds paired where the seed pairing is used, else independent
    high: float
    p_value: float  # Wilcoxon signed-rank, per-image values averaged over seeds
    paper_difference: float | None
    verdict: str | None
    p_bootstrap: float = 1.0  # two-stage bootstrap, the same resamples as the CI
    holm_p: float | None = None  # Holm-adjusted p_bootstrap across the judged claims
    holm_wilcoxon_p: float | None = None  # Holm-adjusted Wilcoxon p across the judged claims
    seeds_paired: bool = False  # whether (low, high) pair the two runs' seeds
    other_ci: tuple[float, float] | None = None  # the CI the other way (independent if paired, and so on); None
    #                                              when the runs' seeds differ (nothing to pair)
    seeds_needed: int | None = None  # per run, for the paper's difference at this test set's size; None: none does
    power: float | None = None  # at the seeds run, were the true difference the paper's

    @property
    def judged(self) -> bool:
        """A claim judged with at least two seeds per run (agrees, disagrees or inconclusive)."""
        return self.verdict in (AGREES, DISAGREES, INCONCLUSIVE)

    @property
    def half_width(self) -> float:
        """Half the CI's width: about the smallest difference this run could call."""
        return (self.high - self.low) / 2

    @property
    def resolvable(self) -> bool:
        """Were the true difference the paper's, the seeds run would resolve it with the target power."""
        return self.power is not None and self.power >= TARGET_POWER


def seed_tables(results: list[RunResult], frames: dict[str, pd.DataFrame], column: str,
                runs_dir: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Per test set, the (seeds x images) table of every run's `column`, as fractions (0..1)."""
    return {dataset: {r.name: seed_by_image(frames[r.name], dataset, column, str(runs_dir / r.name)) for r in results}
            for dataset in DATASETS}


def seed_pairings(tables: dict[str, dict[str, pd.DataFrame]]) -> dict[str, SeedPairing]:
    """Per test set: do the runs' same seeds give correlated results (benchmark.evaluation.resolving_power)?"""
    return {dataset: seed_pairing({name: table.mean(axis=1).to_dict() for name, table in by_run.items()
                                   if table.shape[1]})
            for dataset, by_run in tables.items()}


def compare(reference: RunResult, results: list[RunResult], tables: dict[str, dict[str, pd.DataFrame]],
            n_resamples: int = DEFAULT_RESAMPLES, pairings: dict[str, SeedPairing] | None = None) -> list[Comparison]:
    """Reference minus every other run on both test sets, per image (`tables`: `seed_tables` of the selected
    protocol's Dice): two-stage bootstrap 95% CI and p (seeds and images resampled; the seeds drawn jointly for
    both runs where `pairings` finds the seed index shared on that test set), Wilcoxon on the seed-averaged
    values, the claim verdict (not judged with fewer than two seeds in either run), what the comparison could
    resolve, and Holm across the claims."""
    pairings = pairings or {}
    paper_reference = paper_row(reference.row, reference.strong)
    comparisons = []
    for other in results:
        if other is reference:
            continue
        paper_other = paper_row(other.row, other.strong)
        for dataset in DATASETS:
            ours, theirs = tables[dataset][reference.name], tables[dataset][other.name]
            common = ours.columns.intersection(theirs.columns).sort_values()
            if len(common) == 0:
                continue
            ours_values, theirs_values = 100 * ours[common].to_numpy(), 100 * theirs[common].to_numpy()
            a, b = ours[common].to_numpy().mean(axis=0), theirs[common].to_numpy().mean(axis=0)
            same_seeds = list(ours.index) == list(theirs.index) and len(ours.index) >= 2
            pairing = pairings.get(dataset)
            paired = same_seeds and pairing is not None and pairing.used(1 - CONFIDENCE)
            boots = {flag: two_stage_bootstrap(ours_values, theirs_values, n_resamples=n_resamples,
                                               confidence=CONFIDENCE, paired_seeds=flag)
                     for flag in ((False, True) if same_seeds else (False,))}
            boot, other_way = boots[paired], boots.get(not paired)
            paper_difference = verdict = seeds_needed = power = None
            if paper_reference is not None and paper_other is not None:
                field = PAPER_FIELDS[(dataset, "dice")]
                paper_difference = round(getattr(paper_reference, field) - getattr(paper_other, field), 2)
                verdict = claim_verdict(paper_difference, boot.low, boot.high)
                if verdict is not None and min(len(reference.seeds), len(other.seeds)) < 2:
                    verdict = NOT_JUDGED
                if verdict is not None and verdict != NOT_JUDGED:
                    model = components(ours_values, theirs_values, paired_seeds=paired)
                    seeds_needed = model.seeds_needed(paper_difference, CONFIDENCE)
                    power = model.power(paper_difference, (len(ours_values), len(theirs_values)), CONFIDENCE)
            comparisons.append(Comparison(
                other, dataset, len(common), float(100 * (a - b).mean()), boot.low, boot.high, wilcoxon_p(a, b),
                paper_difference, verdict, boot.p_value, seeds_paired=paired,
                other_ci=None if other_way is None else (other_way.low, other_way.high),
                seeds_needed=seeds_needed, power=power))
    family = [c for c in comparisons if c.judged]
    for c, adjusted, adjusted_wilcoxon in zip(family, holm([c.p_bootstrap for c in family]),
                                              holm([c.p_value for c in family])):
        c.holm_p, c.holm_wilcoxon_p = adjusted, adjusted_wilcoxon
    return comparisons


def seeds_text(needed: int | None) -> str:
    """How a seeds-needed figure reads in a table cell."""
    if needed is None:
        return "none (more test images)"
    return f"over {MAX_SEEDS}" if needed > MAX_SEEDS else f"{needed}"


def needs_text(needed: int | None) -> str:
    """How a seeds-needed figure reads in a sentence."""
    if needed is None:
        return "no number of seeds would resolve it at this test-set size"
    return f"would need {'over' if needed > MAX_SEEDS else 'about'} {min(needed, MAX_SEEDS)} seeds"


def _seed_counts(reference: RunResult, comparisons: list[Comparison]) -> str:
    return "/".join(map(str, sorted({len(c.other.seeds) for c in comparisons} | {len(reference.seeds)})))

def comparisons_markdown(reference: RunResult, comparisons: list[Comparison], n_resamples: int,
                         protocol: Protocol) -> str:
    lines = [f"## Paired comparisons: {reference.label} against every other run", "",
             f"Per-image {protocol.dice_label} on the same test images ({_seed_counts(reference, comparisons)} "
             f"seeds per run); difference = {reference.label} minus the other run, in points. *95% CI* and "
             f"*boot p*: two-stage bootstrap ({n_resamples:,} resamples, seeded): each resample draws every run's "
             "training seeds with replacement, then the test images with replacement (the same images for both "
             "runs), so the CI holds both training-seed noise and test-image sampling; *boot p* is the two-sided "
             "p-value of the same resamples. *Holm p*: boot p adjusted across the paper's claims judged here "
             "(family-wise). *Wilcoxon p*: two-sided signed-rank test on the per-image values averaged over each "
             "run's seeds (image sampling only). *paper*: the same difference in the paper's tables; *claim*: "
             "whether our CI lies on the paper's side of 0 (see the summary). *resolves*: half the CI's width, about "
             "the smallest difference this run can call; *seeds for paper's*: training seeds per run at which the "
             f"paper's difference would be resolved with {TARGET_POWER:.0%} power at this test set's size (README "
             "\"Statistics\"). *other CI*: the CI with the seeds resampled the other way (paired if the claims "
             "resample them independently, and vice versa; see the summary's seed pairing).", "",
             "| other run | S | test set | images | seeds | mean difference | 95% CI | boot p | Holm p | Wilcoxon p "
             "| paper | claim | resolves | seeds for paper's | other CI |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        paper = "–" if c.paper_difference is None else f"{c.paper_difference:+.2f}"
        holm_p = "–" if c.holm_p is None else f"{c.holm_p:.3g}"
        needed = seeds_text(c.seeds_needed) if c.judged else "–"
        other_ci = "–" if c.other_ci is None else f"[{c.other_ci[0]:+.2f}, {c.other_ci[1]:+.2f}]"
        lines.append(f"| {c.other.display_row} | {c.other.strong:g}% | {DATASETS[c.dataset]} | {c.n_images} | "
                     f"{len(reference.seeds)}/{len(c.other.seeds)} | {c.mean:+.2f} | [{c.low:+.2f}, {c.high:+.2f}] | "
                     f"{c.p_bootstrap:.3g} | {holm_p} | {c.p_value:.3g} | {paper} | {c.verdict or '–'} | "
                     f"±{c.half_width:.2f} | {needed} | {other_ci} |")
    return "\n".join(lines)

def claims_lines(reference: RunResult | None, comparisons: list[Comparison],
                 reference_key: tuple[str, float], protocol: Protocol | None = None,
                 pairings: dict[str, SeedPairing] | None = None) -> list[str]:
    """The summary's verdicts on the paper's claims, with the rule they follow and the Holm count."""
    name = f"{reference_key[0]} {reference_key[1]:g}%"
    metric = protocol.dice_label if protocol else "Dice"
    rule = (f"a *claim* is the sign of the paper's Dice difference between {name} and another row of its "
            "Table 1 or 2, on CBIS-DDSM and on INbreast separately; our run **agrees** when the two-stage bootstrap "
            f"95% CI of the same difference (our per-image {metric}, same test images, training seeds and test "
            "images resampled) lies entirely on the paper's side of 0, **disagrees** when it lies entirely on the "
            "other side, and is **inconclusive** when it contains 0; with fewer than two seeds in either run the "
            f"claim is **{NOT_JUDGED}**: one training seed cannot tell a method difference from seed noise.")
    if reference is None:
        return [f"- **Paper's claims:** not assessed: the reference run {name} (params `report.reference_row`, "
                "`report.reference_strong`) is not configured. Rule: " + rule]
    claims = [c for c in comparisons if c.verdict is not None]
    if not claims:
        return ["- **Paper's claims:** none assessable: no other configured run has a number in the paper's "
                "tables. Rule: " + rule]
    verdicts = [v for v in (AGREES, DISAGREES, INCONCLUSIVE, NOT_JUDGED) if any(c.verdict == v for c in claims)]
    if verdicts == [NOT_JUDGED]:
        return [f"- **Paper's claims** ({len(claims)}): all {NOT_JUDGED}: each involves a run with a single "
                "training seed (set `seeds` to two or more, e.g. the default [0, 1, 2]). Rule: " + rule]
    lines = [f"- **Paper's claims** ({len(claims)}): " + ", ".join(
        f"{sum(c.verdict == v for c in claims)} {v}" for v in verdicts) + ". Rule: " + rule]
    family = [c for c in claims if c.judged]
    alpha = 1 - CONFIDENCE
    survive = {v: sum(c.verdict == v and c.holm_p < alpha for c in family) for v in (AGREES, DISAGREES)}
    wilcoxon = sum(c.holm_wilcoxon_p < alpha for c in family)
    lines.append(f"  - *Holm correction* across the {len(family)} judged claims (family-wise {alpha:.0%}, on the "
                 f"two-stage bootstrap p-values): {survive[AGREES] + survive[DISAGREES]} of {len(family)} survive "
                 f"({survive[AGREES]} of {sum(c.verdict == AGREES for c in family)} agreements, {survive[DISAGREES]} "
                 f"of {sum(c.verdict == DISAGREES for c in family)} disagreements). Wilcoxon on seed-averaged "
                 f"per-image values, Holm-adjusted: {wilcoxon} of {len(family)} below {alpha:g}.")
    lines += resolving_lines(family) + pairing_lines(pairings or {})
    for verdict in verdicts:
        chosen = [c for c in claims if c.verdict == verdict]
        grouped: dict[str, list[str]] = {}
        for c in chosen:
            needs = f": {needs_text(c.seeds_needed)}" if verdict == INCONCLUSIVE else ""
            grouped.setdefault(c.other.label, []).append(
                f"{DATASETS[c.dataset]} {c.mean:+.1f} vs paper {c.paper_difference:+.1f}{needs}")
        items = "; ".join(f"{label} ({', '.join(parts)})" for label, parts in grouped.items())
        lines.append(f"  - *{verdict[0].upper() + verdict[1:]}* ({len(chosen)}): {name} minus {items}.")
    return lines


def resolving_lines(family: list[Comparison]) -> list[str]:
    """What the run could resolve: claims resolvable with the seeds run, and what the inconclusive ones would need."""
    if not family:
        return []
    resolvable = sum(c.resolvable for c in family)
    widths = sorted(c.half_width for c in family)
    inconclusive = [c for c in family if c.verdict == INCONCLUSIVE]
    text = (f"  - *Resolving power* (README \"Statistics\"): the CIs' half-widths, about the smallest difference each "
            f"comparison can call, run from {widths[0]:.1f} to {widths[-1]:.1f} points (median "
            f"{float(np.median(widths)):.1f}); were the true differences the paper's, {resolvable} of {len(family)} "
            f"claims would be resolved with {TARGET_POWER:.0%} power by the seeds run.")
    if inconclusive:
        finite = [c.seeds_needed for c in inconclusive if c.seeds_needed is not None]
        never = len(inconclusive) - len(finite)
        if finite:
            which = (f"Of the inconclusive claims ({len(inconclusive)}), the {len(finite)} that more seeds could "
                     "resolve" if never else f"The inconclusive claims ({len(inconclusive)})")
            text += (f" {which} would need a median of {seeds_text(int(np.ceil(np.median(finite))))} training seeds "
                     "per run to resolve the paper's difference at this test-set size"
                     + (f"; for the other {never} no number of seeds would: the test images' own spread is the "
                        "limit there" if never else "") + ".")
        else:
            text += (f" No number of seeds would resolve the paper's difference for the inconclusive claims "
                     f"({len(inconclusive)}) at this test-set size: the test images' own spread is the limit.")
    return [text]


def pairing_lines(pairings: dict[str, SeedPairing]) -> list[str]:
    """Whether the claims pair the two runs' seeds, with the measurement behind it."""
    if not pairings or all(p.pairs == 0 for p in pairings.values()):
        return []
    alpha = 1 - CONFIDENCE
    parts = []
    for dataset, pairing in pairings.items():
        if pairing.pairs:
            parts.append(f"{DATASETS[dataset]} r = {pairing.correlation:+.2f} (permutation p = "
                         f"{pairing.p_value:.3g}, {pairing.pairs} pairs of runs): seeds "
                         + ("**paired** in the claims between runs trained with the same seeds" if pairing.used(alpha)
                            else "resampled independently"))
    return [f"  - *Seed pairing*: every method starts from the same seed's initial encoder weights and sampler "
            "stream, so seed s of two runs may share an effect. Measured as the pooled correlation of the runs' "
            "per-seed deviations from their mean over every pair of runs with the same seeds; the claims draw "
            f"both runs' seeds jointly where it is positive at p < {alpha:g}: " + "; ".join(parts)
            + ". The comparisons table shows each CI both ways."]
