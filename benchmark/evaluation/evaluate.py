"""DVC stage `evaluate@<run>`: Dice and S-measure of one trained run on both test sets.

    python -m benchmark evaluate <run-name>

Intra-domain: the CBIS(-like) test split; cross-domain: every INbreast(-like) image.
Every seed's final weights are evaluated at the prepared resolution (no checkpoint or
threshold is ever chosen on a test set), under both evaluation protocols (benchmark/evaluation/metrics.py;
`evaluate.protocol` only chooses which one the report sets beside the paper's numbers):
`threshold` (Dice of sigmoid(logit) > `evaluate.threshold`, S-measure of the probability map) and
`authors` (the paper's group's published test.py + eval.py: mDice over 256 thresholds and the
S-measure of a min-max-normalised map). Before it removes its previous outputs, the stage checks
params.yaml, the device, and that the run's params entry and `model` section are those
train_info.json records it was trained with. Writes runs/<run>/per_image.csv (seed, image id,
dataset, dice, smeasure, authors_mdice, authors_smeasure, mask, box and predicted areas),
runs/<run>/examples.npz (the first seed's probability maps of the report's example images) and,
last, runs/<run>/metrics.json (per test set: mean and std over seeds in %, per-seed means, the
sha256 of the evaluated models and of per_image.csv and examples.npz, which the report verifies;
DVC metrics).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark.artifacts import (
    EVALUATION_OUTPUTS,
    atomic_savez,
    atomic_write_csv,
    atomic_write_json,
    file_sha256,
    read_json,
    remove_outputs,
)
from benchmark.cli import MissingOutputError, add_run_argument, chosen_run, run_cli
from benchmark.config import ConfigError, check_trained_as, load_params, run_spec, validate_params
from benchmark.data.prepared import PreparedData, check_trained_on, load_prepared
from benchmark.evaluation.metrics import authors_prediction_map, authors_scores, dice, smeasure, summarise
from benchmark.training.runtime import configure_threads, pick_device
from benchmark.training.sampling import normalise
from benchmark.training.train import build_method

TEST_SETS = {"cbis": "intra-domain", "inbreast": "cross-domain"}
# per-image metrics of both protocols: threshold (dice, smeasure) and authors (authors_mdice, authors_smeasure)


@torch.no_grad()
def predict_maps(method, images_u8: np.ndarray, device: torch.device, batch_size: int,
                 desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Segmentation logits and their sigmoid probabilities, (N, H, W) float32 each, for uint8 images (N, H, W)."""
    method.eval()
    logits, probabilities = np.zeros(images_u8.shape, np.float32), np.zeros(images_u8.shape, np.float32)
    for start in tqdm(range(0, len(images_u8), batch_size), desc=desc, unit="batch", leave=False):
        chunk = torch.as_tensor(images_u8[start:start + batch_size, None]).to(device)
        output = method.predict(normalise(chunk))
        logits[start:start + len(chunk)] = output.float()[:, 0].cpu().numpy()
        probabilities[start:start + len(chunk)] = torch.sigmoid(output).float()[:, 0].cpu().numpy()
    return logits, probabilities


def predict_probabilities(method, images_u8: np.ndarray, device: torch.device, batch_size: int,
                          desc: str = "predict") -> np.ndarray:
    """Sigmoid probabilities (N, H, W) float32 for uint8 images (N, H, W)."""
    return predict_maps(method, images_u8, device, batch_size, desc)[1]


def figure_example_ids(data: PreparedData, per_domain: int, seed: int) -> list[tuple[str, str]]:
    """(domain, image_id) of the test images the report shows for every run: a seeded choice per test set,
    the same for every run because it depends on the prepared manifest only."""
    rng = np.random.default_rng(seed)
    chosen = []
    for domain in TEST_SETS:
        ids = sorted(data.rows(domain, "test")["image_id"])
        picks = rng.choice(len(ids), size=min(per_domain, len(ids)), replace=False)
        chosen += [(domain, ids[i]) for i in sorted(picks)]
    return chosen


def load_run_models(run_dir: Path) -> dict[int, Path]:
    """The trained models of a finished train stage: seed -> path, checked against train_info.json."""
    info = read_json(run_dir / "train_info.json")
    models = {int(seed): run_dir / "models" / f"seed_{seed}.pt" for seed in info["seeds"]}
    for seed, path in models.items():
        if not path.is_file():
            raise MissingOutputError(f"{path}: missing although {run_dir / 'train_info.json'} lists seed {seed}; "
                                    "re-run the train stage (`dvc repro`).")
    return models


def check_model_as_trained(model_params: dict[str, Any], info: dict[str, Any], info_path: Path) -> None:
    """The weights only fit the network they were trained as (params.yaml `model`)."""
    trained = info.get("model")
    if trained != model_params:
        changed = sorted(key for key in set(model_params) | set(trained or {})
                         if (trained or {}).get(key) != model_params.get(key))
        raise ConfigError(f"params.yaml: model differs from what {info_path} was trained with "
                          f"({', '.join('model.' + key for key in changed)}); re-train the run (dvc repro).")


def evaluate_run(run_name: str, params: dict[str, Any], prepared_dir: Path, runs_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    params = validate_params(params)
    spec = run_spec(params, run_name)
    run_dir = runs_dir / run_name
    device = pick_device(params["train"]["device"])
    info = read_json(run_dir / "train_info.json")
    check_trained_as(spec, info, run_dir / "train_info.json")
    check_model_as_trained(params["model"], info, run_dir / "train_info.json")
    models = load_run_models(run_dir)
    data = load_prepared(prepared_dir)
    check_trained_on(info, prepared_dir, run_dir / "train_info.json")
    # a stage killed halfway must not leave the previous evaluation looking complete
    remove_outputs(run_dir, EVALUATION_OUTPUTS)
    configure_threads(int(params["train"]["num_threads"]))
    eval_params = params["evaluate"]
    threshold, batch_size = float(eval_params["threshold"]), int(eval_params["batch_size"])
    examples = figure_example_ids(data, int(eval_params["figure_examples"]), int(eval_params["figure_seed"]))
    rows, example_maps, model_hashes = [], {}, {}
    for seed, model_path in models.items():
        method = build_method(spec, params["model"]).to(device)
        method.load_state_dict(torch.load(model_path, map_location=device, weights_only=True))
        model_hashes[str(seed)] = file_sha256(model_path)
        for domain in TEST_SETS:
            test_rows = data.rows(domain, "test")
            index = test_rows["index"].to_numpy()
            arrays = data.arrays[domain]
            logits, probabilities = predict_maps(method, arrays["images"][index], device, batch_size,
                                                 f"{run_name}/seed {seed}/{domain}")
            for row, logit, probability, truth, boxes in zip(test_rows.itertuples(), logits, probabilities,
                                                            arrays["masks"][index], arrays["boxes"][index]):
                prediction = probability > threshold
                authors_mdice, authors_smeasure = authors_scores(authors_prediction_map(logit, truth.shape), truth)
                rows.append({
                    "seed": seed, "image_id": row.image_id, "dataset": domain, "dice": dice(prediction, truth),
                    "smeasure": smeasure(probability, truth), "authors_mdice": authors_mdice,
                    "authors_smeasure": authors_smeasure, "mask_area": int(truth.sum()),
                    "box_area": int(boxes.sum()), "pred_area": int(prediction.sum()),
                })
                if seed == spec.seeds[0] and (domain, row.image_id) in examples:
                    example_maps[(domain, row.image_id)] = np.round(probability * 255).astype(np.uint8)
    per_image = pd.DataFrame(rows)
    atomic_write_csv(run_dir / "per_image.csv", per_image)
    atomic_savez(run_dir / "examples.npz", image_ids=np.array([key[1] for key in example_maps]),
                 datasets=np.array([key[0] for key in example_maps]),
                 probabilities=np.stack(list(example_maps.values())))
    metrics = {**summarise(per_image), "resolution": f"prepared ({data.arrays['cbis']['images'].shape[-1]} px)",
               "threshold": threshold, "evaluated_models": model_hashes,
               "outputs": {name: file_sha256(run_dir / name) for name in ("per_image.csv", "examples.npz")},
               # what the report reads the row's method, fraction and schedule from: covered by this record
               "inputs": {"train_info.json": file_sha256(run_dir / "train_info.json")},
               "eval_seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the outputs complete
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_argument(parser)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--runs", default="runs")
    args = parser.parse_args(argv)
    args.run = chosen_run(args, parser)
    metrics = evaluate_run(args.run, load_params(args.params), Path(args.prepared), Path(args.runs))
    print(f"{args.run}: " + ", ".join(f"{d} Dice@{metrics['threshold']:g} {m['dice']:.2f} S_m {m['smeasure']:.2f} "
                                      f"mDice (authors) {m['authors_mdice']:.2f}"
                                      for d, m in metrics.items() if d in TEST_SETS)
          + f" (seeds: {len(metrics['per_seed'])})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
