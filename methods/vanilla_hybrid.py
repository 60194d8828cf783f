"""Vanilla-Hybrid: one U-Net on strong masks plus weak box targets, treated alike.

Paper: Xiong et al., ISBI 2024, §3.3 ("Vanilla-Hybrid (directly training with a mix of
strong and weak labels)") and Table 1 (row "Vanilla-Hybrid", 10% strong / 90% weak).
Follows the paper: one U-Net, ResNet encoder, strong images supervised by their masks and
weak images by a target made from their boxes, with no distinction between the two in
the loss; the common protocol (Adam, poly decay, flips).
Ours, where the paper is silent (each an option below, unless it is the shared protocol):
- `box_target`: "filled" (default), "ellipse" or "grabcut" (benchmark.nn.box_targets),
  computed once before training for the weak images and carried by the batches as the
  training-set layer "box_target" (flipped with its image); not needed to predict.
- `loss`: "structure" (F3Net loss, as Strong-Only), "bce_dice" or "bce"; `bce_weighting`
  as in benchmark.nn.losses.
- "Alike" means one per-image loss averaged over the whole batch. It is logged as two
  terms, "strong_<term>" and "weak_<term>": each kind's per-image mean (per-image weights
  is_strong / ~is_strong) scaled by that kind's share of the batch, so their sum is exactly
  the plain batch mean, and a batch without one kind gives a zero term.
- Batch composition is the shared sampler's (train.strong_share of every batch strong,
  the strong pool re-sampled), as for every hybrid row.
"""
from __future__ import annotations

import torch

from benchmark.nn.box_targets import BOX_METHOD_CHOICES, box_target_of, prefixed, register_box_target
from benchmark.nn.losses import mask_loss
from benchmark.nn.networks import build_unet
from methods import register
from methods.base import Batch, SegmentationMethod, TrainContext


@register
class VanillaHybrid(SegmentationMethod):
    display_name = "Vanilla-Hybrid"
    uses_strong = True
    uses_weak = True
    default_options = {"box_target": "filled", "loss": "structure", "bce_weighting": "weighted"}
    option_choices = BOX_METHOD_CHOICES

    def build(self) -> None:
        self.net = build_unet(self.model_params)

    def on_train_start(self, context: TrainContext) -> None:
        register_box_target(context, self.options["box_target"], which=~context.training_set.is_strong)

    def target(self, batch: Batch) -> torch.Tensor:
        """Mask for strong images, box target for weak ones (B, 1, H, W)."""
        strong = batch.is_strong[:, None, None, None]
        return torch.where(strong, batch.masks, box_target_of(batch, self.options["box_target"]))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.net(batch.images)
        target = self.target(batch)
        terms = {}
        for prefix, weight in (("strong", batch.is_strong), ("weak", ~batch.is_strong)):
            weight = weight.to(logits.dtype)
            kind_terms = mask_loss(logits, target, self.options["loss"], self.options["bce_weighting"],
                                   weight=weight)
            terms.update(prefixed(prefix, kind_terms, weight.sum() / len(weight)))
        return terms

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
