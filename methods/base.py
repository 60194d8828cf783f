"""The contract every method implements, and the batch it receives. Nothing else.

A method builds its network(s) in `build`, turns one batch into named loss terms in
`training_step` (the trainer back-propagates their sum), and returns segmentation
logits in `predict`. Optional hooks let a method run extra stages inside its own run
(an ancillary model, per-image weights) without the trainer knowing it by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class Batch:
    """One training batch, already on the training device.

    images:    (B, 1, H, W) float, normalised
    masks:     (B, 1, H, W) float {0, 1}; all zeros for weak images (their mask is not a label)
    boxes:     (B, 1, H, W) float {0, 1}: filled boxes (the weak label); 1 - boxes is the paper's y^w
    is_strong: (B,) bool: which images carry a mask label
    indices:   (B,) long: positions in the training set, stable across steps (for per-image state)
    """

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    is_strong: torch.Tensor
    indices: torch.Tensor


class SegmentationMethod(nn.Module):
    """Base class of every method; subclasses live in methods/<name>.py and use @register."""

    display_name: ClassVar[str] = ""  # the row name in the paper's tables, e.g. "Strong-Only"
    uses_strong: ClassVar[bool] = True  # trains on strong (mask) images
    uses_weak: ClassVar[bool] = False  # trains on weak (box) images
    default_options: ClassVar[dict[str, Any]] = {}  # every option of the method, with its default
    registry_name: ClassVar[str] = ""  # set by @register: the file name

    def __init__(self, model_params: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        super().__init__()
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            known = ", ".join(sorted(self.default_options)) or "(none)"
            raise ValueError(f"method {self.registry_name or type(self).__name__}: unknown option(s) {unknown}; "
                             f"known options: {known}.")
        self.model_params = dict(model_params)
        self.options = {**self.default_options, **options}
        self.build()

    def build(self) -> None:
        """Create the network(s) as attributes of self."""
        raise NotImplementedError

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for one batch; the trainer minimises their sum."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, 1, H, W) for normalised images (B, 1, H, W)."""
        raise NotImplementedError

    # Optional hooks -----------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """Called after each epoch (0-based `epoch`), e.g. to decay a mixing weight."""
