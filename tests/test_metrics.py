"""Dice and S-measure on the corner cases, against values derived by hand from the definitions; the authors'
evaluation protocol against their script's lines and a direct py_sod_metrics computation."""
import numpy as np
import pytest
import torch
from py_sod_metrics import Smeasure

from benchmark.evaluation.metrics import authors_prediction_map, authors_scores, dice, smeasure


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


# -- the authors' protocol (SAM2-UNet test.py + eval.py) ------------------------------------------------------
def their_test_script(logits: np.ndarray, gt_shape: tuple[int, int]) -> np.ndarray:
    """test.py's lines verbatim (F.upsample, the deprecated name the script uses), on one image."""
    import warnings

    import torch
    import torch.nn.functional as F

    res = torch.from_numpy(logits.astype(np.float32))[None, None]
    res = torch.sigmoid(res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = F.upsample(res, size=gt_shape, mode='bilinear', align_corners=False)
    res = res.sigmoid().data.cpu()
    res = res.numpy().squeeze()
    res = (res - res.min()) / (res.max() - res.min() + 1e-8)
    return (res * 255).astype(np.uint8)


def test_authors_map_follows_every_step_of_their_test_script():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (12, 10))
    for shape in [(12, 10), (30, 25)]:  # the prepared resolution (no resize) and an upsampling to a larger truth
        ours = authors_prediction_map(logits, shape)
        assert ours.dtype == np.uint8 and ours.shape == shape
        assert np.array_equal(ours, their_test_script(logits, shape))
        assert ours.min() == 0 and ours.max() in (254, 255), "min-max normalised per image"
    # the second sigmoid squeezes the probabilities into [0.5, 0.731] before the normalisation: the ordering of
    # pixels survives, their spacing does not (this map differs from a once-sigmoided one)
    once = torch.sigmoid(torch.from_numpy(logits.astype(np.float32))).numpy()
    once = ((once - once.min()) / (once.max() - once.min() + 1e-8) * 255).astype(np.uint8)
    assert not np.array_equal(once, authors_prediction_map(logits, (12, 10)))
    # truncation, not rounding: the pixel just below the top lands on floor(255 x its normalised value)
    two = np.array([[0.0, 10.0], [0.0, 1.0]])
    top = torch.sigmoid(torch.sigmoid(torch.tensor(two, dtype=torch.float32))).numpy()
    normalised = (top - top.min()) / (top.max() - top.min() + np.float32(1e-8))
    assert np.array_equal(authors_prediction_map(two, (2, 2)), np.floor(normalised * 255).astype(np.uint8))


def test_authors_map_of_constant_and_nearly_empty_predictions():
    truth = block(size=16, rows=slice(4, 10), cols=slice(4, 10))
    # all logits far below 0: the second sigmoid gives exactly 0.5 everywhere (float32), the map is all 0
    constant = authors_prediction_map(np.full((16, 16), -30.0), (16, 16))
    assert not constant.any()
    # nearly empty but not constant: every probability < 2e-4 (nothing above 0.5), yet stretched to 0..255
    faint = np.where(truth, -9.0, -12.0)
    assert (torch.sigmoid(torch.tensor(faint)) < 2e-4).all()
    stretched = authors_prediction_map(faint, (16, 16))
    assert stretched[truth].min() == stretched.max() and stretched.max() >= 254 and stretched[~truth].max() == 0
    mdice, _ = authors_scores(stretched, truth)
    assert dice(torch.sigmoid(torch.tensor(faint)).numpy() > 0.5, truth) == 0.0
    # pysodmetrics min-max normalises once more (the mass's 254 becomes 255): Dice 1 at thresholds 1 .. 255 and
    # 2|G| / (|G| + N) at threshold 0 (everything foreground): nearly perfect, from a map with no pixel above 0.5
    assert mdice == pytest.approx((255 + 2 * 36 / (36 + 256)) / 256)
    # the constant map: only threshold 0 (everything foreground) scores, Dice 2|G| / (|G| + N) there
    assert authors_scores(constant, truth)[0] == pytest.approx(2 * 36 / (36 + 256) / 256)


def test_authors_scores_equal_a_direct_py_sod_metrics_computation():
    """eval.py's own computation over a set of maps: FmeasureV2 + DICEHandler, mean of the dynamic curve,
    and Smeasure, against the per-image scores averaged over the images (the evaluate stage's number)."""
    from py_sod_metrics import DICEHandler, FmeasureV2

    rng = np.random.default_rng(11)
    truths, maps = [], []
    for k in range(6):
        truth = block(size=24, rows=slice(3 + k, 12 + k), cols=slice(5, 14 + k))
        logits = np.where(truth, 2.0, -2.0) + rng.normal(0, 2.5, truth.shape)
        if k == 4:
            logits = np.where(truth, -9.0, -12.0) + rng.normal(0, 0.1, truth.shape)  # nearly empty prediction
        truths.append(truth)
        maps.append(authors_prediction_map(logits, truth.shape))
    fmeasure = FmeasureV2(metric_handlers={"dice": DICEHandler(with_adaptive=True, with_dynamic=True)})
    structure = Smeasure()
    for prediction, truth in zip(maps, truths):
        gt = truth.astype(np.uint8) * 255
        fmeasure.step(pred=prediction, gt=gt)
        structure.step(pred=prediction, gt=gt)
    curve = fmeasure.get_results()["dice"]["dynamic"]
    assert curve.shape == (256,)
    scores = np.array([authors_scores(prediction, truth) for prediction, truth in zip(maps, truths)])
    assert scores[:, 0].mean() == pytest.approx(curve.mean(), abs=1e-12)
    assert scores[:, 1].mean() == pytest.approx(structure.get_results()["sm"], abs=1e-12)
    assert scores[4, 0] > 0.3, "the nearly empty prediction still scores: min-max normalisation stretched it"
    with pytest.raises(ValueError, match="uint8"):
        authors_scores(maps[0].astype(float), truths[0])
