"""The report's tables: one row per run beside the paper's numbers, and the list of runs with their provenance."""
from __future__ import annotations

from benchmark.evaluation.statistics import mean_std
from benchmark.reporting.paper_results import PaperRow, paper_row
from benchmark.reporting.results import DATASETS, Protocol, RunResult, commit_of

METRIC_COLUMNS = [("cbis", "dice"), ("cbis", "smeasure"), ("inbreast", "dice"), ("inbreast", "smeasure")]
PAPER_FIELDS = {("cbis", "dice"): "cbis_dice", ("cbis", "smeasure"): "cbis_sm",
                ("inbreast", "dice"): "inbreast_dice", ("inbreast", "smeasure"): "inbreast_sm"}
LOSS_MARK = "†"
LOSS_NOTE = (f"{LOSS_MARK} training loss did not decrease: in at least one seed the last epoch's mean total loss is "
             "not below the first epoch's (see Runs); treat this row as a failed training, not a result.")


def cell(values: list[float]) -> str:
    """One table cell: the value for one seed, mean ± std (n=k) for several."""
    if not values:
        return "–"
    mean, std, n = mean_std(values)
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f} (n={n})"

def minutes(seconds: float) -> str:
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
        cells += [str(len(result.seeds)), minutes(result.seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(result.loss_not_decreasing for result in entries):
        lines += ["", LOSS_NOTE]
    return "\n".join(lines)

def runs_lines(results: list[RunResult]) -> list[str]:
    lines = ["## Runs", "", "| run | method | S | seeds | train (all seeds) | evaluate | commit | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        commits = []
        for provenance in result.provenance():
            commit = f"`{commit_of(provenance) or 'unknown'}`" + (" (dirty)" if provenance.get("git_dirty") else "")
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
