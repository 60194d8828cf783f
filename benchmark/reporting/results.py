"""What the report reads: every configured run's outputs, verified, and the evaluation protocols' names.

`collect` refuses a run whose outputs are stale (README "Nothing stale"): its params.yaml entry differs
from what train_info.json says it was trained with, metrics.json evaluated other weights than
train_info.json lists, or per_image.csv / examples.npz is not the file whose sha256 metrics.json recorded.
Each row's method, fraction and options are read from train_info.json.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.artifacts import file_sha256, read_json
from benchmark.cli import DamagedOutputError, MissingOutputError
from benchmark.config import all_runs, check_trained_as
from benchmark.data.prepared import check_trained_on, prepared_fingerprint
from benchmark.evaluation.metrics import summarise

DATASETS = {"cbis": "CBIS", "inbreast": "INbreast"}


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol of benchmark/evaluation/evaluate.py: its metrics.json / per_image.csv keys and column
    names."""

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

def thresholds(results: list[RunResult]) -> list[float]:
    """The probability thresholds the runs were evaluated at (metrics.json; 0.5 where not recorded)."""
    return sorted({float(result.metrics.get("threshold", 0.5)) for result in results})

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

def commit_of(provenance: dict[str, Any]) -> str | None:
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
    """per_image.csv and examples.npz must be the files metrics.json was computed with, and train_info.json the
    one it evaluated (not edited, not copied from another run); a missing examples.npz only leaves Fig. 3
    without that run."""
    for name, recorded in {**metrics["outputs"], **metrics["inputs"]}.items():
        path = folder / name
        if not path.is_file():
            if name == "examples.npz":
                continue
            raise MissingOutputError(f"{path}: missing. Run the stage that writes it (`dvc repro`).")
        if file_sha256(path) != recorded:
            raise ValueError(f"{path}: not the file {folder / 'metrics.json'} was computed with (its sha256 differs "
                             "from the one recorded there: it was changed or copied from another run since); "
                             f"re-evaluate the run: dvc repro evaluate@{folder.name}")

def _verified_log(info: dict[str, Any], folder: Path) -> Path:
    """train_log.csv as its training wrote it (train_info.json records its sha256): the report marks a run whose
    loss did not decrease from it, so a missing or edited log must not pass silently."""
    path = folder / "train_log.csv"
    if not path.is_file():
        raise MissingOutputError(f"{path}: missing (the train stage writes it with the weights); re-train the run: "
                                 f"dvc repro train@{folder.name}")
    if file_sha256(path) != info.get("train_log_sha256"):
        raise DamagedOutputError(f"{path}: not the log {folder / 'train_info.json'} records (its sha256 differs: "
                                 f"edited, or from another training); re-train the run: dvc repro train@{folder.name}")
    return path

NUMBER_TOLERANCE = 0.002  # metrics.json keeps 3 decimals: a recomputation may round the last one the other way


def _check_numbers(metrics: dict[str, Any], folder: Path) -> None:
    """metrics.json's numbers must be the ones its per_image.csv gives (the evaluate stage's own summary of it):
    the tables read them, so an edited number would sit beside paired comparisons computed from the images."""
    recomputed = summarise(pd.read_csv(folder / "per_image.csv", dtype={"image_id": str, "dataset": str}))
    for key in ("per_seed", *DATASETS):
        if not _same_numbers(metrics.get(key), recomputed.get(key)):
            raise ValueError(f"{folder / 'metrics.json'}: its {key} numbers are not those of "
                             f"{folder / 'per_image.csv'} (edited since the evaluation?); re-evaluate the run: "
                             f"dvc repro evaluate@{folder.name}")


def _same_numbers(recorded: Any, recomputed: Any) -> bool:
    if isinstance(recomputed, dict):
        return isinstance(recorded, dict) and set(recorded) >= set(recomputed) and \
            all(_same_numbers(recorded[key], value) for key, value in recomputed.items())
    try:
        return abs(float(recorded) - float(recomputed)) <= NUMBER_TOLERANCE
    except (TypeError, ValueError):
        return False


def loss_not_decreasing(log: pd.DataFrame) -> list[str]:
    """Per seed of a train_log.csv: a note when its last epoch's mean total loss is not below its first's."""
    notes = []
    for seed, frame in log.sort_values("epoch").groupby("seed", sort=True):
        first, last = frame.iloc[0], frame.iloc[-1]
        if len(frame) > 1 and not last["total"] < first["total"]:
            notes.append(f"seed {seed}: training loss did not decrease (epoch {int(first['epoch'])}: "
                         f"{first['total']:.4g}, epoch {int(last['epoch'])}: {last['total']:.4g})")
    return notes

SCHEDULE_KEYS = ("epochs", "batch_size", "steps_per_epoch", "image_size")  # what makes two runs one protocol


def check_one_schedule(results: list["RunResult"]) -> None:
    """Every run of a report trained at one schedule: numbers of runs trained for 6 and 12 epochs side by side
    would compare the schedules, not the methods."""
    schedules: dict[tuple, list[str]] = {}
    for result in results:
        schedules.setdefault(tuple(result.info.get(key) for key in SCHEDULE_KEYS), []).append(result.name)
    if len(schedules) > 1:
        listed = "; ".join(", ".join(f"{key} {value}" for key, value in zip(SCHEDULE_KEYS, schedule))
                           + f": {', '.join(names)}" for schedule, names in schedules.items())
        raise ValueError(f"the runs were trained at {len(schedules)} schedules ({listed}); re-train the ones that "
                         "differ from params.yaml (dvc repro) so one report compares one protocol")


def collect(params: dict[str, Any], runs_dir: Path, prepared: Path) -> list[RunResult]:
    """Every configured run, in params.yaml order; refuses any run whose outputs are stale (see the docstring),
    that was trained on other prepared data than `prepared` holds, or at another schedule than the others."""
    results, data_fingerprint = [], prepared_fingerprint(prepared)  # hashed once, not once per run
    for spec in all_runs(params):
        folder = runs_dir / spec.name
        metrics, info = read_json(folder / "metrics.json"), read_json(folder / "train_info.json")
        _require(metrics, ["cbis", "inbreast", "per_seed", "resolution", "eval_seconds", "outputs", "inputs"],
                 folder / "metrics.json")
        _require(metrics["cbis"], ["authors_mdice", "authors_smeasure"], folder / "metrics.json")
        _require(info, ["train_seconds", "uses_weak", "hardware", "encoder", "seeds", "method", "strong_fraction",
                        "options"], folder / "train_info.json")
        check_trained_as(spec, info, folder / "train_info.json")
        check_trained_on(info, prepared, folder / "train_info.json", data_fingerprint)
        _check_evaluated_models(metrics, info, folder)
        _check_output_hashes(metrics, folder)
        _check_numbers(metrics, folder)
        seeds = sorted(metrics["per_seed"], key=lambda seed: (int(seed) if str(seed).isdigit() else 0, str(seed)))
        if not seeds:
            raise ValueError(f"{folder / 'metrics.json'}: per_seed is empty")
        strong = round(100.0 * float(info["strong_fraction"]), 2)
        log_path = _verified_log(info, folder)
        results.append(RunResult(
            name=spec.name, method=str(info["method"]), row=spec.row, strong=strong,
            weak=round(100 - strong, 2) if info["uses_weak"] else 0.0, seeds=seeds, metrics=metrics, info=info,
            options=dict(info["options"]),
            loss_not_decreasing=loss_not_decreasing(pd.read_csv(log_path))))
    keys = Counter((result.row, result.strong) for result in results)
    for result in results:
        result.shared = keys[(result.row, result.strong)] > 1
        result.label = f"{result.row} {result.strong:g}%" + (f" [{result.name}]" if result.shared else "")
    check_one_schedule(results)
    return results

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
