"""DVC stage `report`: render reports/tables.md and the report figures from the runs' outputs.

    python -m benchmark.report [--params params.yaml] [--runs runs] [--prepared data/prepared]
                               [--out reports/tables.md]

Every configured run is one (row, S) entry of the tables and holds all its seeds in runs/<run>/:
metrics.json (per-seed means), per_image.csv, train_info.json (with each seed's provenance),
train_log.csv and examples.npz. tables.md opens with a summary (data, hardware, time, seeds, the
code the runs were trained at, which of the paper's claims we agree or disagree with and how
many survive a Holm correction), then the paper's Table 1 and Table 2 with our mean ± std over
seeds (n) under both evaluation protocols, the one `evaluate.protocol` selects beside the paper's
numbers, the runs that match no paper row, the paired comparisons of the reference row with every
other row (two-stage bootstrap over training seeds and test images, Wilcoxon on seed-averaged
per-image scores), the figures (written to figures/ beside tables.md by benchmark/figures.py) and
the list of runs. Nothing here is random except seeded choices: identical inputs give
byte-identical outputs.

Nothing stale is reported: a run is refused when its params.yaml entry (method, strong fraction,
options, seeds) differs from what train_info.json says it was trained with, when metrics.json
evaluated other weights than train_info.json lists, or when per_image.csv or examples.npz is not the
file whose sha256 metrics.json recorded; each row's method, fraction and options are read from
train_info.json. A run whose last-epoch training loss is not below its first epoch's (in any seed) is
marked † in the tables and named in the summary and the list of runs.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmark import figures
from benchmark.artifacts import atomic_write_text, file_sha256, read_json
from benchmark.cli import MissingOutputError, run_cli
from benchmark.config import all_runs, check_trained_as, load_params
from benchmark.data import PreparedData, load_prepared
from benchmark.paper_results import STRONG_ONLY, TABLES, PaperRow, paper_row
from benchmark.statistics import (AGREES, DISAGREES, INCONCLUSIVE, NOT_JUDGED, claim_verdict, holm, mean_std,
                                  two_stage_bootstrap, wilcoxon_p)

DATASETS = {"cbis": "CBIS", "inbreast": "INbreast"}
METRIC_COLUMNS = [("cbis", "dice"), ("cbis", "smeasure"), ("inbreast", "dice"), ("inbreast", "smeasure")]
PAPER_FIELDS = {("cbis", "dice"): "cbis_dice", ("cbis", "smeasure"): "cbis_sm",
                ("inbreast", "dice"): "inbreast_dice", ("inbreast", "smeasure"): "inbreast_sm"}
CONFIDENCE = 0.95  # of every CI; 1 - CONFIDENCE is the family-wise level of the Holm correction
FIGURE_FILES = ["fig1_labels.png", "fig3_predictions.png", "label_efficiency.png", "dice_distributions.png",
                "training_curves.png"]
DEFAULT_RESAMPLES = 10000
LOSS_MARK = "†"
LOSS_NOTE = (f"{LOSS_MARK} training loss did not decrease: in at least one seed the last epoch's mean total loss is "
             "not below the first epoch's (see Runs); treat this row as a failed training, not a result.")


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol of benchmark/evaluate.py: its metrics.json / per_image.csv keys and column names."""

    name: str
    dice: str
    smeasure: str
    dice_label: str
    smeasure_label: str

    def key(self, metric: str) -> str:
        return self.dice if metric == "dice" else self.smeasure

    def label(self, metric: str) -> str:
        return self.dice_label if metric == "dice" else self.smeasure_label


def protocols(threshold: float) -> dict[str, Protocol]:
    return {"threshold": Protocol("threshold", "dice", "smeasure", f"Dice@{threshold:g}", "S_m"),
            "authors": Protocol("authors", "authors_mdice", "authors_smeasure", "mDice (authors' eval)",
                                "S_m (authors' eval)")}


def selected_protocols(params: dict[str, Any], results: list["RunResult"]) -> tuple[Protocol, Protocol]:
    """(the protocol `evaluate.protocol` sets beside the paper's numbers, the other one)."""
    available = protocols(thresholds(results)[0])
    name = params["evaluate"]["protocol"]  # one of `protocols`: the schema (benchmark/config.py) checked it
    other = next(protocol for key, protocol in available.items() if key != name)
    return available[name], other
LOCK_FILE = Path("requirements.lock")  # the exact environment (README "Quickstart"); the summary compares with it


@dataclass
class RunResult:
    """One configured run with everything the report reads from runs/<run>/."""

    name: str
    method: str
    row: str
    strong: float  # S, % of training images with a mask
    weak: float  # W, % with a box only (0 for methods that use no weak labels)
    seeds: list[str]  # as keys of metrics.json "per_seed", sorted numerically
    metrics: dict[str, Any]
    info: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # the method's options as trained
    loss_not_decreasing: list[str] = field(default_factory=list)  # per seed: why it is marked
    label: str = ""  # "<row> <S>%", plus the run name when two runs share (row, S)
    shared: bool = False  # another configured run has the same (row, S)

    @property
    def display_row(self) -> str:
        """The row name in tables: with the run name when another run has the same (row, S)."""
        return f"{self.row} [{self.name}]" if self.shared else self.row

    def values(self, dataset: str, metric: str) -> list[float]:
        """The metric (%) of every seed."""
        return [float(self.metrics["per_seed"][seed][dataset][metric]) for seed in self.seeds]

    @property
    def train_seconds(self) -> float:
        """Wall time of the train stage (seeds side by side when it had seed workers); the sum over seeds for
        runs trained before train_wall_seconds was recorded."""
        return float(self.info.get("train_wall_seconds", self.info["train_seconds"]))

    @property
    def seconds(self) -> float:
        return self.train_seconds + float(self.metrics["eval_seconds"])

    def provenance(self) -> list[dict[str, Any]]:
        return [(self.info.get("seeds") or {}).get(seed, {}).get("provenance") or {} for seed in self.seeds]


def _commit(provenance: dict[str, Any]) -> str | None:
    """Short hash of the commit a seed was trained at; None when unknown (e.g. not a git checkout)."""
    commit = str(provenance.get("git_commit") or "")
    return commit[:10] if re.fullmatch(r"[0-9a-f]{7,40}", commit) else None


def _require(payload: dict[str, Any], keys: list[str], path: Path) -> None:
    missing = [key for key in keys if key not in payload]
    if missing:
        raise KeyError(f"{path}: missing {', '.join(missing)}; it was written by an older stage, "
                       "run `dvc repro` to re-evaluate.")


def _check_evaluated_models(metrics: dict[str, Any], info: dict[str, Any], folder: Path) -> None:
    """metrics.json must describe the weights train_info.json lists: a run re-trained after its evaluation
    (or half-way through) would otherwise be reported with another model's numbers."""
    trained = {seed: entry.get("model_sha256") for seed, entry in info["seeds"].items()}
    if metrics.get("evaluated_models") != trained:
        raise ValueError(f"{folder / 'metrics.json'} evaluates other weights than {folder / 'train_info.json'} "
                         "lists (the run was re-trained after its evaluation); run `dvc repro` to re-evaluate it.")


def _check_output_hashes(metrics: dict[str, Any], folder: Path) -> None:
    """per_image.csv and examples.npz must be the files metrics.json was computed with (not edited, not copied
    from another run); a missing examples.npz only leaves Fig. 3 without that run."""
    for name, recorded in metrics["outputs"].items():
        path = folder / name
        if not path.is_file():
            if name == "examples.npz":
                continue
            raise MissingOutputError(f"{path}: missing. Run the stage that writes it (`dvc repro`).")
        if file_sha256(path) != recorded:
            raise ValueError(f"{path}: not the file {folder / 'metrics.json'} was computed with (its sha256 differs "
                             "from the one recorded there: it was changed or copied from another run since); "
                             f"re-evaluate the run: dvc repro evaluate@{folder.name}")


def loss_not_decreasing(log: pd.DataFrame) -> list[str]:
    """Per seed of a train_log.csv: a note when its last epoch's mean total loss is not below its first's."""
    notes = []
    for seed, frame in log.sort_values("epoch").groupby("seed", sort=True):
        first, last = frame.iloc[0], frame.iloc[-1]
        if len(frame) > 1 and not last["total"] < first["total"]:
            notes.append(f"seed {seed}: training loss did not decrease (epoch {int(first['epoch'])}: "
                         f"{first['total']:.4g}, epoch {int(last['epoch'])}: {last['total']:.4g})")
    return notes


def collect(params: dict[str, Any], runs_dir: Path) -> list[RunResult]:
    """Every configured run, in params.yaml order; refuses any run whose outputs are stale (see the docstring)."""
    results = []
    for spec in all_runs(params):
        folder = runs_dir / spec.name
        metrics, info = read_json(folder / "metrics.json"), read_json(folder / "train_info.json")
        _require(metrics, ["cbis", "inbreast", "per_seed", "resolution", "eval_seconds", "outputs"],
                 folder / "metrics.json")
        _require(metrics["cbis"], ["authors_mdice", "authors_smeasure"], folder / "metrics.json")
        _require(info, ["train_seconds", "uses_weak", "hardware", "encoder", "seeds", "method", "strong_fraction",
                        "options"], folder / "train_info.json")
        check_trained_as(spec, info, folder / "train_info.json")
        _check_evaluated_models(metrics, info, folder)
        _check_output_hashes(metrics, folder)
        seeds = sorted(metrics["per_seed"], key=lambda seed: (int(seed) if str(seed).isdigit() else 0, str(seed)))
        if not seeds:
            raise ValueError(f"{folder / 'metrics.json'}: per_seed is empty")
        strong = round(100.0 * float(info["strong_fraction"]), 2)
        log_path = folder / "train_log.csv"
        results.append(RunResult(
            name=spec.name, method=str(info["method"]), row=spec.row, strong=strong,
            weak=round(100 - strong, 2) if info["uses_weak"] else 0.0, seeds=seeds, metrics=metrics, info=info,
            options=dict(info["options"]),
            loss_not_decreasing=loss_not_decreasing(pd.read_csv(log_path)) if log_path.is_file() else []))
    keys = Counter((result.row, result.strong) for result in results)
    for result in results:
        result.shared = keys[(result.row, result.strong)] > 1
        result.label = f"{result.row} {result.strong:g}%" + (f" [{result.name}]" if result.shared else "")
    return results


def cell(values: list[float]) -> str:
    """One table cell: the value for one seed, mean ± std (n=k) for several."""
    if not values:
        return "–"
    mean, std, n = mean_std(values)
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f} (n={n})"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def table_markdown(entries: list[RunResult], paper: dict[tuple[str, float], PaperRow] | None,
                   selected: Protocol, other: Protocol) -> str:
    """One row per run; per test set and metric: the other protocol, the selected one, then the paper's number."""
    header = ["Methods", "S", "W"]
    for dataset, metric in METRIC_COLUMNS:
        header += [f"{DATASETS[dataset]} {other.label(metric)}", f"{DATASETS[dataset]} {selected.label(metric)}"]
        header += ["paper"] if paper else []
    header += ["seeds", "time (train + eval, all seeds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in entries:
        numbers = paper_row(result.row, result.strong) if paper else None
        cells = [result.display_row + (f" {LOSS_MARK}" if result.loss_not_decreasing else ""), f"{result.strong:g}%",
                 f"{result.weak:g}%"]
        for dataset, metric in METRIC_COLUMNS:
            cells += [cell(result.values(dataset, protocol.key(metric))) for protocol in (other, selected)]
            if paper:
                cells.append(f"{getattr(numbers, PAPER_FIELDS[(dataset, metric)]):.2f}")
        cells += [str(len(result.seeds)), _minutes(result.seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(result.loss_not_decreasing for result in entries):
        lines += ["", LOSS_NOTE]
    return "\n".join(lines)


def per_image_scores(runs_dir: Path, result: RunResult, columns: list[str]) -> pd.DataFrame:
    """runs/<run>/per_image.csv: one row per seed and test image, with the given metric columns (0..1)."""
    path = runs_dir / result.name / "per_image.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing. Run the stage that writes it (`dvc repro`).")
    frame = pd.read_csv(path, dtype={"image_id": str, "dataset": str})
    missing = [column for column in ("seed", "image_id", "dataset", *columns) if column not in frame.columns]
    if missing:
        raise KeyError(f"{path}: missing columns {', '.join(missing)}; run `dvc repro` to re-evaluate.")
    return frame


def seed_by_image(frame: pd.DataFrame, dataset: str, column: str, source: str) -> pd.DataFrame:
    """(seeds x images) matrix of one metric on one test set: every seed must score every image."""
    table = frame[frame["dataset"] == dataset].pivot_table(index="seed", columns="image_id", values=column,
                                                            aggfunc="mean", dropna=False)
    if table.isna().any().any():
        raise ValueError(f"{source}: the seeds of this run were scored on different {DATASETS[dataset]} test "
                         "images; run `dvc repro` to re-evaluate.")
    return table.sort_index(axis=0).sort_index(axis=1)


def seed_averaged(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per-image `column` (0..1) averaged over the run's seeds: columns dataset, image_id, <column>, n_seeds."""
    pooled = frame.groupby(["dataset", "image_id"], sort=True)[column].agg(["mean", "size"]).reset_index()
    return pooled.rename(columns={"mean": column, "size": "n_seeds"})


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


def thresholds(results: list[RunResult]) -> list[float]:
    """The probability thresholds the runs were evaluated at (metrics.json; 0.5 where not recorded)."""
    return sorted({float(result.metrics.get("threshold", 0.5)) for result in results})


def _seeds_line(results: list[RunResult]) -> str:
    sets = Counter(tuple(result.seeds) for result in results)
    if len(sets) == 1:
        (seeds, _), = sets.items()
        if len(seeds) == 1:
            return (f"- **Seeds:** one seed ({seeds[0]}) per run: every cell is a single value, no spread over seeds "
                    "is shown; the paired CIs reflect test-image sampling only.")
        return (f"- **Seeds:** {len(seeds)} per run ({', '.join(seeds)}): every cell is mean ± std over seeds "
                f"(std with ddof=1, n = number of seeds).")
    listed = "; ".join(f"{', '.join(seeds)} ({count} runs)" for seeds, count in sorted(sets.items()))
    return f"- **Seeds:** differ between runs: {listed}. Cells are mean ± std (n) over each run's seeds."


def _code_line(results: list[RunResult]) -> str:
    """Which commit(s) trained the runs and whether the working tree was dirty, from every seed's provenance."""
    commits: dict[str, set[str]] = {}
    dirty, unknown, unknown_state, trainings = [], [], [], 0
    for result in results:
        for seed, provenance in zip(result.seeds, result.provenance()):
            trainings += 1
            commit = _commit(provenance)
            if commit is None:
                unknown.append(f"{result.name} (seed {seed})")
                continue
            commits.setdefault(commit, set()).add(result.name)
            if provenance.get("git_dirty") is None:
                unknown_state.append(f"{result.name} (seed {seed})")
            elif provenance.get("git_dirty"):
                dirty.append(f"{result.name} (seed {seed})")
    if not commits:
        return "- **Code:** unknown (no git provenance in train_info.json)."
    if len(commits) == 1:
        text = f"- **Code:** every training ran at commit `{next(iter(commits))}`"
    else:
        text = "- **Code:** trainings ran at " + ", ".join(
            f"`{commit}` ({len(runs)} runs)" for commit, runs in sorted(commits.items()))
    if dirty:
        text += f"; working tree **dirty** in {len(dirty)} of {trainings} trainings: {', '.join(dirty)}"
    else:
        text += "; working tree clean in every training" + (" whose state is known" if unknown_state else "")
    if unknown_state:
        text += f"; working-tree state unknown for {', '.join(unknown_state)}"
    if unknown:
        text += f"; commit unknown for {', '.join(unknown)}"
    return text + "."


def locked_versions(lock: Path) -> dict[str, str]:
    """`name==version` pins of a requirements lock (names normalised as in PEP 503), {} when there is none."""
    if not lock.is_file():
        return {}
    pins = (re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line) for line in lock.read_text().splitlines())
    return {re.sub(r"[-_.]+", "-", pin.group(1)).lower(): pin.group(2) for pin in pins if pin}


def _software_line(results: list[RunResult], lock: Path = LOCK_FILE) -> str | None:
    versions: dict[str, set[str]] = {}
    for result in results:
        for provenance in result.provenance():
            for package, version in (provenance.get("packages") or {}).items():
                versions.setdefault(str(package), set()).add(str(version))
    if not versions:
        return None
    same = [f"{package} {next(iter(v))}" for package, v in sorted(versions.items()) if len(v) == 1]
    differ = [f"{package} ({', '.join(sorted(v))})" for package, v in sorted(versions.items()) if len(v) > 1]
    text = "- **Software:** " + ", ".join(same) + (f"; versions differ between trainings: {', '.join(differ)}"
                                                   if differ else "")
    pins = locked_versions(lock)
    if not pins:
        return text + f"; no `{lock.name}` to compare them with."
    # the recorded versions are importlib.metadata's (torch 2.14.1 for the +cu130 build too)
    recorded = {re.sub(r"[-_.]+", "-", package).lower(): v for package, v in versions.items() if package != "python"}
    off = [f"{package} {', '.join(sorted(v))} (lock {pins.get(package, 'absent')})"
           for package, v in sorted(recorded.items()) if v != {pins.get(package)}]
    if off:
        return text + f"; **not the locked environment**: {', '.join(off)} differ from `{lock.name}`."
    return text + f"; every recorded package version matches `{lock.name}`."


def _split_clause(split: dict[str, Any] | None) -> str:
    """The split in use and how many CBIS test images have a view of the same breast in training."""
    if not split:  # data prepared before the split was recorded
        return ""
    text = (f" Split: {split['kind']}; {split['test_images_with_breast_in_train']} of {split['test_images']} CBIS "
            "test images have a view of the same breast in training")
    if not str(split.get("breast", "")).startswith("patient"):
        text += " (no patient metadata: every image counts as its own breast)"
    return text + "."


def _protocol_lines(results: list[RunResult], frames: dict[str, pd.DataFrame], selected: Protocol,
                    other: Protocol) -> list[str]:
    """Both evaluation protocols, which one sits beside the paper's numbers and why, and what the authors'
    per-image min-max normalisation does to an empty prediction (measured on these runs)."""
    threshold = thresholds(results)[0]
    empty_truth = max(int(result.metrics[d].get("n_empty_truth", 0)) for result in results for d in DATASETS)
    pooled = pd.concat([frames[result.name] for result in results], ignore_index=True)
    empty = pooled[(pooled["pred_area"] == 0) & (pooled["mask_area"] > 0)] if "pred_area" in pooled else pooled[:0]
    why = {
        "threshold": f"**{selected.dice_label} is set beside the paper's numbers** (`evaluate.protocol: threshold`): "
                     "the binarised mask a reader would see, and this benchmark's declared headline "
                     "(shared/reference/evaluation.md). The ISBI paper does not say which Dice it reports; the "
                     f"evaluation code its authors' group publishes computes the {other.dice_label} column, which "
                     "`evaluate.protocol: authors` sets beside the paper's numbers instead.",
        "authors": f"**{selected.dice_label} is set beside the paper's numbers** (`evaluate.protocol: authors`): "
                   "the ISBI paper does not say which Dice it reports, and the evaluation code its authors' group "
                   "publishes (SAM2-UNet test.py + eval.py) computes this mDice, so it is the most likely "
                   f"like-for-like number; {other.dice_label} (the binarised mask) is the column before it.",
    }[selected.name]
    lines = [
        f"- **Evaluation:** two protocols, both in every table, in % per image then averaged, at the "
        f"{results[0].metrics['resolution']} resolution on the final-epoch weights. *Dice@{threshold:g}*: "
        f"sigmoid(logit) > {threshold:g}, Dice of the mask; *S_m*: S-measure (alpha 0.5, pysodmetrics) of the "
        "probability map. *mDice (authors' eval)* and *S_m (authors' eval)*: the authors' published protocol, "
        "sigmoid, bilinear resize to the ground truth's size, a second sigmoid, per-image min-max normalisation "
        "to 0-255 uint8, then pysodmetrics' Dice at each of 256 thresholds averaged (FmeasureV2, DICEHandler) "
        f"and the S-measure of the same map. {why} The paired comparisons and claims use "
        f"{selected.dice_label}.",
        "- **Empty predictions under the authors' protocol:** the per-image min-max normalisation discards the "
        "map's calibration: a nearly empty prediction (every probability small, but not all equal) is stretched "
        "to the full 0-255 range, so its least unlikely pixels count as foreground at most thresholds; only an "
        "exactly constant map (e.g. every logit so negative that the second sigmoid gives exactly 0.5 in float32) "
        "comes out all 0 and scores mDice ≈ 0. "
        + (f"Here {len(empty)} of {len(pooled)} (run, seed, image) predictions are empty at {threshold:g} "
           f"(Dice@{threshold:g} = 0) on an image with a mass; their mean mDice (authors' eval) is "
           f"{100 * empty['authors_mdice'].mean():.1f}%." if len(empty) else
           f"Here no prediction is empty at {threshold:g} on an image with a mass."),
        f"- **Empty ground truth:** {empty_truth} test image(s)"
        + (f" (rule: Dice@{threshold:g} = 1 when the prediction is empty too, counted in the mean; mDice (authors' "
           "eval) scores 0 at every threshold, as pysodmetrics counts 0/0 as 0)." if empty_truth else "."),
    ]
    return lines


def summary_lines(params: dict[str, Any], results: list[RunResult], prepare_report: dict[str, Any],
                  claims: list[str], protocol_lines: list[str]) -> list[str]:
    domains = prepare_report.get("domains", {})
    source = params["data"].get("source", prepare_report.get("source", "synthetic"))
    data_line = (
        "the **synthetic stand-in** (procedural CBIS-like and INbreast-like mammograms, benchmark/synthetic.py), "
        "not the real datasets: compare orderings, not absolute values, with the paper"
        if source == "synthetic" else "the real **CBIS-DDSM** (intra-domain) and **INbreast** (cross-domain) datasets"
    )
    cbis, inbreast = domains.get("cbis", {}), domains.get("inbreast", {})
    first = results[0].info
    weights = first.get("encoder_weights") or "random initialisation"
    hardware = "; ".join(sorted({str(result.info["hardware"]) for result in results}))
    precision = sorted({str(result.info["precision"]) for result in results if result.info.get("precision")})
    total = sum(result.seconds for result in results)
    trainings = sum(len(result.seeds) for result in results)
    lines = [
        "## Summary",
        "",
        f"- **Data:** {data_line}. CBIS: {cbis.get('train', '?')} train / {cbis.get('test', '?')} test images; "
        f"INbreast: {inbreast.get('test', '?')} test images; prepared at {first.get('image_size', '?')} x "
        f"{first.get('image_size', '?')} px." + _split_clause(prepare_report.get("split")),
        f"- **Network:** U-Net with a {first['encoder']} encoder ({weights}); {first.get('epochs', '?')} epochs x "
        f"{first.get('steps_per_epoch', '?')} steps, batch {first.get('batch_size', '?')}"
        + (f", {'/'.join(precision)} precision" if precision else "")
        + ". The paper: ResNet-34, ImageNet weights, 50 epochs, 352 x 352 px.",
        f"- **Hardware:** {hardware}. **Total time** of the {len(results)} runs ({trainings} trainings, train + "
        f"evaluate): {_minutes(total)}.",
        _seeds_line(results),
        _code_line(results),
    ]
    flagged = [result.label for result in results if result.loss_not_decreasing]
    if flagged:
        lines.append(f"- **Training loss did not decrease** ({LOSS_MARK} in the tables) in: {', '.join(flagged)}: the "
                     "last epoch's mean total loss is not below the first epoch's in at least one seed.")
    software = _software_line(results)
    if software:
        lines.append(software)
    return lines + [*protocol_lines, *claims, ""]


def _figure_inputs_per_image(results: list[RunResult], frames: dict[str, pd.DataFrame], column: str) -> pd.DataFrame:
    """Per-image values (%) of `column`, seeds averaged per image: columns label, dataset, dice."""
    pooled = [seed_averaged(frames[result.name], column) for result in results]
    return pd.concat([frame.assign(label=result.label, dice=100 * frame[column]) for result, frame in
                      zip(results, pooled)], ignore_index=True)[["label", "dataset", "dice"]]


def _efficiency_inputs(results: list[RunResult], row: str, key: str = "dice") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean ± std over seeds of the metric `key` for the runs of `row` (points) and Strong-Only (lines)."""
    points, references, seen = [], [], set()
    for result in results:
        for dataset in DATASETS:
            mean, std, n = mean_std(result.values(dataset, key))
            if result.row == row and (result.strong, dataset) not in seen:
                seen.add((result.strong, dataset))  # two runs of one (row, S): the first configured is drawn
                points.append({"S": result.strong, "dataset": dataset, "mean": mean, "std": std, "n": n})
            elif result.row == STRONG_ONLY:
                references.append({"label": result.label, "dataset": dataset, "mean": mean, "std": std, "n": n})
    columns = (["S", "dataset", "mean", "std", "n"], ["label", "dataset", "mean", "std", "n"])
    return pd.DataFrame(points, columns=columns[0]), pd.DataFrame(references, columns=columns[1])


def _training_curves(results: list[RunResult], runs_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    frames, missing = [], []
    for result in results:
        path = runs_dir / result.name / "train_log.csv"
        if not path.is_file():
            missing.append(result.name)
            continue
        grouped = pd.read_csv(path).groupby("epoch", sort=True)["total"]  # over seeds
        curve = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1).fillna(0.0), "n": grouped.size()})
        frames.append(curve.reset_index().assign(label=result.label))
    columns = ["label", "epoch", "mean", "std", "n"]
    return (pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)), missing


def _examples(results: list[RunResult], runs_dir: Path) -> tuple[list[tuple[str, dict[str, np.ndarray]]], list[str]]:
    examples, missing = [], []
    for result in results:
        path = runs_dir / result.name / "examples.npz"
        if not path.is_file():
            missing.append(result.name)
            continue
        with np.load(path, allow_pickle=False) as npz:
            title = f"{result.display_row}\n{result.strong:g}%"  # row and S on two lines: narrow columns
            examples.append((title, {key: npz[key] for key in ("image_ids", "datasets", "probabilities")}))
    return examples, missing


def draw_figures(params: dict[str, Any], results: list[RunResult], frames: dict[str, pd.DataFrame],
                 data: PreparedData, runs_dir: Path, figures_dir: Path, protocol: Protocol) -> list[str]:
    """Draw every report figure (a placeholder that says why when its inputs are missing); tables.md lines."""
    report_params = params["report"]
    seed = int(report_params["figure_seed"])
    row = str(report_params["reference_row"])
    threshold = thresholds(results)[0]
    order = [result.label for result in results]
    examples, no_examples = _examples(results, runs_dir)
    curves, no_log = _training_curves(results, runs_dir)
    points, references = _efficiency_inputs(results, row, protocol.dice)

    def fig1(path: Path) -> str:
        image_id = figures.labels_figure(data, path, seed=seed)
        return (f"the paper's Fig. 1 for training image {image_id} (seeded choice): whole image with the mass "
                "marked, the magnified mass, its strong label (mask), weak label (box) and reversed weak label "
                "(1 - box, the auxiliary branch's target).")

    def fig3(path: Path) -> str:
        n_rows = figures.predictions_figure(data, examples, path, threshold=threshold)
        text = (f"the paper's Fig. 3: {n_rows} example test images (rows, both test sets) x {len(examples)} runs "
                "(columns, first seed's model), zoomed on the mass; ground truth blue, prediction red, "
                f"Dice@{threshold:g} (%) in the corner.")
        return text + (f" No examples.npz for: {', '.join(no_examples)}." if no_examples else "")

    def efficiency(path: Path) -> str:
        figures.label_efficiency_figure(points, references, path, row, metric_label=protocol.dice_label)
        strong = ", ".join(f"{s:g}%" for s in sorted(points["S"].unique()))
        lines = ", ".join(sorted(references["label"].unique())) or f"none ({STRONG_ONLY} not configured)"
        seeds = sorted(set(points["n"]))
        bars = ("error bars ± std over seeds (n = " + "/".join(map(str, seeds)) + ")" if max(seeds) > 1
                else "one seed per run, so no error bars")
        return (f"CBIS and INbreast {protocol.dice_label} of the {row} runs against the strong-label fraction "
                f"({strong}), {bars}; horizontal reference lines (band: ± std): {lines}.")

    def distributions(path: Path) -> str:
        figures.dice_distributions_figure(_figure_inputs_per_image(results, frames, protocol.dice), order, path,
                                          seed=seed, metric_label=protocol.dice_label)
        return (f"per-image {protocol.dice_label} of every run (seeds averaged per image), intra-domain and "
                "cross-domain panels.")

    def training(path: Path) -> str:
        figures.training_curves_figure(curves, order, path)
        return ("total training loss per epoch of every run, mean over seeds, absolute and relative to epoch 1."
                + (f" No train_log.csv for: {', '.join(no_log)}." if no_log else ""))

    drawers: dict[str, Callable[[Path], str]] = dict(zip(
        FIGURE_FILES, (fig1, fig3, efficiency, distributions, training)))
    lines = ["## Figures", ""]
    for name, draw in drawers.items():
        path = figures_dir / name
        try:
            text = draw(path)
        except figures.FigureSkipped as skipped:
            figures.placeholder_figure(path, name, str(skipped))
            text = f"not drawn: {skipped} (the file is a placeholder that says so)."
        lines.append(f"- [{name}](figures/{name}): {text}")
    return lines + [""]


def runs_lines(results: list[RunResult]) -> list[str]:
    lines = ["## Runs", "", "| run | method | S | seeds | train (all seeds) | evaluate | commit | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        commits = []
        for provenance in result.provenance():
            commit = f"`{_commit(provenance) or 'unknown'}`" + (" (dirty)" if provenance.get("git_dirty") else "")
            if commit not in commits:
                commits.append(commit)
        seeds_info = result.info.get("seeds") or {}
        resumed = [f"seed {seed} resumed from epoch {seeds_info[seed]['resumed_from_epoch']}"
                   for seed in result.seeds if int((seeds_info.get(seed) or {}).get("resumed_from_epoch") or 0) > 0]
        workers = int(result.info.get("seed_workers", 1))
        notes = resumed + ([f"{workers} seeds side by side, {result.info.get('threads')} thread(s) each"]
                           if workers > 1 else [])
        lines.append(f"| {result.name} | {result.method} | {result.strong:g}% | {', '.join(result.seeds)} | "
                     f"{result.train_seconds:.0f} s | {float(result.metrics['eval_seconds']):.0f} s | "
                     f"{', '.join(commits)} | {'; '.join(notes + result.loss_not_decreasing)} |")
    return lines


def render(params: dict[str, Any], results: list[RunResult], prepare_report: dict[str, Any], runs_dir: Path,
           data: PreparedData, figures_dir: Path) -> str:
    """The whole of tables.md; draws the figures into figures_dir on the way."""
    report_params = params["report"]
    reference_key = (str(report_params["reference_row"]), float(report_params["reference_strong"]))
    n_resamples = int(report_params["bootstrap_resamples"])
    selected, other = selected_protocols(params, results)
    columns = [selected.dice, selected.smeasure, other.dice, other.smeasure]
    frames = {result.name: per_image_scores(runs_dir, result, columns) for result in results}
    reference = next((r for r in results if r.row == reference_key[0] and np.isclose(r.strong, reference_key[1])),
                     None)
    comparisons = compare(reference, results, frames, selected.dice, n_resamples, runs_dir) \
        if reference is not None else []

    spread = ("One seed per run: single values, no spread." if all(len(result.seeds) == 1 for result in results)
              else "Cells: mean ± std over seeds (n = number of seeds).")
    caption = (f"Our numbers beside the paper's (%): per test set and metric, {other.dice_label} / "
               f"{other.smeasure_label}, then **{selected.dice_label} / {selected.smeasure_label}** (the protocol set "
               "beside the paper's number, see the summary), then the paper's. " + spread)
    lines = ["# Results: hybrid-supervised mammogram mass segmentation", "",
             "Generated by `dvc repro` (stage `report`); do not edit by hand.", ""]
    lines += summary_lines(params, results, prepare_report,
                           claims_lines(reference, comparisons, reference_key, selected),
                           _protocol_lines(results, frames, selected, other))
    used: set[str] = set()
    for title, paper in TABLES.items():
        entries = [r for key in paper for r in results if r.row == key[0] and np.isclose(r.strong, key[1])]
        if not entries:
            continue
        used.update(r.name for r in entries)
        lines += [f"## {title}", "", caption, "", table_markdown(entries, paper, selected, other), ""]
        missing = [f"{row} ({strong:g}%)" for row, strong in paper
                   if not any(r.row == row and np.isclose(r.strong, strong) for r in results)]
        if missing:
            lines += [f"Paper rows not configured in params.yaml: {', '.join(missing)}.", ""]
    others = [r for r in results if r.name not in used]
    if others:
        lines += ["## Other runs", "", "Configured runs that match no row of the paper's tables (%), both "
                  "protocols. " + spread, "", table_markdown(others, None, selected, other), ""]
    if reference is None:
        lines += ["## Paired comparisons", "", f"Not computed: the reference run {reference_key[0]} "
                  f"{reference_key[1]:g}% (params `report.reference_row`, `report.reference_strong`) is not "
                  "configured.", ""]
    elif comparisons:
        lines += [comparisons_markdown(reference, comparisons, n_resamples, selected), ""]
    lines += draw_figures(params, results, frames, data, runs_dir, figures_dir, selected)
    lines += ["Training speed of each method (images/s, loop efficiency, cost relative to Strong-Only, one "
              "process): [performance.md](performance.md).", ""]
    lines += runs_lines(results)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="reports/tables.md", help="tables.md; figures go to figures/ beside it")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runs_dir, prepared, out = Path(args.runs), Path(args.prepared), Path(args.out)
    try:
        results = collect(params, runs_dir)
    except (FileNotFoundError, KeyError, ValueError) as error:  # an unfinished or stale run: say which
        raise SystemExit(f"report: {error.args[0] if isinstance(error, KeyError) else error}") from None
    if not results:
        raise SystemExit("params.yaml configures no runs; nothing to report.")
    try:
        text = render(params, results, read_json(prepared / "prepare_report.json"), runs_dir,
                      load_prepared(prepared), out.parent / "figures")
    except (FileNotFoundError, KeyError, ValueError) as error:  # a per_image.csv of an older or broken stage
        raise SystemExit(f"report: {error}") from error
    atomic_write_text(out, text)
    print(f"wrote {out} and {len(FIGURE_FILES)} figures in {out.parent / 'figures'} ({len(results)} runs)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
