"""DVC stage `report`: render reports/tables.md from the runs' measured metrics.

    python -m benchmark.report

Lays out the paper's Table 1 and Table 2 with one row per configured (row name, strong
fraction), our Dice and S-measure for both test sets beside the paper's numbers, runs of
several seeds as mean ± std (n), and states which data, network and hardware produced
them and how long each run took. Runs that match no row of the paper go to a table of
their own. Every number comes from runs/<run>/metrics.json and train_info.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.artifacts import atomic_write_text, read_json
from benchmark.config import all_runs, load_params
from benchmark.paper_results import TABLES
from benchmark.statistics import bootstrap_ci, wilcoxon_p

METRIC_COLUMNS = [("cbis", "dice"), ("cbis", "smeasure"), ("inbreast", "dice"), ("inbreast", "smeasure")]
PAPER_FIELDS = ["cbis_dice", "cbis_sm", "inbreast_dice", "inbreast_sm"]


def collect(params: dict[str, Any], runs_dir: Path) -> pd.DataFrame:
    """One row per configured run with its metrics, label counts and timings."""
    records = []
    for spec in all_runs(params):
        metrics = read_json(runs_dir / spec.name / "metrics.json")
        info = read_json(runs_dir / spec.name / "train_info.json")
        record = {
            "run": spec.name, "row": spec.row, "method": spec.method, "seed": spec.seed,
            "S": spec.strong_percent, "W": round(100 - spec.strong_percent, 2) if info["uses_weak"] else 0.0,
            "train_seconds": info["train_seconds"], "eval_seconds": metrics["eval_seconds"],
            "hardware": info["hardware"], "encoder": info["encoder"], "encoder_weights": info["encoder_weights"],
            "image_size": info["image_size"], "epochs": info["epochs"], "steps_per_epoch": info["steps_per_epoch"],
            "resolution": metrics["resolution"],
        }
        for dataset, metric in METRIC_COLUMNS:
            record[f"{dataset}_{metric}"] = metrics[dataset][metric]
        for dataset in ("cbis", "inbreast"):
            record[f"{dataset}_n"] = metrics[dataset]["n_images"]
            record[f"{dataset}_empty"] = metrics[dataset]["n_empty_truth"]
        records.append(record)
    return pd.DataFrame(records)


def cell(values: pd.Series) -> str:
    """mean, or mean ± std (n) over seeds."""
    values = values.dropna()
    if len(values) == 0:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n={len(values)})"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def table_markdown(groups: list[tuple[tuple[str, float], pd.DataFrame]], paper: dict | None) -> str:
    header = ["Methods", "S", "W"]
    for dataset, metric in METRIC_COLUMNS:
        name = f"{'CBIS' if dataset == 'cbis' else 'INbreast'} {'Dice' if metric == 'dice' else 'S_m'}"
        header += [name] + (["paper"] if paper is not None else [])
    header += ["seeds", "wall time / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (row, strong), frame in groups:
        paper_row = paper.get((row, strong)) if paper is not None else None
        cells = [row, f"{strong:g}%", f"{frame['W'].iloc[0]:g}%"]
        for (dataset, metric), field in zip(METRIC_COLUMNS, PAPER_FIELDS):
            cells.append(cell(frame[f"{dataset}_{metric}"]))
            if paper is not None:
                cells.append(f"{getattr(paper_row, field):.2f}")
        cells.append(str(len(frame)))
        cells.append(_minutes((frame["train_seconds"] + frame["eval_seconds"]).mean()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_image_dice(runs: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Per-image Dice of every (row, S) group, averaged over its seeds: index (dataset, image_id)."""
    columns = {}
    for (row, strong), frame in runs.groupby(["row", "S"], sort=False):
        tables = [pd.read_csv(runs_dir / run / "per_image.csv").set_index(["dataset", "image_id"])["dice"]
                  for run in frame["run"]]
        columns[(row, strong)] = pd.concat(tables, axis=1).mean(axis=1)
    return pd.DataFrame(columns)


def comparisons_markdown(runs: pd.DataFrame, runs_dir: Path, reference: tuple[str, float]) -> str:
    """Reference row against every other row: paired Wilcoxon p and bootstrap 95% CI of the Dice difference."""
    dice = per_image_dice(runs, runs_dir)
    if reference not in dice.columns:
        return ""
    lines = [f"## Paired comparisons: {reference[0]} ({reference[1]:g}%) against every other row", "",
             "Per-image Dice on the same test images (seeds averaged per image first); difference = "
             f"{reference[0]} minus the other row, in Dice points; two-sided Wilcoxon signed-rank test; "
             "bootstrap 95% CI (10,000 resamples of images).", "",
             "| other row | S | test set | images | mean difference | 95% CI | Wilcoxon p |",
             "|---|---|---|---|---|---|---|"]
    for other in dice.columns:
        if other == reference:
            continue
        for dataset in ("cbis", "inbreast"):
            pair = dice.loc[dataset, [reference, other]].dropna()
            difference = 100 * (pair[reference] - pair[other]).to_numpy()
            low, high = bootstrap_ci(difference)
            p_value = wilcoxon_p(pair[reference].to_numpy(), pair[other].to_numpy())
            lines.append(f"| {other[0]} | {other[1]:g}% | {'CBIS' if dataset == 'cbis' else 'INbreast'} | "
                         f"{len(pair)} | {difference.mean():+.2f} | [{low:+.2f}, {high:+.2f}] | {p_value:.3g} |")
    return "\n".join(lines) + "\n"


def render(params: dict[str, Any], runs: pd.DataFrame, prepare_report: dict[str, Any],
           comparisons: str = "") -> str:
    domains = prepare_report.get("domains", {})
    source = params["data"].get("source", "synthetic")
    data_line = (
        "the **synthetic stand-in** (procedural CBIS-like and INbreast-like mammograms, benchmark/synthetic.py), "
        "not the real datasets: compare orderings, not absolute values, with the paper"
        if source == "synthetic" else "the real **CBIS-DDSM** (intra-domain) and **INbreast** (cross-domain) datasets"
    )
    cbis, inbreast = domains.get("cbis", {}), domains.get("inbreast", {})
    weights = runs["encoder_weights"].iloc[0] or "random initialisation"
    hardware = "; ".join(sorted(runs["hardware"].unique()))
    total = (runs["train_seconds"] + runs["eval_seconds"]).sum()
    seeds = sorted(runs["seed"].unique())
    empty = int(runs["cbis_empty"].max() + runs["inbreast_empty"].max())
    lines = [
        "# Results: hybrid-supervised mammogram mass segmentation",
        "",
        "Generated by `dvc repro` (stage `report`); do not edit by hand.",
        "",
        f"- **Data:** {data_line}. CBIS: {cbis.get('train', '?')} train / {cbis.get('test', '?')} test images; "
        f"INbreast: {inbreast.get('test', '?')} test images; prepared at {runs['image_size'].iloc[0]} x "
        f"{runs['image_size'].iloc[0]} px.",
        f"- **Network:** U-Net with a {runs['encoder'].iloc[0]} encoder ({weights}); "
        f"{runs['epochs'].iloc[0]} epochs x {runs['steps_per_epoch'].iloc[0]} steps. "
        "The paper: ResNet-34, ImageNet weights, 50 epochs, 352 x 352 px.",
        f"- **Hardware:** {hardware}. **Total wall time** of the {len(runs)} runs (train + evaluate): "
        f"{_minutes(total)}.",
        f"- **Seeds:** {', '.join(map(str, seeds))}; "
        + ("one seed per row, so no spread is shown." if runs.groupby(["row", "S"]).size().max() == 1
           else "cells are mean ± std over seeds (n)."),
        f"- **Evaluation:** Dice and S-measure (alpha 0.5, pysodmetrics) in %, per image then averaged, at the "
        f"{runs['resolution'].iloc[0]} resolution, threshold 0.5 on the final-epoch weights. Images with an empty "
        f"ground truth: {empty} (rule: both empty = Dice 1).",
        "",
    ]
    used = set()
    for title, paper in TABLES.items():
        groups = [(key, runs[(runs["row"] == key[0]) & np.isclose(runs["S"], key[1])]) for key in paper]
        present = [(key, frame) for key, frame in groups if len(frame)]
        if not present:
            continue
        used.update(run for _, frame in present for run in frame["run"])
        lines += [f"## {title}", "", "Ours beside the paper's number for each metric (%).", "",
                  table_markdown(present, paper), ""]
        missing = [f"{row} ({strong:g}%)" for (row, strong), frame in groups if not len(frame)]
        if missing:
            lines += [f"Paper rows not configured in params.yaml: {', '.join(missing)}.", ""]
    others = runs[~runs["run"].isin(used)]
    if len(others):
        groups = [((row, strong), frame) for (row, strong), frame in others.groupby(["row", "S"], sort=False)]
        lines += ["## Other runs", "", "Configured runs that match no row of the paper's tables.", "",
                  table_markdown(groups, None), ""]
    if comparisons:
        lines += [comparisons]
    lines += ["Training cost of each method (step time relative to Strong-Only, one process): "
              "[method_cost.md](method_cost.md).", ""]
    lines += ["## Runs", "", "| run | method | S | seed | train | evaluate |", "|---|---|---|---|---|---|"]
    for record in runs.itertuples():
        lines.append(f"| {record.run} | {record.method} | {record.S:g}% | {record.seed} | "
                     f"{record.train_seconds:.0f} s | {record.eval_seconds:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="reports/tables.md")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runs = collect(params, Path(args.runs))
    if runs.empty:
        raise SystemExit("params.yaml configures no runs; nothing to report.")
    report_params = params.get("report") or {}
    reference = (str(report_params.get("reference_row", "Ours")), float(report_params.get("reference_strong", 10)))
    comparisons = comparisons_markdown(runs, Path(args.runs), reference)
    text = render(params, runs, read_json(Path(args.prepared) / "prepare_report.json"), comparisons)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
