"""Turning weak labels (boxes) into pixel targets, for the baselines that train on boxes.

The paper does not say how its baselines used boxes; the default is the filled box
(`filled`). Options: the ellipse inscribed in each box (`ellipse`), and OpenCV's GrabCut
initialised with each box (`grabcut`; pixels outside the box stay background, and a box
where GrabCut finds nothing falls back to its inscribed ellipse).

Methods compute non-filled targets once in `on_train_start` (`register_box_target`) and read
them, flipped with their batch, through `box_target_of`.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from benchmark.contract import Batch, TrainContext
from benchmark.data.prepared import component_boxes

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


BOX_TARGET_LAYER = "box_target"
LOSS_KINDS = ("structure", "bce_dice", "bce")
BCE_WEIGHTINGS = ("weighted", "released")
# option_choices shared by the single-network box baselines
BOX_METHOD_CHOICES = {"box_target": KINDS, "loss": LOSS_KINDS, "bce_weighting": BCE_WEIGHTINGS}


def register_box_target(context: TrainContext, kind: str, which: torch.Tensor | None = None) -> None:
    """Compute the `kind` box target once and register it as the layer "box_target".

    `which` (N,) bool picks the images that need it (default all); the others keep their
    filled box, which no method of this family reads. "filled" registers nothing:
    `batch.boxes` already is that target.
    """
    if kind not in KINDS:
        raise ValueError(f"box_target must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "filled":
        return
    training_set = context.training_set
    images = training_set.images[:, 0].cpu().numpy()
    boxes = training_set.boxes[:, 0].cpu().numpy()
    targets = (boxes > 0).astype(np.uint8)
    selected = np.ones(len(images), bool) if which is None else np.asarray(which.cpu(), bool)
    if selected.any():
        targets[selected] = box_targets(images[selected], boxes[selected], kind)
    training_set.register_layer(BOX_TARGET_LAYER, torch.from_numpy(targets))


def box_target_of(batch: Batch, kind: str) -> torch.Tensor:
    """The (B, 1, H, W) box target of every image of the batch (flipped with it)."""
    if kind == "filled":
        return batch.boxes
    if BOX_TARGET_LAYER not in batch.extra:
        raise RuntimeError(f"box_target {kind!r} needs the '{BOX_TARGET_LAYER}' layer, which on_train_start "
                           "registers on the training set; run on_train_start before training_step.")
    return batch.extra[BOX_TARGET_LAYER]


def prefixed(prefix: str, terms: dict[str, torch.Tensor], scale: torch.Tensor | float = 1.0
             ) -> dict[str, torch.Tensor]:
    return {f"{prefix}_{name}": value * scale for name, value in terms.items()}
