"""The breast finder on synthetic films and digital mammograms that carry the real traps, one at a time:
an uneven non-zero film base with a label and tape, a faint fatty rim up to the skin line, scanner borders
with their glow, a breast running off the image edge, and a digital image with a zero background.

Each fixture knows the breast's true rectangle; the finder must hold >= 98% of its height and width and
reach no artefact. (The real films are in test_real_films.py.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from benchmark.data.real.preprocess import find_breast

H, W = 1200, 720  # rows x cols, about a DDSM film's aspect ratio; found on a 512-px copy


@dataclass
class Film:
    image: np.ndarray
    breast: tuple[int, int, int, int]  # y0, y1, x0, x1 of the true breast, end-exclusive
    artefacts: dict[str, tuple[int, int, int, int]]  # name -> y0, y1, x0, x1


def breast_map(rim: float = 0.15, centre_y: float = 0.45, semi_y: float = 0.36, semi_x: float = 0.55):
    """Normalised depth into a half-ellipse breast on the left edge: 1 at the chest wall line, 0 at the skin,
    negative outside; and the breast as a boolean map."""
    rows, cols = np.mgrid[0:H, 0:W]
    radius = np.sqrt((cols / (semi_x * W)) ** 2 + ((rows - centre_y * H) / (semi_y * H)) ** 2)
    return 1.0 - radius, radius < 1.0


def tissue(depth: np.ndarray, inside: np.ndarray, base: float, dense: float, rim: float, rng) -> np.ndarray:
    """Dense tissue inside, a fatty band of width `rim` (in depth units) rising from just above `base` at the
    skin line to a third of the way to `dense`: far below any threshold that splits dense from fatty tissue."""
    fatty = base * 1.06 + (dense - base) * 0.33 * np.clip(depth / rim, 0, 1)
    core = dense * (1 + 0.1 * rng.standard_normal(depth.shape))
    return np.where(inside, np.where(depth < rim, fatty, core), 0.0)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def scanned_film(seed: int = 0, *, off_top: bool = False, glow_border: bool = True) -> Film:
    """uint16 film: uneven film base (3000-3600) with grain, the breast with its faint rim (and a pectoral
    triangle when `off_top`, the breast then running off the top edge), a bright label, a translucent tape
    strip, a scanner border with its glow along the right edge and a thin one along the bottom."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:H, 0:W]
    base = 3000 + 600 * cols / W + 60 * rng.standard_normal((H, W))  # film base: not zero, not flat
    depth, inside = breast_map(centre_y=0.3 if off_top else 0.45, semi_y=0.45 if off_top else 0.36)
    image = np.where(inside, tissue(depth, inside, 3000, 20000, 0.15, rng), base)
    if off_top:  # pectoral muscle: a bright triangle in the upper chest-wall corner, part of the breast
        pectoral = (cols / (0.3 * W) + rows / (0.5 * H)) < 1
        image[pectoral] = np.maximum(image[pectoral], 26000)
    artefacts = {"label": (int(0.06 * H), int(0.12 * H), int(0.72 * W), int(0.90 * W)),
                 "tape": (int(0.80 * H), int(0.92 * H), int(0.60 * W), int(0.88 * W))}
    y0, y1, x0, x1 = artefacts["label"]
    strokes = (rows[y0:y1, x0:x1] // 8 + cols[y0:y1, x0:x1] // 12) % 3 == 0  # letter-like strokes
    image[y0:y1, x0:x1][strokes] = 60000
    y0, y1, x0, x1 = artefacts["tape"]
    image[y0:y1, x0:x1] += 2500  # tape: more film density over its whole area, film base showing through
    if glow_border:
        strip = int(0.02 * W)
        glow = np.clip(1 - (W - 1 - cols) / (0.06 * W), 0, 1) ** 2 * 9000  # scanner flare fading into the film
        image = np.maximum(image, base + glow)
        image[:, W - strip:] = 50000
        image[H - int(0.008 * H):, :] = 45000
        artefacts["border"] = (0, H, W - strip, W)
    return Film(image.clip(0, 65535).astype(np.uint16), box_of(inside), artefacts)


def digital_mammogram(seed: int = 0) -> Film:
    """INbreast-like: zero background, 14-bit tissue with quantum noise, the same faint fatty rim."""
    rng = np.random.default_rng(seed)
    depth, inside = breast_map()
    image = tissue(depth, inside, 200, 3000, 0.15, rng)
    image = np.where(inside, rng.poisson(np.clip(image, 0, None)), 0)
    return Film(image.clip(0, 16383).astype(np.uint16), box_of(inside), {})


def held(box, truth) -> tuple[float, float]:
    height = max(0, min(box[1], truth[1]) - max(box[0], truth[0])) / (truth[1] - truth[0])
    width = max(0, min(box[3], truth[3]) - max(box[2], truth[2])) / (truth[3] - truth[2])
    return height, width


def overlaps(box, other) -> bool:
    return box[0] < other[1] and other[0] < box[1] and box[2] < other[3] and other[2] < box[3]


def check(film: Film) -> tuple[int, int, int, int]:
    box = find_breast(film.image).box
    height, width = held(box, film.breast)
    assert height >= 0.98 and width >= 0.98, f"breast {film.breast}, found {box}: held {height:.3f} x {width:.3f}"
    for name, where in film.artefacts.items():
        assert not overlaps(box, where), f"the crop {box} reaches the {name} at {where}"
    # and no more than a sliver of background around the breast (the crop must stay a breast crop)
    assert (box[1] - box[0]) <= 1.05 * (film.breast[1] - film.breast[0]) + 0.02 * H
    assert (box[3] - box[2]) <= 1.05 * (film.breast[3] - film.breast[2]) + 0.02 * W
    return box


@pytest.mark.parametrize("seed", [0, 1])
def test_label_tape_and_uneven_film_base_stay_outside(seed):
    film = scanned_film(seed, glow_border=False)
    assert film.image[film.image < 10000].min() > 2500  # the film base is far from zero
    check(film)


def test_the_faint_fatty_rim_up_to_the_skin_line_is_breast():
    film = scanned_film(2, glow_border=False)
    y0, y1, x0, x1 = film.breast
    rim_row = film.image[(y0 + y1) // 2, :x1]
    assert rim_row[-5:].mean() < 1.1 * np.median(film.image[:, x1 + 20:x1 + 60])  # the rim is faint indeed
    box = check(film)
    assert box[3] >= x1 - 0.01 * W


def test_a_scanner_border_with_its_glow_is_not_breast():
    check(scanned_film(3, glow_border=True))


def test_a_breast_running_off_the_top_edge_keeps_that_edge_and_its_pectoral_muscle():
    film = scanned_film(4, off_top=True)
    assert film.breast[0] == 0
    box = check(film)
    assert box[0] == 0 and box[2] == 0


def test_digital_mammogram_with_zero_background():
    film = digital_mammogram(5)
    assert (film.image == 0).mean() > 0.4
    check(film)
