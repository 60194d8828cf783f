"""Strong-Weak: a shared encoder with two identical decoder branches, one per label kind.

Source: Luo & Yang, "Semi-supervised semantic segmentation via strong-weak dual-branch
network", ECCV 2020 (reference [15] of the seed paper; row "Strong-Weak" of Xiong et al.,
ISBI 2024, Table 1, 10% strong / 90% weak). No code was released; this is our
re-implementation.

Follows the source:
- a backbone shared by both label kinds, optionally followed by a shared "neck" of a few
  conv layers, then two branches of identical structure;
- the strong branch is trained only on strong images with their pixel masks, the weak
  branch only on weak images with their proxy labels (here: targets made from boxes), so
  inaccurate weak labels cannot reach the strong branch except through the shared layers;
- every batch mixes both kinds, the (few) strong images over-sampled;
- only the strong branch predicts at test time (the weak branch is dropped).

Our reconstruction (each an option below, unless it is the shared protocol):
- Network: the project's ResNet encoder (build_encoder) instead of the source's VGG-16,
  and each branch a full U-Net decoder + 1-logit head (UnetBranch) reading the shared
  skip features, as the seed paper's own decoders do; the source's branches are DeepLab
  style conv heads.
- `neck_layers` (0-3, default 1): shared 3x3 conv + BN + ReLU layers (channels kept) on the
  deepest encoder feature only, skip features stay raw; 0 is no neck (the seed paper's U-Net
  has none). Default 1, the source's shared neck, the reference of the baseline_readings study
  (studies/baseline_readings/report.md: 192 px, 900 fresh held-out images, rule of issue 28):
  held-out Dice 51.94 +- 1.37 (5 seeds); no neck 51.74 +- 4.32, paired -0.04 +- 1.99 (SE,
  3 seeds): the reference stays.
- `branch_inputs`: "own" (default): each branch forwards only its own kind of images, so
  its batch-norm statistics, too, come only from that kind; "all": both branches forward
  the whole batch and the other kind is masked out by per-image loss weights. Same study:
  "all" 53.22 +- 1.71, paired +1.27 +- 0.69 (SE) after 5 seeds, below the rule's 2 SE: the
  reference "own" stays.
- `loss`: "structure" (F3Net loss, as Strong-Only; the source uses cross-entropy),
  "bce_dice" or "bce"; `bce_weighting` as in benchmark.nn.losses. Terms are named
  "strong_<term>" and "weak_<term>"; each is the per-image mean over its own kind (zero when
  a batch lacks that kind). `weak_weight` (default 1.0) scales the weak terms: the total
  is strong + weak_weight * weak.
- `box_target`: "filled" (default), "ellipse" or "grabcut" (benchmark.nn.box_targets),
  computed once before training for the weak images and carried by the batches as the
  training-set layer "box_target" (flipped with its image); not needed to predict.
- Protocol: the share of strong images in a batch is the shared train.strong_share; the
  common protocol (Adam at one lr, poly decay, flips, its epochs) replaces the source's
  Adam 5e-6 backbone / 1e-4 branches for 20 epochs.
"""
from __future__ import annotations

import torch
from segmentation_models_pytorch.base import initialization as smp_init
from torch import nn

from benchmark.nn.box_targets import BOX_METHOD_CHOICES, box_target_of, prefixed, register_box_target
from benchmark.nn.losses import mask_loss
from benchmark.nn.networks import UnetBranch, build_encoder
from methods import register
from methods.base import Batch, SegmentationMethod, TrainContext

MAX_NECK_LAYERS = 3
BRANCH_INPUTS = ("own", "all")
TERM_NAMES = {"structure": ("structure",), "bce_dice": ("bce", "dice"), "bce": ("bce",)}


def build_neck(channels: int, layers: int) -> nn.Sequential:
    """`layers` shared 3x3 conv + BN + ReLU blocks keeping `channels`; an empty (identity) Sequential for 0."""
    blocks = []
    for _ in range(layers):
        blocks += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU(inplace=True)]
    neck = nn.Sequential(*blocks)
    smp_init.initialize_decoder(neck)
    return neck


@register
class StrongWeak(SegmentationMethod):
    display_name = "Strong-Weak"
    uses_strong = True
    uses_weak = True
    default_options = {"neck_layers": 1, "branch_inputs": "own", "weak_weight": 1.0, "box_target": "filled",
                       "loss": "structure", "bce_weighting": "weighted"}
    option_choices = {**BOX_METHOD_CHOICES, "branch_inputs": BRANCH_INPUTS}

    def build(self) -> None:
        neck_layers = self.options["neck_layers"]
        if isinstance(neck_layers, bool) or not isinstance(neck_layers, int) \
                or not 0 <= neck_layers <= MAX_NECK_LAYERS:
            raise ValueError(f"option neck_layers must be an integer from 0 to {MAX_NECK_LAYERS}; got {neck_layers!r}")
        if not float(self.options["weak_weight"]) >= 0:
            raise ValueError(f"option weak_weight must be >= 0; got {self.options['weak_weight']!r}")
        self.encoder = build_encoder(self.model_params)
        channels = list(self.encoder.out_channels)
        decoder_channels = list(self.model_params["decoder_channels"])
        self.neck = build_neck(channels[-1], neck_layers)
        self.strong_branch = UnetBranch(channels, decoder_channels)
        self.weak_branch = UnetBranch(channels, decoder_channels)

    def on_train_start(self, context: TrainContext) -> None:
        register_box_target(context, self.options["box_target"], which=~context.training_set.is_strong)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Shared encoder features, the deepest through the shared neck."""
        features = list(self.encoder(images))
        features[-1] = self.neck(features[-1])
        return features

    def branch_terms(self, branch: nn.Module, features: list[torch.Tensor], target: torch.Tensor,
                     selected: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of one branch over the `selected` images (per-image mean over them; zero if none)."""
        kind, weighting = self.options["loss"], self.options["bce_weighting"]
        if self.options["branch_inputs"] == "all":
            return mask_loss(branch(features), target, kind, weighting, weight=selected.to(features[-1].dtype))
        index = selected.nonzero().flatten()
        if len(index) == 0:  # no image of this kind in the batch: a zero term on the graph, never NaN
            zero = features[-1].sum() * 0.0
            return {name: zero for name in TERM_NAMES[kind]}
        logits = branch([feature.index_select(0, index) for feature in features])
        return mask_loss(logits, target.index_select(0, index), kind, weighting)

    def weak_target(self, batch: Batch) -> torch.Tensor:
        """The weak branch's target (B, 1, H, W): the box target of every image (only weak ones are used)."""
        return box_target_of(batch, self.options["box_target"])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        features = self.features(batch.images)
        strong = self.branch_terms(self.strong_branch, features, batch.masks, batch.is_strong)
        weak = self.branch_terms(self.weak_branch, features, self.weak_target(batch), ~batch.is_strong)
        return {**prefixed("strong", strong), **prefixed("weak", weak, float(self.options["weak_weight"]))}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.strong_branch(self.features(images))
