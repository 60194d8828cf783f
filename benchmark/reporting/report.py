"""DVC stage `report`: render reports/tables.md and the report figures from the runs' outputs.

    python -m benchmark report [--params params.yaml] [--runs runs] [--prepared data/prepared]
                               [--out reports/tables.md]

Every configured run is one (row, S) entry of the tables and holds all its seeds in runs/<run>/:
metrics.json (per-seed means), per_image.csv, train_info.json (with each seed's provenance),
train_log.csv and examples.npz. tables.md opens with a summary (data, hardware, time, seeds, the
code the runs were trained at, which of the paper's claims we agree or disagree with and how
many survive a Holm correction), then the paper's Table 1 and Table 2 with our mean ± std over
seeds (n) under both evaluation protocols, the one `evaluate.protocol` selects beside the paper's
numbers, the runs that match no paper row, the paired comparisons of the reference row with every
other row (two-stage bootstrap over training seeds and test images, Wilcoxon on seed-averaged
per-image scores), the figures (written to figures/ beside tables.md by benchmark/reporting/figures.py) and
the list of runs. Nothing here is random except seeded choices: identical inputs give
byte-identical outputs.

Nothing stale is reported: a run is refused when its params.yaml entry (method, strong fraction,
options, seeds) differs from what train_info.json says it was trained with, when metrics.json
evaluated other weights than train_info.json lists, or when per_image.csv or examples.npz is not the
file whose sha256 metrics.json recorded; each row's method, fraction and options are read from
train_info.json. A run whose last-epoch training loss is not below its first epoch's (in any seed) is
marked † in the tables and named in the summary and the list of runs.

The parts live beside this module: results.py (reading and verifying the runs), summary.py, tables.py,
claims.py (the paired comparisons), figures.py (drawing); this module gathers the figures' inputs and
puts tables.md together.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmark.artifacts import atomic_write_text, read_json
from benchmark.cli import run_cli
from benchmark.config import load_params
from benchmark.data.prepared import PreparedData, load_prepared
from benchmark.evaluation.statistics import mean_std
from benchmark.reporting import figures
from benchmark.reporting.claims import (
    Comparison,
    claims_lines,
    compare,
    comparisons_markdown,
    seed_pairings,
    seed_tables,
)
from benchmark.reporting.paper_results import STRONG_ONLY, TABLES
from benchmark.reporting.results import (
    DATASETS,
    Protocol,
    RunResult,
    collect,
    per_image_scores,
    seed_averaged,
    selected_protocols,
    thresholds,
)
from benchmark.reporting.scale_evidence import read_race, scale_line
from benchmark.reporting.summary import protocol_lines, summary_lines
from benchmark.reporting.tables import runs_lines, table_markdown

FIGURE_FILES = ["fig1_labels.png", "fig3_predictions.png", "label_efficiency.png", "dice_distributions.png",
                "training_curves.png", "claims_forest.png"]


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
                 data: PreparedData, runs_dir: Path, figures_dir: Path, protocol: Protocol,
                 comparisons: list[Comparison], reference: str) -> list[str]:
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

    def forest(path: Path) -> str:
        judged = [c for c in comparisons if c.judged]
        figures.claims_forest_figure(pd.DataFrame(
            [{"label": c.other.label, "dataset": c.dataset, "mean": c.mean, "low": c.low, "high": c.high,
              "paper": c.paper_difference, "verdict": c.verdict, "half_width": c.half_width} for c in judged],
            columns=["label", "dataset", "mean", "low", "high", "paper", "verdict", "half_width"]),
            path, reference, metric_label=protocol.dice_label)
        return (f"the {len(judged)} judged claims of the paper as intervals: {reference} minus each row, our 95% CI "
                "coloured by verdict with its mean, the paper's difference as a cross, and a grey band of ± the CI's "
                "half-width around 0 (a difference inside it is beyond what the run can call).")

    drawers: dict[str, Callable[[Path], str]] = dict(zip(
        FIGURE_FILES, (fig1, fig3, efficiency, distributions, training, forest)))
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
    tables = seed_tables(results, frames, selected.dice, runs_dir)
    pairings = seed_pairings(tables)
    comparisons = compare(reference, results, tables, n_resamples, pairings) if reference is not None else []

    spread = ("One seed per run: single values, no spread." if all(len(result.seeds) == 1 for result in results)
              else "Cells: mean ± std over seeds (n = number of seeds).")
    caption = (f"Our numbers beside the paper's (%): per test set and metric, {other.dice_label} / "
               f"{other.smeasure_label}, then **{selected.dice_label} / {selected.smeasure_label}** (the protocol set "
               "beside the paper's number, see the summary), then the paper's. " + spread)
    lines = ["# Results: hybrid-supervised mammogram mass segmentation", "",
             "Generated by `dvc repro` (stage `report`); do not edit by hand.", ""]
    race_file = report_params.get("scale_study")
    scale = scale_line(read_race(Path(race_file)), prepare_report["source"],
                       int(results[0].info.get("image_size", params["data"]["image_size"]))) if race_file else None
    lines += summary_lines(params, results, prepare_report,
                           claims_lines(reference, comparisons, reference_key, selected, pairings),
                           protocol_lines(results, frames, selected, other), scale)
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
    lines += draw_figures(params, results, frames, data, runs_dir, figures_dir, selected, comparisons,
                          reference.label if reference is not None else f"{reference_key[0]} {reference_key[1]:g}%")
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
    runs_dir, prepared, out = Path(args.runs), Path(args.prepared), Path(args.out)
    out.unlink(missing_ok=True)  # a report that fails leaves no earlier tables.md looking current
    params = load_params(args.params)
    try:
        results = collect(params, runs_dir, prepared)
    except (FileNotFoundError, KeyError, ValueError) as error:  # an unfinished or stale run: say which
        raise SystemExit(f"report: {error.args[0] if isinstance(error, KeyError) else error}") from None
    if not results:
        raise SystemExit("params.yaml configures no runs; nothing to report.")
    prepare_report = read_json(prepared / "prepare_report.json")
    if prepare_report.get("source") != params["data"]["source"]:
        raise SystemExit(f"report: params.yaml data.source is {params['data']['source']}, but {prepared} holds "
                         f"{prepare_report.get('source')} data; run `dvc repro` (prepare, then the runs).")
    try:
        text = render(params, results, prepare_report, runs_dir, load_prepared(prepared), out.parent / "figures")
    except (FileNotFoundError, KeyError, ValueError) as error:  # a per_image.csv of an older or broken stage
        raise SystemExit(f"report: {error}") from error
    atomic_write_text(out, text)
    print(f"wrote {out} and {len(FIGURE_FILES)} figures in {out.parent / 'figures'} ({len(results)} runs)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
