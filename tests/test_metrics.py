"""Dice and S-measure on the corner cases, against values derived by hand from the definitions."""
import numpy as np
import pytest
from py_sod_metrics import Smeasure

from benchmark.metrics import dice, smeasure


def block(size=8, rows=slice(0, 4), cols=slice(0, 4)):
    mask = np.zeros((size, size), dtype=bool)
    mask[rows, cols] = True
    return mask


def test_dice_corner_cases():
    truth = block()
    assert dice(truth, truth) == 1.0  # perfect
    assert dice(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == 1.0  # both empty: the stated rule
    assert dice(truth, np.zeros((8, 8), bool)) == 0.0  # prediction only
    assert dice(np.zeros((8, 8), bool), truth) == 0.0  # truth only
    half = block(rows=slice(0, 2))  # 8 of the 16 truth pixels
    assert dice(half, truth) == pytest.approx(2 * 8 / (8 + 16))


def test_smeasure_perfect_and_empty():
    truth = block()
    assert smeasure(truth.astype(float), truth) == pytest.approx(1.0, abs=1e-6)
    assert smeasure(np.zeros((8, 8)), np.zeros((8, 8), bool)) == pytest.approx(1.0)


def test_smeasure_prediction_only():
    # Empty truth: S = 1 - mean(prediction); a quarter of the image predicted at 1.0.
    assert smeasure(block().astype(float), np.zeros((8, 8), bool)) == pytest.approx(0.75)


def test_smeasure_truth_only():
    # Truth: the 4x4 top-left block of 8x8 (u = 1/4), prediction all zero.
    # Object: foreground score 0, background score 1 -> 0.75.  Region: centroid (1.5, 1.5) rounds
    # to 2, +1 (MATLAB indexing) -> split at 3; only the all-foreground 3x3 quadrant scores 1 -> 9/64.
    expected = 0.5 * 0.75 + 0.5 * 9 / 64
    assert smeasure(np.zeros((8, 8)), block()) == pytest.approx(expected)


def test_zero_one_mask_trap():
    truth01 = block().astype(np.uint8)  # values 0/1, the classic bug input for pysodmetrics
    expected = 0.5 * 0.75 + 0.5 * 9 / 64
    assert smeasure(np.zeros((8, 8)), truth01) == pytest.approx(expected)
    # The raw library thresholds the truth at > 128: a 0/1 mask silently reads as empty (S = 1 here).
    raw = Smeasure()
    raw.step(pred=np.zeros((8, 8), np.uint8), gt=truth01)
    assert raw.get_results()["sm"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="binary"):
        smeasure(np.zeros((8, 8)), truth01 * 255)
    with pytest.raises(ValueError, match="binary"):
        dice(np.zeros((8, 8), bool), truth01 * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smeasure(np.full((8, 8), 3.0), truth01)
