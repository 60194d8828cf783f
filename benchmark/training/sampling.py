"""Training data held on the training device, and the batch composition every method shares.

The prepared uint8 arrays are moved to the device once; a batch is an index gather,
a cast and per-sample flips, all on that device, so no DataLoader work sits in the hot
loop. All randomness (which images, which flips) comes from one CPU `torch.Generator`
seeded per run, so a seed gives the same batches on CPU and GPU.

Batch composition: a method that uses both label kinds gets a fixed share of strong
images in every batch (`train.strong_share`; `natural`: the run's own strong fraction),
at least one image of each kind, the strong pool re-sampled (cycled through reshuffled
permutations) as often as needed; a method that uses one kind draws all of its batch
from that pool.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmark.contract import Batch

# The encoder may start from ImageNet weights: grey images are standardised with the
# mean/std of ImageNet's channels averaged, the usual choice for 1-channel inputs.
INPUT_MEAN, INPUT_STD = 0.449, 0.226


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> float32 standardised network input."""
    return (images_u8.float() / 255.0 - INPUT_MEAN) / INPUT_STD


class _CyclingPool:
    """Draws positions from a pool without replacement, reshuffling whenever it runs dry."""

    def __init__(self, positions: np.ndarray, generator: torch.Generator) -> None:
        self.positions = torch.as_tensor(positions, dtype=torch.long)
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long)

    def draw(self, count: int) -> torch.Tensor:
        chunks = []
        while count > 0:
            if len(self.order) == 0:
                self.order = self.positions[torch.randperm(len(self.positions), generator=self.generator)]
            chunks.append(self.order[:count])
            count -= len(chunks[-1])
            self.order = self.order[len(chunks[-1]):]
        return torch.cat(chunks)


class TrainingSet:
    """The training images of one run on `device`, with their strong/weak roles."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, boxes: np.ndarray, is_strong: np.ndarray,
                 device: torch.device, hflip: bool = True, vflip: bool = True) -> None:
        to_device = lambda array: torch.as_tensor(array[:, None]).to(device)  # noqa: E731
        self.images, self.masks, self.boxes = to_device(images), to_device(masks), to_device(boxes)
        self.is_strong = torch.tensor(np.asarray(is_strong, dtype=bool))  # on the CPU, for the samplers
        self._is_strong_on_device = self.is_strong.to(device)
        self.device, self.hflip, self.vflip = device, hflip, vflip
        self.layers: dict[str, torch.Tensor] = {}

    def register_layer(self, name: str, values: np.ndarray | torch.Tensor) -> None:
        """Add a per-image layer (N, H, W), e.g. a box-derived target; batches carry it in `extra[name]`."""
        values = torch.as_tensor(values)
        if values.shape != self.images.shape[:1] + self.images.shape[2:]:
            raise ValueError(f"layer {name!r} has shape {tuple(values.shape)}, expected "
                             f"{tuple(self.images.shape[:1] + self.images.shape[2:])}")
        self.layers[name] = values[:, None].to(self.device)

    def __len__(self) -> int:
        return len(self.is_strong)

    def batch(self, positions: torch.Tensor, flips: torch.Tensor) -> Batch:
        """Gather `positions` (CPU long) and apply per-sample flips (B, 2) bool: [horizontal, vertical]."""
        if self.device.type == "cuda":
            # one small copy from pinned memory, queued without waiting: a copy from pageable memory would
            # synchronise the stream, so the CPU could never run ahead of the GPU's queue
            packed = torch.cat([positions[:, None], flips.long()], dim=1).pin_memory()
            packed = packed.to(self.device, non_blocking=True)
            index, flips = packed[:, 0], packed[:, 1:].bool()
        else:
            index, flips = positions.to(self.device), flips.to(self.device)
        is_strong = self._is_strong_on_device.index_select(0, index)

        def gather_and_flip(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.index_select(0, index)
            tensor = torch.where(flips[:, 0, None, None, None], tensor.flip(-1), tensor)
            return torch.where(flips[:, 1, None, None, None], tensor.flip(-2), tensor)

        images, masks, boxes = (gather_and_flip(t) for t in (self.images, self.masks, self.boxes))
        masks = masks.float() * is_strong[:, None, None, None]  # a weak image's mask is never a label
        extra = {name: gather_and_flip(layer).float() for name, layer in self.layers.items()}
        return Batch(images=normalise(images), masks=masks, boxes=boxes.float(), is_strong=is_strong, indices=index,
                     extra=extra)


def batch_strong_share(strong_share: float | str, strong_fraction: float) -> float:
    """`train.strong_share` as a number: `natural` is the run's strong fraction (its share of the training set)."""
    return float(strong_fraction) if strong_share == "natural" else float(strong_share)


class BatchSampler:
    """Positions and flips of successive batches for a method's label kinds."""

    def __init__(self, training_set: TrainingSet, batch_size: int, strong_share: float, uses_strong: bool,
                 uses_weak: bool, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))
        strong = np.flatnonzero(training_set.is_strong.numpy()) if uses_strong else np.empty(0, dtype=int)
        weak = np.flatnonzero(~training_set.is_strong.numpy()) if uses_weak else np.empty(0, dtype=int)
        if len(strong) == 0 and len(weak) == 0:
            raise ValueError("this run has no training images: the method's label kinds "
                             f"(strong={uses_strong}, weak={uses_weak}) match none of the training set.")
        self.batch_size = int(batch_size)
        # both kinds in every batch of a hybrid method: a share that rounds to none of one kind would silently
        # train it on the other kind alone
        self.n_strong = self.batch_size if len(weak) == 0 else 0 if len(strong) == 0 else \
            min(max(int(round(strong_share * self.batch_size)), 1), self.batch_size - 1)
        self.pools = (_CyclingPool(strong, self.generator), _CyclingPool(weak, self.generator))
        self.flip_enabled = torch.tensor([training_set.hflip, training_set.vflip])
        self.n_used = len(strong) + len(weak)

    def state_dict(self) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Where the sampler is in its random sequence, so a resumed run draws the batches it would have."""
        return {"generator": self.generator.get_state(), "orders": [pool.order.clone() for pool in self.pools]}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for pool, order in zip(self.pools, state["orders"]):
            pool.order = order.clone()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        strong_pool, weak_pool = self.pools
        parts = []
        if self.n_strong:
            parts.append(strong_pool.draw(self.n_strong))
        if self.batch_size - self.n_strong:
            parts.append(weak_pool.draw(self.batch_size - self.n_strong))
        positions = torch.cat(parts)
        flips = (torch.rand(len(positions), 2, generator=self.generator) < 0.5) & self.flip_enabled
        return positions, flips
