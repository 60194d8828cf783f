"""Strong-Only: a U-Net trained on the pixel masks of the strong images only.

Paper: Xiong et al., ISBI 2024, Table 1 (rows "Strong-Only" at 100% and 10% strong).
Follows the paper: one U-Net, ResNet encoder, only mask-labelled images, the common
protocol (Adam, poly decay, flips).
Ours, where the paper is silent:
- `loss`: "structure" (the F3Net pixel-position-aware loss, the same loss the paper's own
  segmentation branch uses, so the comparison isolates the use of boxes); "bce_dice" and
  "bce" are options;
- `bce_weighting`: "weighted" (Eq. 1) or "released" (F3Net's code), see benchmark.nn.losses.
"""
from __future__ import annotations

import torch

from benchmark.nn.losses import mask_loss
from benchmark.nn.networks import build_unet
from methods import register
from methods.base import Batch, SegmentationMethod


@register
class StrongOnly(SegmentationMethod):
    display_name = "Strong-Only"
    uses_strong = True
    uses_weak = False
    default_options = {"loss": "structure", "bce_weighting": "weighted"}

    def build(self) -> None:
        self.net = build_unet(self.model_params)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.net(batch.images)
        return mask_loss(logits, batch.masks, self.options["loss"], self.options["bce_weighting"])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
