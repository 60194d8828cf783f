"""Weak-Only: one U-Net trained on box-derived targets only (every training image is weak).

Paper: Xiong et al., ISBI 2024, §3.3 ("Weak-Only (training with weakly labeled samples
only)") and Table 1 (row "Weak-Only", 0% strong / 100% weak). Runs at strong_fraction 0.
Follows the paper: one U-Net, ResNet encoder, only box labels, the common protocol
(Adam, poly decay, flips).
Ours, where the paper is silent (each an option below):
- `box_target`: how a box becomes a pixel target: "filled" (default, the filled box),
  "ellipse" (the ellipse inscribed in each box) or "grabcut" (OpenCV GrabCut inside each
  box), see benchmark.box_targets. Non-filled targets are computed once, before training,
  on the unflipped training images and registered as the training-set layer "box_target",
  so batches carry them flipped with their images; nothing of it is needed to predict.
- `loss`: "structure" (the F3Net loss, as Strong-Only, so the rows differ only in the
  labels they use); "bce_dice" and "bce" are options. `bce_weighting`: see benchmark.losses.
- Every image of a batch is supervised by its box target; the loss terms are named
  "weak_<term>". Masks are never read.

This module also holds the box-target helpers that Vanilla-Hybrid and Strong-Weak share.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmark.box_targets import KINDS, box_targets
from benchmark.losses import mask_loss
from benchmark.networks import build_unet
from methods import register
from methods.base import Batch, SegmentationMethod, TrainContext

BOX_TARGET_LAYER = "box_target"
LOSS_KINDS = ("structure", "bce_dice", "bce")
BCE_WEIGHTINGS = ("weighted", "released")


def check_options(options: dict) -> None:
    """ValueError (named option) for a box target, loss or BCE weighting this family does not know."""
    for key, allowed in (("box_target", KINDS), ("loss", LOSS_KINDS), ("bce_weighting", BCE_WEIGHTINGS)):
        if key in options and options[key] not in allowed:
            raise ValueError(f"option {key} must be one of {', '.join(allowed)}; got {options[key]!r}")


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


@register
class WeakOnly(SegmentationMethod):
    display_name = "Weak-Only"
    uses_strong = False
    uses_weak = True
    default_options = {"box_target": "filled", "loss": "structure", "bce_weighting": "weighted"}

    def build(self) -> None:
        check_options(self.options)
        self.net = build_unet(self.model_params)

    def on_train_start(self, context: TrainContext) -> None:
        register_box_target(context, self.options["box_target"])

    def target(self, batch: Batch) -> torch.Tensor:
        return box_target_of(batch, self.options["box_target"])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.net(batch.images)
        terms = mask_loss(logits, self.target(batch), self.options["loss"], self.options["bce_weighting"])
        return prefixed("weak", terms)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
