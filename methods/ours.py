"""Ours: the paper's hybrid-supervised framework (task + feature disentanglement, spatial prompting).

Paper: Xiong, Wang, Li, Li, "Semi- and weakly-supervised learning for mammogram mass segmentation
with limited annotations", ISBI 2024 (arXiv 2403.09315), §2 and Eqs. 1-3; rows "Ours" of Table 1
and Table 2 (strong-label sweep and the ablations w/o FD, w/o SPM, w/o PL). No code was released;
this is our re-implementation.

Follows the paper:
- a shared encoder Enc_s (the configured ResNet, `model.encoder`) read by two U-Net decoders: the
  segmentation decoder Dec_s, supervised by the masks y^s of the strong images only, and the auxiliary
  background decoder Dec_a, supervised by the reversed box label y^w = 1 - boxes on every image (a strong
  image uses the box of its own mask, as the prepared data already holds it) [§2.1];
- feature-level disentanglement (FD): the encoder feature f is split along channels into two halves,
  each half goes through its own 1x1 convolution back to the full channel count: f_r (lesion-related)
  feeds Dec_s, f_o (others) feeds Dec_a [§2.2];
- spatial prompting module (SPM): the uncertainty map U = 1 - sigmoid(Dec_a logits) is multiplied into
  f_r before Dec_s; order encoder -> FD -> Dec_a -> U -> f_r * U -> Dec_s [§2.3];
- loss (Eq. 3): L = L_ppa(seg) + L_ppa(aux) + L_percept(aux); L_ppa is the F3Net pixel-position-aware
  structure loss (Eq. 1, `benchmark.nn.losses.structure_loss`), L_percept = 1 - TN / (TN + FP) (Eq. 2,
  `benchmark.nn.losses.perception_loss`), where the aux logit is the probability of *definite background*.
  The terms are returned separately ("seg_ppa", "aux_ppa", "aux_percept"), so the training log shows them;
- prediction: Dec_s logits (Dec_a still runs, since the prompt needs it).

Ours, where the paper is silent (each is an option unless stated):
- `fd_levels`: where FD splits. "deepest" (default): only the stride-32 feature (512 channels on
  ResNet-18/34), the skip connections are shared by both decoders unchanged; "all": every skip level
  (strides 2..32), never the stride-1 input identity (the U-Net decoder does not read it).
- the FD convolutions are plain 1x1 convolutions with bias (PyTorch default initialisation), no norm or
  activation; odd channel counts split as floor / ceil (not an option).
- `prompt_levels`: which features U multiplies (the paper: "multiplied with lesion-related features f_r",
  no level named). "fd" (default): the levels `fd_levels` names (with FD off, the raw feature there), so with
  `fd_levels: deepest` the literal reading: the paper's f read as the encoder's output, FD and the prompt on
  the stride-32 f_r only; "all": every skip level (strides 2..32), f_r where FD splits and the raw feature
  elsewhere; "deepest": only the stride-32 feature. Which reading runs at which size, and why:
  - 192 px (the default) and 352 px (the paper profile): the literal reading. A mass box (median side 32 px
    synthetic at 192, 34 px real CBIS-DDSM at 352) spans about one cell of the stride-32 grid (6 x 6,
    11 x 11) and fills a median 0.54 of its best cell in both (measurements/prompt_grid_2026-12-07.md), so
    a perfect U reaches f_r there as in the paper's geometry. studies/scale/report.md raced it, as the
    reference, against "all" under the rule (3 seeds, 900 fresh held-out images, 12 epochs, fp32): literal
    52.27 +- 2.90 held-out Dice, "all" 53.73 +- 0.62, a paired gain of +1.46 +- 1.60 SE, below 1 SE, so the
    reference stays.
  - 96 px (`profiles/quick.yaml`, which sets `prompt_levels: all` on its Ours runs): "all". The literal
    reading is degenerate there: the stride-32 feature is 3 x 3, no mass box covers one of its cells, so
    area-pooling even a perfect U leaves at most ~0.2 there (median) and the prompt removes ~99% of that
    feature's energy instead of pointing at the mass. studies/fair_comparison/report.md (3 seeds, 900 fresh
    held-out images, 12 epochs) ruled it out before the runs and chose among the others: "all" with
    `fd_levels: deepest` 38.68 +- 1.01 held-out Dice, `fd_levels: all` 38.63 +- 0.84 (-0.05, a tie: the
    simpler deepest split stays); the degenerate reading scored 35.56 +- 2.36. In the scale study "all"
    scored 39.42 +- 0.88 at 96 px.
- `prompt_resize`: how the full-resolution U is brought to a feature map's size: "area" (default: mean over
  each cell, so a small uncertain area is never skipped by the subsampling) or "bilinear".
- `detach_prompt`: false (default) lets the segmentation loss back-propagate through U into Dec_a and
  f_o; true stops it there.
- soft counts in Eq. 2: TN = sum((1-p)(1-y^w)), FP = sum(p(1-y^w)) over the pixels inside the boxes,
  per image, then the batch mean; an image without any box pixel contributes 0 (see benchmark.nn.losses).
- the segmentation loss inside a mixed batch is the mean of L_ppa over the strong images of the batch
  (per-image weight = is_strong; 0 when a batch has none). Dec_s still runs on every image of the batch
  (one forward pass over the concatenated batch), so its batch-norm statistics see strong and weak images.
- batch composition (the trainer's, `train.strong_share`, default half of every batch strong, the strong
  set re-sampled as needed): the paper only says both kinds are used.
- `bce_weighting`: "weighted" (default, Eq. 1's weighted BCE) or "released" (F3Net's released code,
  plain mean BCE); applies to both L_ppa terms.
- the ablations of Table 2 are the switches `feature_disentangle` (w/o FD: both decoders read the raw f),
  `spatial_prompt` (w/o SPM: no multiplication) and `perception_loss` (w/o PL: the term is dropped).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.losses import perception_loss, structure_loss
from benchmark.nn.networks import UnetBranch, build_encoder
from methods import register
from methods.base import Batch, SegmentationMethod

_LEVEL_CHOICES = ("deepest", "all")


class FeatureSplit(nn.Module):
    """FD at one level: channels split in two halves, each 1x1-convolved back to the full count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        self.to_related = nn.Conv2d(self.split, channels, kernel_size=1)
        self.to_other = nn.Conv2d(channels - self.split, channels, kernel_size=1)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = feature[:, :self.split], feature[:, self.split:]
        return self.to_related(first), self.to_other(second)


@register
class Ours(SegmentationMethod):
    display_name = "Ours"
    uses_strong = True
    uses_weak = True
    option_choices = {"fd_levels": _LEVEL_CHOICES, "prompt_levels": ("fd",) + _LEVEL_CHOICES,
                      "prompt_resize": ("area", "bilinear"), "bce_weighting": ("weighted", "released")}
    default_options = {
        "feature_disentangle": True,   # FD (Table 2: w/o FD = false)
        "spatial_prompt": True,        # SPM (Table 2: w/o SPM = false)
        "perception_loss": True,       # PL, Eq. 2 (Table 2: w/o PL = false)
        "fd_levels": "deepest",        # deepest | all
        "prompt_levels": "fd",         # fd | all | deepest (fd with fd_levels deepest: the literal reading)
        "prompt_resize": "area",       # area | bilinear
        "detach_prompt": False,
        "bce_weighting": "weighted",   # weighted | released
    }

    def build(self) -> None:
        opts = self.options
        for key in ("feature_disentangle", "spatial_prompt", "perception_loss", "detach_prompt"):
            if not isinstance(opts[key], bool):
                raise ValueError(f"option {key} must be true or false, got {opts[key]!r}")

        self.encoder = build_encoder(self.model_params)
        channels = list(self.encoder.out_channels)  # stride 1 (input identity), 2, 4, 8, 16, 32
        decoder_channels = list(self.model_params["decoder_channels"])
        self.seg_branch = UnetBranch(channels, decoder_channels)  # Dec_s
        self.aux_branch = UnetBranch(channels, decoder_channels)  # Dec_a
        self.fd_level_indices = self._levels(opts["fd_levels"], len(channels))
        prompt = opts["fd_levels"] if opts["prompt_levels"] == "fd" else opts["prompt_levels"]
        self.prompt_level_indices = self._levels(prompt, len(channels)) if opts["spatial_prompt"] else []
        self.fd = nn.ModuleDict({str(level): FeatureSplit(channels[level]) for level in self.fd_level_indices}) \
            if opts["feature_disentangle"] else None

    @staticmethod
    def _levels(which: str, n_features: int) -> list[int]:
        """Indices into the encoder's feature list; index 0 (the input itself) is never used."""
        return [n_features - 1] if which == "deepest" else list(range(1, n_features))

    def _resize(self, uncertainty: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if uncertainty.shape[-2:] == size:
            return uncertainty
        if self.options["prompt_resize"] == "area":
            return F.adaptive_avg_pool2d(uncertainty, size)
        return F.interpolate(uncertainty, size=size, mode="bilinear", align_corners=False)

    def forward_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Dec_s logits, Dec_a logits): encoder -> FD -> Dec_a -> U -> f_r * U -> Dec_s."""
        features = self.encoder(images)
        seg_features, aux_features = list(features), list(features)
        if self.fd is not None:
            for level in self.fd_level_indices:
                seg_features[level], aux_features[level] = self.fd[str(level)](features[level])
        aux_logits = self.aux_branch(aux_features)
        if self.prompt_level_indices:
            uncertainty = 1 - torch.sigmoid(aux_logits)  # high where Dec_a sees no definite background
            if self.options["detach_prompt"]:
                uncertainty = uncertainty.detach()
            for level in self.prompt_level_indices:
                seg_features[level] = seg_features[level] * self._resize(uncertainty, seg_features[level].shape[-2:])
        seg_logits = self.seg_branch(seg_features)
        return seg_logits, aux_logits

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        seg_logits, aux_logits = self.forward_both(batch.images)
        reversed_box = 1 - batch.boxes  # y^w: 1 = definite background
        weighting = self.options["bce_weighting"]
        terms = {
            "seg_ppa": structure_loss(seg_logits, batch.masks, weight=batch.is_strong, bce_weighting=weighting),
            "aux_ppa": structure_loss(aux_logits, reversed_box, bce_weighting=weighting),
        }
        if self.options["perception_loss"]:
            terms["aux_percept"] = perception_loss(aux_logits, reversed_box)
        return terms

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_both(images)[0]
