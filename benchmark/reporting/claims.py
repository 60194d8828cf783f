"""The paper's claims put to our runs: paired comparisons of the reference row with every other row (two-stage
bootstrap over training seeds and test images, Wilcoxon on seed-averaged values, Holm across the claims), the
comparisons table and the summary's verdict lines."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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
    low: float
    high: float
    p_value: float  # Wilcoxon signed-rank, per-image values averaged over seeds
    paper_difference: float | None
    verdict: str | None
    p_bootstrap: float = 1.0  # two-stage bootstrap, the same resamples as the CI
    holm_p: float | None = None  # Holm-adjusted p_bootstrap across the judged claims
    holm_wilcoxon_p: float | None = None  # Holm-adjusted Wilcoxon p across the judged claims

    @property
    def judged(self) -> bool:
        """A claim judged with at least two seeds per run (agrees, disagrees or inconclusive)."""
        return self.verdict in (AGREES, DISAGREES, INCONCLUSIVE)

def compare(reference: RunResult, results: list[RunResult], frames: dict[str, pd.DataFrame], column: str,
            n_resamples: int = DEFAULT_RESAMPLES, runs_dir: Path = Path("runs")) -> list[Comparison]:
    """Reference minus every other run on both test sets, per image (`column`, the selected protocol's Dice):
    two-stage bootstrap 95% CI and p (seeds and images resampled), Wilcoxon on the seed-averaged values,
    the claim verdict (not judged with fewer than two seeds in either run), and Holm across the claims."""
    paper_reference = paper_row(reference.row, reference.strong)
    comparisons = []
    for other in results:
        if other is reference:
            continue
        paper_other = paper_row(other.row, other.strong)
        for dataset in DATASETS:
            ours = seed_by_image(frames[reference.name], dataset, column, str(runs_dir / reference.name))
            theirs = seed_by_image(frames[other.name], dataset, column, str(runs_dir / other.name))
            common = ours.columns.intersection(theirs.columns).sort_values()
            if len(common) == 0:
                continue
            ours_values, theirs_values = ours[common].to_numpy(), theirs[common].to_numpy()
            a, b = ours_values.mean(axis=0), theirs_values.mean(axis=0)
            difference = 100 * (a - b)
            boot = two_stage_bootstrap(100 * ours_values, 100 * theirs_values, n_resamples=n_resamples,
                                       confidence=CONFIDENCE)
            paper_difference = verdict = None
            if paper_reference is not None and paper_other is not None:
                field = PAPER_FIELDS[(dataset, "dice")]
                paper_difference = round(getattr(paper_reference, field) - getattr(paper_other, field), 2)
                verdict = claim_verdict(paper_difference, boot.low, boot.high)
                if verdict is not None and min(len(reference.seeds), len(other.seeds)) < 2:
                    verdict = NOT_JUDGED
            comparisons.append(Comparison(other, dataset, len(common), float(difference.mean()), boot.low, boot.high,
                                          wilcoxon_p(a, b), paper_difference, verdict, boot.p_value))
    family = [c for c in comparisons if c.judged]
    for c, adjusted, adjusted_wilcoxon in zip(family, holm([c.p_bootstrap for c in family]),
                                              holm([c.p_value for c in family])):
        c.holm_p, c.holm_wilcoxon_p = adjusted, adjusted_wilcoxon
    return comparisons

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
             "whether our CI lies on the paper's side of 0 (see the summary).", "",
             "| other run | S | test set | images | seeds | mean difference | 95% CI | boot p | Holm p | Wilcoxon p "
             "| paper | claim |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        paper = "–" if c.paper_difference is None else f"{c.paper_difference:+.2f}"
        holm_p = "–" if c.holm_p is None else f"{c.holm_p:.3g}"
        lines.append(f"| {c.other.display_row} | {c.other.strong:g}% | {DATASETS[c.dataset]} | {c.n_images} | "
                     f"{len(reference.seeds)}/{len(c.other.seeds)} | {c.mean:+.2f} | [{c.low:+.2f}, {c.high:+.2f}] | "
                     f"{c.p_bootstrap:.3g} | {holm_p} | {c.p_value:.3g} | {paper} | {c.verdict or '–'} |")
    return "\n".join(lines)

def claims_lines(reference: RunResult | None, comparisons: list[Comparison],
                 reference_key: tuple[str, float], protocol: Protocol | None = None) -> list[str]:
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
    for verdict in verdicts:
        chosen = [c for c in claims if c.verdict == verdict]
        grouped: dict[str, list[str]] = {}
        for c in chosen:
            grouped.setdefault(c.other.label, []).append(
                f"{DATASETS[c.dataset]} {c.mean:+.1f} vs paper {c.paper_difference:+.1f}")
        items = "; ".join(f"{label} ({', '.join(parts)})" for label, parts in grouped.items())
        lines.append(f"  - *{verdict[0].upper() + verdict[1:]}* ({len(chosen)}): {name} minus {items}.")
    return lines
