"""The shared losses pinned to values computed independently here (plain Python loops, no torch ops)."""
import math

import numpy as np
import pytest
import torch

from benchmark.nn.losses import bce_loss, dice_loss, perception_loss, structure_loss


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def pixel_bce(x, y):
    p = sigmoid(x)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def f3net_weights(y, kernel=31, gain=5.0):
    """w = 1 + gain * |avgpool_kxk(y) - y|, stride 1, zero padding k//2, the padding counted (PyTorch's default)."""
    h, w = y.shape
    r = kernel // 2
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            total = 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        total += y[i + di, j + dj]
            out[i, j] = 1 + gain * abs(total / kernel ** 2 - y[i, j])
    return out


def structure_reference(x, y, weighting, kernel=31):
    """Eq. 1 for one image (2-D numpy arrays of logits and {0,1} targets)."""
    w = f3net_weights(y, kernel)
    h, wd = y.shape
    sum_w = sum_wb = inter = union = sum_b = 0.0
    for i in range(h):
        for j in range(wd):
            p, b = sigmoid(x[i, j]), pixel_bce(x[i, j], y[i, j])
            sum_w += w[i, j]
            sum_wb += w[i, j] * b
            sum_b += b
            inter += w[i, j] * p * y[i, j]
            union += w[i, j] * (p + y[i, j])
    wbce = sum_wb / sum_w if weighting == "weighted" else sum_b / (h * wd)
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return wbce + wiou


@pytest.fixture()
def pair():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(2, 1, 7, 9))
    target = np.zeros((2, 1, 7, 9))
    target[0, 0, 2:5, 3:7] = 1
    target[1, 0, 0:3, 0:2] = 1  # touches the border: zero padding matters
    return logits, target


def test_f3net_weights_by_hand():
    # a 1x1 foreground pixel on a 3x3 image, 3x3 window: the avg is 1/9 everywhere, with zero padding
    y = np.zeros((3, 3))
    y[1, 1] = 1
    w = f3net_weights(y, kernel=3)
    assert w[1, 1] == pytest.approx(1 + 5 * (1 - 1 / 9))
    assert w[0, 0] == pytest.approx(1 + 5 * (1 / 9))


@pytest.mark.parametrize("weighting", ["weighted", "released"])
@pytest.mark.parametrize("kernel", [31, 3])
def test_structure_loss_matches_hand_computation(pair, weighting, kernel):
    logits, target = pair
    expected = np.mean([structure_reference(logits[b, 0], target[b, 0], weighting, kernel) for b in range(2)])
    got = structure_loss(torch.tensor(logits), torch.tensor(target), bce_weighting=weighting, kernel=kernel)
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_structure_loss_modes_differ_where_edges_exist(pair):
    logits, target = (torch.tensor(a) for a in pair)
    assert float(structure_loss(logits, target, bce_weighting="weighted")) != pytest.approx(
        float(structure_loss(logits, target, bce_weighting="released")))
    with pytest.raises(ValueError, match="bce_weighting"):
        structure_loss(logits, target, bce_weighting="plain")


def test_structure_loss_per_image_weight(pair):
    logits, target = pair
    first = structure_reference(logits[0, 0], target[0, 0], "weighted")
    got = structure_loss(torch.tensor(logits), torch.tensor(target), weight=torch.tensor([True, False]), kernel=31)
    assert float(got) == pytest.approx(first, rel=1e-9)
    # no selected image: exactly zero, finite, and still differentiable
    x = torch.tensor(logits, requires_grad=True)
    zero = structure_loss(x, torch.tensor(target), weight=torch.tensor([False, False]))
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) == 0.0


def test_structure_loss_on_uniform_target_is_plain_bce_plus_iou():
    # all-background target: no edges, and near the border the zero padding agrees with y = 0, so w = 1
    x = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]], dtype=torch.float64)
    y = torch.zeros_like(x)
    vals = [0.0, 2.0, -1.0, 3.0]
    bce = sum(pixel_bce(v, 0) for v in vals) / 4
    probs = sum(sigmoid(v) for v in vals)
    iou = 1 - 1 / (probs + 1)
    for mode in ("weighted", "released"):
        assert float(structure_loss(x, y, bce_weighting=mode)) == pytest.approx(bce + iou, rel=1e-12)


def perception_reference(x, yw):
    """1 - TN / (TN + FP), soft counts inside the boxes (y^w = 0); p = P(definite background)."""
    tn = fp = 0.0
    for xv, yv in zip(x.ravel(), yw.ravel()):
        p = sigmoid(xv)
        tn += (1 - p) * (1 - yv)
        fp += p * (1 - yv)
    return 1 - tn / (tn + fp)


def test_perception_loss_by_hand():
    x = torch.tensor([[[[0.0, 1.0, -2.0], [3.0, -1.0, 0.5]]]], dtype=torch.float64)
    yw = torch.tensor([[[[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]]], dtype=torch.float64)  # box = 3 pixels
    # inside the box the logits are 1, -2, -1: L = mean of p there
    expected = (sigmoid(1.0) + sigmoid(-2.0) + sigmoid(-1.0)) / 3
    assert perception_reference(x.numpy(), yw.numpy()) == pytest.approx(expected)
    assert float(perception_loss(x, yw)) == pytest.approx(expected, rel=1e-6)


def test_perception_loss_whole_image_box_and_empty_box():
    x = torch.tensor([[[[0.0, 2.0], [-1.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]], dtype=torch.float64)
    whole = torch.zeros_like(x)  # box covers every pixel: y^w = 0 everywhere
    per_image = [np.mean([sigmoid(v) for v in (0.0, 2.0, -1.0, 4.0)]), sigmoid(1.0)]
    assert float(perception_loss(x, whole)) == pytest.approx(np.mean(per_image), rel=1e-6)
    empty = torch.ones_like(x)  # no box: no uncertain pixel, nothing to perceive -> 0, not NaN
    assert float(perception_loss(x, empty)) == 0.0
    mixed = torch.cat([whole[:1], empty[1:]])
    assert float(perception_loss(x, mixed)) == pytest.approx(per_image[0] / 2, rel=1e-6)
    # background-confident predictions inside the box are penalised, uncertain ones are not
    inside = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    assert float(perception_loss(torch.full_like(inside, 20.0), inside)) == pytest.approx(1.0, abs=1e-6)
    assert float(perception_loss(torch.full_like(inside, -20.0), inside)) == pytest.approx(0.0, abs=1e-6)


def test_perception_loss_random_against_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, size=(3, 1, 5, 6))
    yw = np.ones_like(x)
    yw[0, 0, 1:4, 2:5] = 0
    yw[1, 0, 0:2, 0:6] = 0
    yw[2, 0, 4:5, 5:6] = 0
    expected = np.mean([perception_reference(x[b], yw[b]) for b in range(3)])
    assert float(perception_loss(torch.tensor(x), torch.tensor(yw))) == pytest.approx(expected, rel=1e-6)
    weight = torch.tensor([0.0, 1.0, 1.0])
    expected_w = np.mean([perception_reference(x[b], yw[b]) for b in (1, 2)])
    assert float(perception_loss(torch.tensor(x), torch.tensor(yw), weight=weight)) == pytest.approx(expected_w,
                                                                                                     rel=1e-6)


def test_bce_and_dice_by_hand():
    x = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]], dtype=torch.float64)
    y = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
    vals, targets = [0.0, 2.0, -1.0, 3.0], [1, 1, 0, 0]
    assert float(bce_loss(x, y)) == pytest.approx(np.mean([pixel_bce(v, t) for v, t in zip(vals, targets)]))
    probs = [sigmoid(v) for v in vals]
    dice = 1 - (2 * (probs[0] + probs[1]) + 1) / (sum(probs) + 2 + 1)
    assert float(dice_loss(x, y)) == pytest.approx(dice)


def test_box_mean_equals_the_zero_padded_average_pool():
    import torch.nn.functional as F

    from benchmark.nn.losses import box_mean

    torch.manual_seed(0)
    for shape in [(2, 1, 40, 33), (1, 1, 96, 96)]:
        soft = torch.rand(shape)
        binary = (soft > 0.8).float()
        for x in (soft, binary):
            expected = F.avg_pool2d(x, 31, stride=1, padding=15)
            assert torch.allclose(box_mean(x, 31), expected, atol=1e-5)
