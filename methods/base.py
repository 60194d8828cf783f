"""The contract every method implements (the batch it receives is in benchmark/contract.py). Nothing else.

A method builds its network(s) in `build`, turns one batch into named loss terms in
`training_step` (the trainer back-propagates their sum), and returns segmentation
logits in `predict`. Optional hooks let a method run extra stages inside its own run
(an ancillary model, per-image weights) without the trainer knowing it by name.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.contract import Batch, TrainContext

__all__ = ["Batch", "TrainContext", "OptionError", "SegmentationMethod"]


class OptionError(ValueError):
    """A method option (params.yaml runs.<run>.options.<key>) that the method does not accept."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"option {key} = {value!r}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class SegmentationMethod(nn.Module):
    """Base class of every method; subclasses live in methods/<name>.py and use @register."""

    display_name: ClassVar[str] = ""  # the row name in the paper's tables, e.g. "Strong-Only"
    uses_strong: ClassVar[bool] = True  # trains on strong (mask) images
    uses_weak: ClassVar[bool] = False  # trains on weak (box) images
    default_options: ClassVar[dict[str, Any]] = {}  # every option of the method, with its default
    option_choices: ClassVar[dict[str, tuple]] = {}  # options restricted to a set of values, checked on build
    registry_name: ClassVar[str] = ""  # set by @register: the file name

    def __init__(self, model_params: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        super().__init__()
        options = dict(options or {})
        name = self.registry_name or type(self).__name__
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            known = ", ".join(sorted(self.default_options)) or "(none)"
            raise OptionError(unknown[0], options[unknown[0]], f"unknown option of method {name}; its options: {known}")
        self.model_params = dict(model_params)
        self.options = {**self.default_options, **options}
        for key, default in self.default_options.items():
            if isinstance(default, bool) and not isinstance(self.options[key], bool):
                raise OptionError(key, self.options[key], "must be true or false")
        for key, allowed in self.option_choices.items():
            if self.options[key] not in allowed:
                raise OptionError(key, self.options[key], f"must be one of {', '.join(map(str, allowed))}")
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

    # Optional hooks: a method's extra stages stay inside its run ------------------------------
    def on_train_start(self, context: TrainContext) -> None:
        """Called once before the first step, e.g. to train an ancillary model or register targets. When
        `context.resuming`, the checkpoint restored next holds the weights: skip a stage that only trains them."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after every optimiser step (0-based global `step`), e.g. for an EMA update."""

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """Called after each epoch (0-based `epoch`), e.g. to decay a mixing weight."""

    # Checkpoints: state that changes during training but is not in state_dict() ----------------
    def training_state(self) -> dict[str, Any]:
        """Counters, per-image weights, samplers... a resumed run needs to continue exactly (tensors,
        numbers, lists, dicts only). Parameters and persistent buffers are saved by the trainer already."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what `training_state` returned; called after `on_train_start` when a run resumes."""
