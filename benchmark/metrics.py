"""Per-image Dice and S-measure, exactly as shared/reference/evaluation.md prescribes.

- Dice on the binarised prediction (probability > threshold) against the binary truth.
  Both empty: Dice = 1 (such images are counted and reported separately).
- S-measure (Fan et al., ICCV 2017, alpha 0.5) from `pysodmetrics` (`py_sod_metrics.Smeasure`):
  it expects the probability map as uint8 0-255 and the truth as uint8 0/255 (it
  thresholds the truth at > 128, so a 0/1 mask would silently read as all background);
  `smeasure` converts both itself and refuses anything that is not a probability/binary map.
"""
from __future__ import annotations

import numpy as np
from py_sod_metrics import Smeasure


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
