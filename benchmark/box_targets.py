"""Turning weak labels (boxes) into pixel targets, for the baselines that train on boxes.

The paper does not say how its baselines used boxes; the default is the filled box
(`filled`). Options: the ellipse inscribed in each box (`ellipse`), and OpenCV's GrabCut
initialised with each box (`grabcut`; pixels outside the box stay background, and a box
where GrabCut finds nothing falls back to its inscribed ellipse).
"""
from __future__ import annotations

import cv2
import numpy as np

from benchmark.data import component_boxes

KINDS = ("filled", "ellipse", "grabcut")
GRABCUT_ITERATIONS = 3


def _ellipse(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    ry, rx = max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _grabcut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    if x1 - x0 < 3 or y1 - y0 < 3:  # GrabCut needs some pixels inside and outside its rectangle
        return _ellipse(image.shape, box)
    labels = np.zeros(image.shape, np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    cv2.grabCut(rgb, labels, (x0, y0, x1 - x0, y1 - y0), background, foreground, GRABCUT_ITERATIONS,
                cv2.GC_INIT_WITH_RECT)
    inside = np.zeros(image.shape, bool)
    inside[y0:y1, x0:x1] = True
    result = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)) & inside
    return result if result.any() else _ellipse(image.shape, box)


def box_target(image: np.ndarray, box_map: np.ndarray, kind: str = "filled") -> np.ndarray:
    """uint8 {0,1} target (H, W) from one image's filled-box map, by `kind`."""
    if kind not in KINDS:
        raise ValueError(f"box target must be one of {KINDS}, got {kind!r}")
    if kind == "filled":
        return (box_map > 0).astype(np.uint8)
    target = np.zeros(box_map.shape, bool)
    for box in component_boxes(box_map):
        target |= _ellipse(box_map.shape, box) if kind == "ellipse" else _grabcut(image, box)
    return target.astype(np.uint8)


def box_targets(images: np.ndarray, box_maps: np.ndarray, kind: str = "filled") -> np.ndarray:
    """Targets (N, H, W) uint8 for uint8 images and box maps (N, H, W)."""
    return np.stack([box_target(image, boxes, kind) for image, boxes in zip(images, box_maps)]) \
        if len(images) else np.zeros_like(box_maps)
