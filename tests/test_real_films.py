"""The breast crop on ten real film mammograms (shared/reference/real-samples/films, skipped when absent).

The breast's extent per film is a hand-read table (tests/data/films/breast_extents.csv; its README says
how it was read), independent of the code under test. The crop must hold >= 95% of that extent along
each axis and every mask pixel, and must not move when the mask does.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmark.data.real.preprocess import preprocess_pair
from benchmark.data.real.settings import PreprocessSettings
from tests.conftest import real_samples

EXTENTS = Path(__file__).resolve().parent / "data" / "films" / "breast_extents.csv"
MIN_COVERAGE = 0.95  # the bar: share of the breast's height and of its width inside the crop
SETTINGS = PreprocessSettings(image_size=64)


def films_folder() -> Path:
    samples = real_samples("films/images", "films/masks",
                           missing="real film samples not available (they live in shared/, never in the repository)")
    return samples / "films"


def hand_extents() -> dict[str, tuple[float, float, float, float]]:
    with open(EXTENTS, newline="") as handle:
        return {row["film"]: tuple(float(row[k]) for k in ("y0", "y1", "x0", "x1")) for row in csv.DictReader(handle)}


def load_film(name: str) -> tuple[np.ndarray, np.ndarray]:
    folder = films_folder()
    (image_path,) = folder.glob(f"images/{name}.*")
    mask_name = name[:-len("_FULL")] if name.endswith("_FULL") else name
    image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(folder / "masks" / f"{mask_name}_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert image is not None and mask is not None and image.shape == mask.shape, name
    return image, mask > 127


def coverage(crop: list[int], extent: tuple[float, float, float, float], shape: tuple[int, int]) -> tuple[float, float]:
    """Share of the hand-read breast height and width that the crop (y0, y1, x0, x1 in px) holds."""
    height, width = shape
    y0, y1, x0, x1 = extent[0] * height, extent[1] * height, extent[2] * width, extent[3] * width
    held_h = max(0.0, min(crop[1], y1) - max(crop[0], y0)) / (y1 - y0)
    held_w = max(0.0, min(crop[3], x1) - max(crop[2], x0)) / (x1 - x0)
    return held_h, held_w


FILMS = sorted(hand_extents())


def test_the_table_covers_every_film():
    names = {path.name.rsplit(".", 1)[0] for path in (films_folder() / "images").iterdir()}
    assert names == set(FILMS)


@pytest.mark.parametrize("name", FILMS)
def test_crop_holds_the_breast_and_every_mask_pixel(name):
    image, mask = load_film(name)
    _, _, info = preprocess_pair(image, mask, SETTINGS)
    y0, y1, x0, x1 = info["crop_box"]
    held_h, held_w = coverage(info["crop_box"], hand_extents()[name], image.shape)
    assert held_h >= MIN_COVERAGE and held_w >= MIN_COVERAGE, f"{name}: height {held_h:.3f}, width {held_w:.3f}"
    assert mask[y0:y1, x0:x1].sum() == mask.sum(), f"{name}: mask pixels outside the crop"


@pytest.mark.parametrize("name", FILMS)
def test_changing_the_mask_does_not_move_the_crop(name):
    image, mask = load_film(name)
    rows, cols = np.nonzero(mask)
    centre = np.zeros_like(mask)
    cy, cx = int(rows.mean()), int(cols.mean())
    centre[cy - 5:cy + 5, cx - 5:cx + 5] = True  # a small mass at the old one's centre
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    crops = {label: preprocess_pair(image, other, SETTINGS)[2]["crop_box"]
             for label, other in (("own", mask), ("empty", np.zeros_like(mask)), ("small", centre), ("grown", grown))}
    assert len({tuple(crop) for crop in crops.values()}) == 1, f"{name}: {crops}"
