"""The contract every method implements, and the batch it receives. Nothing else.

A method builds its network(s) in `build`, turns one batch into named loss terms in
`training_step` (the trainer back-propagates their sum), and returns segmentation
logits in `predict`. Optional hooks let a method run extra stages inside its own run
(an ancillary model, per-image weights) without the trainer knowing it by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:  # only for type hints: methods never import the trainer
    from benchmark.sampling import BatchSampler, TrainingSet


@dataclass
class Batch:
    """One training batch, already on the training device.

    images:    (B, 1, H, W) float, normalised
    masks:     (B, 1, H, W) float {0, 1}; all zeros for weak images (their mask is not a label)
    boxes:     (B, 1, H, W) float {0, 1}: filled boxes (the weak label); 1 - boxes is the paper's y^w
    is_strong: (B,) bool: which images carry a mask label
    indices:   (B,) long: positions in the training set, stable across steps (for per-image state)
    extra:     name -> (B, 1, H, W) float: per-image layers a method registered on the training set
               (e.g. a box-derived target), gathered and flipped with the batch
    """

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    is_strong: torch.Tensor
    indices: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainContext:
    """What a method may use before training starts (`on_train_start`): the data and the protocol.

    training_set: every training image of the run on the device (`.images`, `.masks`, `.boxes`
                  uint8 (N, 1, H, W), `.is_strong` (N,) bool); `register_layer` adds a per-image layer
    make_sampler: (uses_strong, uses_weak, seed) -> a BatchSampler over the same set, for extra stages
    train_params: params.yaml `train`; total_steps / steps_per_epoch / epochs: the run's schedule
    learning_rate: global step -> the optimiser's learning rate during that step (None: constant, `train.lr`)
    """

    training_set: "TrainingSet"
    make_sampler: Callable[[bool, bool, int], "BatchSampler"]
    train_params: dict[str, Any]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    seed: int
    learning_rate: Callable[[int], float] | None = None

    def lr_at(self, step: int) -> float:
        return self.learning_rate(step) if self.learning_rate is not None else float(self.train_params["lr"])

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


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
        """Called once before the first step, e.g. to train an ancillary model or register targets."""

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
