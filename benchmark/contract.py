"""The types that pass between the trainer and a method: the batch, and what a method may use before training.

They live below both sides (methods/base.py and benchmark/training/ import them; neither imports the
other for them), so the method contract and the trainer that drives it form no import circle. The trainer's
training set and sampler satisfy the two protocols below; a method sees only what the protocols name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from tqdm import tqdm


class Sampler(Protocol):
    """Draws batches of training-set positions (`next`: positions and per-sample flips); resumable."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class TrainingImages(Protocol):
    """Every training image of a run on the training device, uint8 (N, 1, H, W) layers and the strong flags."""

    images: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    is_strong: torch.Tensor

    def __len__(self) -> int: ...

    def register_layer(self, name: str, values: Any) -> None: ...

    def batch(self, positions: torch.Tensor, flips: torch.Tensor) -> "Batch": ...


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
    resuming: the trainer restores this seed from a checkpoint right after the hook, so a stage whose result the
              checkpoint holds (weights, persistent buffers) need not run again; targets a method registers on
              the training set are not in it and must be registered either way
    stage_progress(total, stage): a progress bar for a method's own stage, on the seed's line
    """

    training_set: TrainingImages
    make_sampler: Callable[[bool, bool, int], Sampler]
    train_params: dict[str, Any]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    seed: int
    learning_rate: Callable[[int], float] | None = None
    resuming: bool = False
    show_progress: bool = False
    progress_position: int | None = None
    label: str = ""  # the seed's progress label, e.g. "train <run> seed <seed>"

    def stage_progress(self, total: int, stage: str) -> tqdm:
        return tqdm(total=total, desc=f"{self.label} {stage}".strip(), unit="step", leave=False,
                    disable=not self.show_progress, position=self.progress_position)

    def lr_at(self, step: int) -> float:
        return self.learning_rate(step) if self.learning_rate is not None else float(self.train_params["lr"])

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch
