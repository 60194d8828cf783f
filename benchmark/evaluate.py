"""DVC stage `evaluate@<run>`: Dice and S-measure of one trained run on both test sets.

    python -m benchmark.evaluate <run-name>

Intra-domain: the CBIS(-like) test split; cross-domain: every INbreast(-like) image.
Evaluated at the prepared resolution with the final weights (no checkpoint or threshold
is ever chosen on a test set). Writes runs/<run>/per_image.csv (image id, dataset, Dice,
S-measure, mask, box and predicted areas) and runs/<run>/metrics.json (means in %, DVC metrics).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark.artifacts import atomic_write_csv, atomic_write_json
from benchmark.config import load_params, run_spec
from benchmark.data import load_prepared
from benchmark.metrics import dice, smeasure
from benchmark.runtime import configure_threads, pick_device
from benchmark.sampling import normalise
from benchmark.train import build_method

TEST_SETS = {"cbis": "intra-domain", "inbreast": "cross-domain"}


@torch.no_grad()
def predict_probabilities(method, images_u8: np.ndarray, device: torch.device, batch_size: int,
                          desc: str = "predict") -> np.ndarray:
    """Sigmoid probabilities (N, H, W) float32 for uint8 images (N, H, W)."""
    method.eval()
    out = np.zeros(images_u8.shape, dtype=np.float32)
    for start in tqdm(range(0, len(images_u8), batch_size), desc=desc, unit="batch", leave=False):
        chunk = torch.as_tensor(images_u8[start:start + batch_size, None]).to(device)
        out[start:start + len(chunk)] = torch.sigmoid(method.predict(normalise(chunk))).float()[:, 0].cpu().numpy()
    return out


def summarise(per_image: pd.DataFrame) -> dict[str, Any]:
    summary = {}
    for dataset, frame in per_image.groupby("dataset", sort=False):
        summary[dataset] = {
            "dice": round(100 * frame["dice"].mean(), 3),
            "smeasure": round(100 * frame["smeasure"].mean(), 3),
            "n_images": int(len(frame)),
            "n_empty_truth": int((frame["mask_area"] == 0).sum()),
        }
    return summary


def evaluate_run(run_name: str, params: dict[str, Any], prepared_dir: Path, runs_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    spec = run_spec(params, run_name)
    configure_threads(int(params["train"].get("num_threads", 0)))
    device = pick_device(params["train"].get("device", "auto"))
    method = build_method(spec, params["model"]).to(device)
    state = torch.load(runs_dir / run_name / "model.pt", map_location=device, weights_only=True)
    method.load_state_dict(state)
    threshold = float(params["evaluate"]["threshold"])
    batch_size = int(params["evaluate"]["batch_size"])

    data = load_prepared(prepared_dir)
    rows = []
    for domain in TEST_SETS:
        test_rows = data.rows(domain, "test")
        index = test_rows["index"].to_numpy()
        arrays = data.arrays[domain]
        probabilities = predict_probabilities(method, arrays["images"][index], device, batch_size, f"{run_name}/{domain}")
        for row, probability, truth, boxes in zip(test_rows.itertuples(), probabilities, arrays["masks"][index],
                                                 arrays["boxes"][index]):
            prediction = probability > threshold
            rows.append({
                "image_id": row.image_id, "dataset": domain, "dice": dice(prediction, truth),
                "smeasure": smeasure(probability, truth), "mask_area": int(truth.sum()),
                "box_area": int(boxes.sum()), "pred_area": int(prediction.sum()),
            })
    per_image = pd.DataFrame(rows)
    metrics = {**summarise(per_image), "resolution": f"prepared ({data.arrays['cbis']['images'].shape[-1]} px)",
               "eval_seconds": round(time.perf_counter() - started, 2)}
    atomic_write_csv(runs_dir / run_name / "per_image.csv", per_image)
    atomic_write_json(runs_dir / run_name / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--runs", default="runs")
    args = parser.parse_args(argv)
    metrics = evaluate_run(args.run, load_params(args.params), Path(args.prepared), Path(args.runs))
    print(f"{args.run}: " + ", ".join(f"{d} Dice {m['dice']:.2f} S_m {m['smeasure']:.2f}"
                                      for d, m in metrics.items() if d in TEST_SETS))


if __name__ == "__main__":
    main()
