"""Loss functions shared by every method (per-image, then averaged over the batch).

- `bce_loss`, `dice_loss`: plain pixel losses.
- `structure_loss`: the pixel-position-aware loss of F3Net (Wei et al., AAAI 2020), the
  paper's Eq. 1: weights w = 1 + 5 |avgpool_k(y) - y|; weighted BCE + weighted IoU.
  `bce_weighting="weighted"` follows Eq. 1; `"released"` reproduces F3Net's released code,
  whose BCE call passes the legacy `reduce='none'` and so returns the plain mean BCE.
  The window k is the protocol's `train.structure_window`, set once per training by the trainer
  (`structure_window(...)`, a context manager) so that every method gets the same one: "scaled"
  (default) keeps F3Net's geometry, 31 px at its 352 px input, as `scaled_window(size)` = the odd
  integer nearest 31 x size / 352, at least 3 (9 px at 96 px); an odd integer fixes it. At 96 px a
  fixed 31 px window spans a whole mass, and the weight is a flat ~4.8 over it instead of rising
  towards the boundary (centre 1.0, edge 3.5 at 352 px) - the emphasis Eq. 1 exists for.
- `mask_loss`: the named terms of a mask loss chosen by a method option.
- `perception_loss`: the paper's Eq. 2, 1 - TN / (TN + FP) for the auxiliary
  background branch, with soft counts over the pixels inside the boxes (y^w = 0).

Every loss accepts an optional per-image `weight` (B,) so methods can mask or re-weight
images (e.g. strong-only terms inside a mixed batch) without reshaping batches. Logits and
targets are cast to float32 first: under bf16 autocast the network's logits are bf16, and the
31x31 running sums and the per-image reductions need float32.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F

EPS = 1e-6
F3NET_WINDOW, F3NET_SIZE = 31, 352  # F3Net's avgpool window at its input size (and the paper's)
MIN_WINDOW = 3

_structure_window: ContextVar[str | int] = ContextVar("structure_window", default="scaled")


def scaled_window(size: int) -> int:
    """F3Net's 31 px window at 352 px, scaled to `size`: the nearest odd integer, at least 3."""
    return max(MIN_WINDOW, 2 * round((F3NET_WINDOW * size / F3NET_SIZE - 1) / 2) + 1)


def check_structure_window(value) -> str | int:
    """The valid `train.structure_window` values: "scaled" or an odd integer >= 3."""
    if value == "scaled" or (isinstance(value, int) and not isinstance(value, bool) and value >= MIN_WINDOW
                             and value % 2 == 1):
        return value
    raise ValueError(f"train.structure_window must be 'scaled' or an odd integer >= {MIN_WINDOW}; got {value!r}")


@contextlib.contextmanager
def structure_window(value: str | int) -> Iterator[None]:
    """Within this block, `structure_loss` without an explicit kernel uses window `value`."""
    token = _structure_window.set(check_structure_window(value))
    try:
        yield
    finally:
        _structure_window.reset(token)


def window_for(height: int, width: int) -> int:
    """The structure loss's window for a (height, width) target under the current setting."""
    setting = _structure_window.get()
    return scaled_window(min(height, width)) if setting == "scaled" else int(setting)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """float32 for bf16/fp16 (autocast outputs) and integer/bool inputs; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _reduce(per_image: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-image losses, optionally weighted; zero (with a gradient path) when all weights are 0."""
    if weight is None:
        return per_image.mean()
    weight = weight.to(per_image.dtype)
    return (per_image * weight).sum() / weight.sum().clamp_min(EPS)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    logits, target = full_precision(logits), full_precision(target)
    per_image = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return _reduce(per_image, weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    prob = torch.sigmoid(full_precision(logits)).flatten(1)
    target = target.flatten(1)
    per_image = 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return _reduce(per_image, weight)


def box_mean(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """avg_pool2d(x, kernel, stride 1, zero padding kernel // 2), via cumulative sums.

    The zero-padded window mean (count_include_pad) is a box filter, so running sums give it
    exactly (for 0/1 targets the sums are exact integers) at a cost independent of the kernel:
    F3Net's 31x31 pool otherwise dominates the loss's cost on a CPU.
    """
    pad = kernel // 2
    padded = F.pad(x, (pad + 1, pad, pad + 1, pad))
    rows = padded.cumsum(-1)
    rows = rows[..., kernel:] - rows[..., :-kernel]
    both = rows.cumsum(-2)
    both = both[..., kernel:, :] - both[..., :-kernel, :]
    return both / (kernel * kernel)


def structure_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   bce_weighting: str = "weighted", kernel: int | None = None, edge_gain: float = 5.0) -> torch.Tensor:
    """Eq. 1 per image, then the (weighted) batch mean; `kernel` None: the protocol's window (`window_for`)."""
    if bce_weighting not in ("weighted", "released"):
        raise ValueError(f"bce_weighting must be 'weighted' or 'released', got {bce_weighting!r}")
    logits, target = full_precision(logits), full_precision(target)
    kernel = window_for(*target.shape[-2:]) if kernel is None else kernel
    pixel_weight = 1 + edge_gain * torch.abs(box_mean(target, kernel) - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if bce_weighting == "weighted":
        wbce = (pixel_weight * bce).sum((2, 3)) / pixel_weight.sum((2, 3))
    else:
        wbce = bce.mean((2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target * pixel_weight).sum((2, 3))
    union = ((prob + target) * pixel_weight).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return _reduce((wbce + wiou).flatten(), weight)


def perception_loss(aux_logits: torch.Tensor, reversed_box: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - TN/(TN+FP) where positive = definite background (y^w = 1), counted inside the boxes (y^w = 0).

    An image whose box covers nothing (no uncertain pixels) contributes 0.
    """
    prob_background = torch.sigmoid(full_precision(aux_logits))
    uncertain = 1 - full_precision(reversed_box)
    true_negative = ((1 - prob_background) * uncertain).sum((1, 2, 3))
    per_image = 1 - true_negative / (uncertain.sum((1, 2, 3)) + EPS)
    per_image = torch.where(uncertain.sum((1, 2, 3)) > 0, per_image, torch.zeros_like(per_image))
    return _reduce(per_image, weight)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "structure", bce_weighting: str = "weighted",
              weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The named terms of a mask-supervised loss, chosen by a method option (`loss`)."""
    if kind == "structure":
        return {"structure": structure_loss(logits, target, weight, bce_weighting=bce_weighting)}
    if kind == "bce_dice":
        return {"bce": bce_loss(logits, target, weight), "dice": dice_loss(logits, target, weight)}
    if kind == "bce":
        return {"bce": bce_loss(logits, target, weight)}
    raise ValueError(f"loss must be one of structure, bce_dice, bce; got {kind!r}")
