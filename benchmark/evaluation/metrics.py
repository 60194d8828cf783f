"""Per-image Dice and S-measure under the two evaluation protocols of `evaluate.protocol`, and their summary
per run (`summarise`: the numbers metrics.json holds, recomputable from per_image.csv).

Protocol `threshold` (shared/reference/evaluation.md):

- Dice on the binarised prediction (probability > threshold) against the binary truth.
  Both empty: Dice = 1 (such images are counted and reported separately).
- S-measure (Fan et al., ICCV 2017, alpha 0.5) from `pysodmetrics` (`py_sod_metrics.Smeasure`):
  it expects the probability map as uint8 0-255 and the truth as uint8 0/255 (it
  thresholds the truth at > 128, so a 0/1 mask would silently read as all background);
  `smeasure` converts both itself and refuses anything that is not a probability/binary map.

Protocol `authors`: the evaluation the paper's group publishes with its code (the SAM2-UNet repository
of the first author: test.py writes the prediction maps, eval.py scores them), step by step in
`authors_prediction_map` and `authors_scores`: mDice (the Dice curve over 256 thresholds of a
min-max-normalised map, averaged) and the S-measure of the same maps.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from py_sod_metrics import DICEHandler, FmeasureV2, Smeasure

AUTHORS_EPSILON = 1e-8  # test.py: (res - min) / (max - min + 1e-8)
METRICS = ("dice", "smeasure", "authors_mdice", "authors_smeasure")  # per image, every protocol


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    values = np.unique(mask)
    if mask.dtype != bool and not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must be binary (bool or 0/1), found values {values[:6]}; "
                         "a 0/255 mask must be divided by 255 first.")
    return mask.astype(bool)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P ∩ G| / (|P| + |G|) on binary masks; 1.0 when both are empty."""
    p, g = _binary(prediction, "prediction"), _binary(truth, "truth")
    denominator = int(p.sum()) + int(g.sum())
    return 1.0 if denominator == 0 else 2.0 * int((p & g).sum()) / denominator


def smeasure(probability: np.ndarray, truth: np.ndarray) -> float:
    """S-measure of a probability map in [0, 1] against a binary truth, via pysodmetrics."""
    probability = np.asarray(probability, dtype=np.float64)
    if probability.size and (probability.min() < 0 or probability.max() > 1):
        raise ValueError("probability must lie in [0, 1] (apply the sigmoid to logits first).")
    pred_u8 = np.round(probability * 255).astype(np.uint8)
    truth_u8 = _binary(truth, "truth").astype(np.uint8) * 255
    meter = Smeasure(alpha=0.5)
    meter.step(pred=pred_u8, gt=truth_u8)
    return float(meter.get_results()["sm"])


def authors_prediction_map(logits: np.ndarray | torch.Tensor, truth_shape: tuple[int, int]) -> np.ndarray:
    """The prediction map SAM2-UNet's test.py saves for one image, from the network's logits (H, W).

    Every step of the script, in its order and in float32 as it runs them:
    1. `res = torch.sigmoid(res)`: the logits to probabilities;
    2. `F.upsample(res, size=gt.shape, mode='bilinear', align_corners=False)`: bilinear resize to the
       ground truth's size (`F.interpolate`, the same operation under its current name; at the prepared
       resolution the truth has the logits' size, so this step changes nothing here);
    3. `res = res.sigmoid()`: a second sigmoid, on the probabilities (it maps [0, 1] into [0.5, 0.731]);
    4. `res = (res - res.min()) / (res.max() - res.min() + 1e-8)`: min-max normalisation per image;
    5. `res = (res * 255).astype(np.uint8)`: to 0-255, truncated (not rounded); the script then saves a
       PNG (lossless for uint8) that eval.py reads back as the same array.
    A constant map (all logits equal, or all so negative that step 3 gives exactly 0.5 in float32) comes
    out all 0; a map that is nearly empty but not constant is stretched to the full 0-255 range.
    """
    res = torch.as_tensor(logits, dtype=torch.float32).reshape(1, 1, *np.shape(logits)[-2:])
    res = torch.sigmoid(res)
    res = F.interpolate(res, size=tuple(truth_shape), mode="bilinear", align_corners=False)
    res = res.sigmoid().cpu().numpy().squeeze()
    res = (res - res.min()) / (res.max() - res.min() + np.float32(AUTHORS_EPSILON))
    return (res * 255).astype(np.uint8)


def authors_scores(prediction_map: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(mDice, S-measure) of one authors'-protocol map (uint8) against a binary truth, as eval.py scores it.

    eval.py reads the truth as a 0/255 grayscale PNG; `py_sod_metrics` thresholds it at > 128 and
    min-max normalises the map once more (a no-op for a map that already spans 0-255). mDice: an
    `FmeasureV2` with a `DICEHandler(with_adaptive=True, with_dynamic=True)`, whose dynamic result is the
    image's Dice at each of 256 thresholds (map >= t for t = 255 .. 0); eval.py reports
    `get_results()["dice"]["dynamic"].mean()`, the mean over images then thresholds, which equals the mean
    over images of this per-image value. An empty truth scores 0 at every threshold (0/0 counts as 0).
    S-measure: `Smeasure()` (alpha 0.5) on the same map.
    """
    if prediction_map.dtype != np.uint8:
        raise ValueError(f"the authors' map must be uint8 0-255 (authors_prediction_map), got {prediction_map.dtype}")
    truth_u8 = _binary(truth, "truth").astype(np.uint8) * 255
    fmeasure = FmeasureV2(metric_handlers={"dice": DICEHandler(with_adaptive=True, with_dynamic=True)})
    fmeasure.step(pred=prediction_map, gt=truth_u8)
    structure = Smeasure()
    structure.step(pred=prediction_map, gt=truth_u8)
    return float(fmeasure.get_results()["dice"]["dynamic"].mean()), float(structure.get_results()["sm"])


def summarise(per_image: pd.DataFrame) -> dict[str, Any]:
    """Means in % per test set: over images per seed, then mean and std (ddof 1) over seeds, every metric."""
    summary: dict[str, Any] = {}
    per_seed = per_image.groupby(["dataset", "seed"], sort=False)[list(METRICS)].mean() * 100
    for dataset, frame in per_image.groupby("dataset", sort=False):
        seeds = per_seed.loc[dataset]
        first_seed = frame[frame["seed"] == frame["seed"].iloc[0]]
        summary[dataset] = {
            **{metric: round(float(seeds[metric].mean()), 3) for metric in METRICS},
            **{f"{metric}_std": round(float(seeds[metric].std(ddof=1)) if len(seeds) > 1 else 0.0, 3)
               for metric in METRICS},
            "n_images": int(len(first_seed)),
            "n_empty_truth": int((first_seed["mask_area"] == 0).sum()),
            "n_seeds": int(len(seeds)),
        }
    summary["per_seed"] = {
        str(seed): {dataset: {metric: round(float(per_seed.loc[(dataset, seed), metric]), 3) for metric in METRICS}
                    for dataset in per_image["dataset"].unique()}
        for seed in per_image["seed"].unique()}
    return summary
