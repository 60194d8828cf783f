"""How much of a synthetic-default score is the luck of its test split? Re-score trained runs on fresh images.

    python -m benchmark heldout [RUN ...] [--generator-seeds 8 9 10] [--count 600] [--csv FILE]

The CBIS-like test split of the synthetic default holds a few hundred images at most, so a run's Dice
carries a sampling error of a few points. This tool renders `--count` further CBIS-like images per
generator seed (the pipeline's generator and `data` settings, other seeds, so none of them can be a
training image), scores every trained model of the given runs (default: all configured runs) on them
with the evaluate stage's threshold, and prints, per run and model seed, the test-split Dice beside the
Dice on each fresh set and pooled (mean ± standard error over images).

A diagnostic, not a pipeline stage: it writes nothing under `reports/`, and only for the synthetic source.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.artifacts import atomic_write_csv, read_json
from benchmark.cli import MissingOutputError, run_cli
from benchmark.config import ConfigError, load_params, run_spec
from benchmark.data.synthetic import generate_domain
from benchmark.evaluation.evaluate import load_run_models, predict_probabilities
from benchmark.evaluation.metrics import dice
from benchmark.training.runtime import configure_threads, pick_device
from benchmark.training.train import build_method


def fresh_cbis_sets(data_params: dict, generator_seeds: list[int],
                    count: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """generator seed -> (images, masks) of `count` CBIS-like images, refusing the pipeline's own seed."""
    synthetic = data_params["synthetic"]
    if int(synthetic["seed"]) in generator_seeds:
        raise ConfigError(f"--generator-seeds: {synthetic['seed']} is data.synthetic.seed, whose images the runs "
                          "trained on; choose other seeds.")
    sets = {}
    for seed in generator_seeds:
        arrays = generate_domain("cbis", count, int(data_params["image_size"]), seed, synthetic)
        sets[seed] = (arrays.images, arrays.masks)
    return sets


def check_trained_at(info_path: Path, image_size: int) -> None:
    """The fresh images are rendered at params.yaml's size: a run trained at another size would be scored on
    masses of another pixel size, silently (the network is fully convolutional)."""
    trained = read_json(info_path).get("image_size")
    if trained != image_size:
        raise ConfigError(f"{info_path}: the run was trained at {trained} px, but params.yaml data.image_size is "
                          f"{image_size}; re-train it (dvc repro train@{info_path.parent.name}) or pass the params "
                          "it was trained with (--params).")


def score_runs(params: dict, run_names: list[str], sets: dict[int, tuple[np.ndarray, np.ndarray]],
               runs_dir: Path, device: torch.device) -> pd.DataFrame:
    """One row per (run, model seed, generator seed, image): its Dice at the evaluate stage's threshold."""
    threshold, batch_size = float(params["evaluate"]["threshold"]), int(params["evaluate"]["batch_size"])
    rows = []
    for name in run_names:
        spec = run_spec(params, name)
        for model_seed, path in load_run_models(runs_dir / name).items():
            method = build_method(spec, params["model"]).to(device)
            method.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            for generator_seed, (images, masks) in sets.items():
                probabilities = predict_probabilities(method, images, device, batch_size,
                                                      f"{name}/seed {model_seed}/generator {generator_seed}")
                rows += [{"run": name, "model_seed": model_seed, "generator_seed": generator_seed, "image": k,
                          "dice": dice(probability > threshold, truth)}
                         for k, (probability, truth) in enumerate(zip(probabilities, masks))]
    return pd.DataFrame(rows)


def summary_table(scores: pd.DataFrame, runs_dir: Path) -> str:
    """Markdown: test-split Dice (metrics.json) beside the fresh sets' Dice, in %."""
    generator_seeds = sorted(scores["generator_seed"].unique())
    lines = ["| run | model seed | test split | " + " | ".join(f"fresh (seed {s})" for s in generator_seeds)
             + " | fresh pooled (± SE) | images |", "|---" * (len(generator_seeds) + 5) + "|"]
    for (name, model_seed), frame in scores.groupby(["run", "model_seed"], sort=False):
        test = read_json(runs_dir / name / "metrics.json")["per_seed"][str(model_seed)]["cbis"]["dice"]
        per_set = [100 * frame.loc[frame["generator_seed"] == s, "dice"].mean() for s in generator_seeds]
        pooled = 100 * frame["dice"]
        lines.append(f"| {name} | {model_seed} | {test:.2f} | " + " | ".join(f"{v:.2f}" for v in per_set)
                     + f" | {pooled.mean():.2f} ± {pooled.std(ddof=1) / np.sqrt(len(pooled)):.2f} | {len(pooled)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="configured run names (default: every run)")
    parser.add_argument("--generator-seeds", type=int, nargs="+", default=None,
                        help="synthetic generator seeds of the fresh sets "
                             "(default: the next three after data.synthetic.seed)")
    parser.add_argument("--count", type=int, default=600, help="CBIS-like images per generator seed")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--csv", default=None, help="also write the per-image scores here")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if params["data"].get("source", "synthetic") != "synthetic":
        raise ConfigError("benchmark.tools.heldout renders fresh synthetic images; data.source is "
                          f"{params['data']['source']!r}, whose test split cannot be re-drawn this way.")
    if args.count < 2:
        raise ConfigError(f"--count must be at least 2 (a standard error needs two images), got {args.count}.")
    base_seed = int(params["data"]["synthetic"]["seed"])
    generator_seeds = args.generator_seeds or [base_seed + 1, base_seed + 2, base_seed + 3]
    run_names = args.runs or list(params["runs"])
    for name in run_names:
        run_spec(params, name)  # unknown names fail here, before any rendering
        if not (Path(args.runs_dir) / name / "metrics.json").is_file():
            raise MissingOutputError(f"{Path(args.runs_dir) / name / 'metrics.json'}: run {name} is not evaluated "
                                    "yet; run `dvc repro` first.")
        check_trained_at(Path(args.runs_dir) / name / "train_info.json", int(params["data"]["image_size"]))
    configure_threads(int(params["train"].get("num_threads", 0)))
    device = pick_device(params["train"].get("device", "auto"))
    sets = fresh_cbis_sets(params["data"], generator_seeds, args.count)
    scores = score_runs(params, run_names, sets, Path(args.runs_dir), device)
    if args.csv:
        atomic_write_csv(args.csv, scores)
    print(summary_table(scores, Path(args.runs_dir)))


if __name__ == "__main__":
    sys.exit(run_cli(main))
