"""Box-to-target conversion: filled, inscribed ellipse, GrabCut."""
import numpy as np
import pytest

from benchmark.data.prepared import box_map
from benchmark.nn.box_targets import box_target, box_targets


def test_filled_and_ellipse_stay_inside_the_box():
    boxes = box_map((32, 32), [(4, 6, 20, 18)])
    filled = box_target(np.zeros((32, 32), np.uint8), boxes, "filled")
    ellipse = box_target(np.zeros((32, 32), np.uint8), boxes, "ellipse")
    assert np.array_equal(filled, boxes)
    assert ellipse.sum() < filled.sum() and np.all(boxes[ellipse > 0] == 1)
    assert ellipse.sum() / filled.sum() == pytest.approx(np.pi / 4, abs=0.06)


def test_grabcut_finds_a_bright_disc_inside_its_box():
    yy, xx = np.mgrid[0:48, 0:48]
    disc = (yy - 24) ** 2 + (xx - 22) ** 2 <= 64
    rng = np.random.default_rng(0)
    image = np.clip(60 + 120 * disc + rng.normal(0, 8, disc.shape), 0, 255).astype(np.uint8)
    boxes = box_map(disc.shape, [(10, 12, 35, 37)])
    target = box_target(image, boxes, "grabcut")
    dice = 2 * (target.astype(bool) & disc).sum() / (target.sum() + disc.sum())
    assert dice > 0.85 and np.all(boxes[target > 0] == 1)
    assert box_targets(image[None], boxes[None], "grabcut").shape == (1, 48, 48)
    with pytest.raises(ValueError, match="one of"):
        box_target(image, boxes, "polygon")
