"""Weak-Only: one U-Net trained on box-derived targets only (every training image is weak).

Paper: Xiong et al., ISBI 2024, §3.3 ("Weak-Only (training with weakly labeled samples
only)") and Table 1 (row "Weak-Only", 0% strong / 100% weak). Runs at strong_fraction 0.
Follows the paper: one U-Net, ResNet encoder, only box labels, the common protocol
(Adam, poly decay, flips).
Ours, where the paper is silent (each an option below):
- `box_target`: how a box becomes a pixel target: "filled" (default, the filled box),
  "ellipse" (the ellipse inscribed in each box) or "grabcut" (OpenCV GrabCut inside each
  box), see benchmark.nn.box_targets. Non-filled targets are computed once, before training,
  on the unflipped training images and registered as the training-set layer "box_target",
  so batches carry them flipped with their images; nothing of it is needed to predict.
- `loss`: "structure" (the F3Net loss, as Strong-Only, so the rows differ only in the
  labels they use); "bce_dice" and "bce" are options. `bce_weighting`: see benchmark.nn.losses.
- Every image of a batch is supervised by its box target; the loss terms are named
  "weak_<term>". Masks are never read.
"""
from __future__ import annotations

import torch

from benchmark.nn.box_targets import BOX_METHOD_CHOICES, box_target_of, prefixed, register_box_target
from benchmark.nn.losses import mask_loss
from benchmark.nn.networks import build_unet
from methods import register
from methods.base import Batch, SegmentationMethod, TrainContext


@register
class WeakOnly(SegmentationMethod):
    display_name = "Weak-Only"
    uses_strong = False
    uses_weak = True
    default_options = {"box_target": "filled", "loss": "structure", "bce_weighting": "weighted"}
    option_choices = BOX_METHOD_CHOICES

    def build(self) -> None:
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
