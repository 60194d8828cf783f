"""The speed benchmark and the device-resident batch path (issue: GPU-resident training).

- `benchmark.tools.bench_performance` writes a table with images/s, efficiency and a projection;
- batches built on the device (index gather + per-sample flips) equal an independent numpy
  construction for a fixed seed, on CPU and, where a GPU is visible, on CUDA too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.tools import bench_performance
from benchmark.training.runtime import cpu_has_native_bf16
from benchmark.training.sampling import BatchSampler, TrainingSet, normalise
from benchmark.training.train import Numerics


def arrays(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    masks = (rng.random((n, size, size)) > 0.7).astype(np.uint8)
    boxes = (rng.random((n, size, size)) > 0.5).astype(np.uint8)
    is_strong = np.arange(n) % 3 == 0
    return images, masks, boxes, is_strong


def numpy_batch(images, masks, boxes, is_strong, positions, flips):
    """The same batch built the plain way: fancy indexing and np.flip, image by image."""
    out = {"images": [], "masks": [], "boxes": []}
    for position, (horizontal, vertical) in zip(positions, flips):
        for name, array in (("images", images), ("masks", masks), ("boxes", boxes)):
            item = array[position].astype(np.float32)
            item = item[:, ::-1] if horizontal else item
            item = item[::-1, :] if vertical else item
            out[name].append(item)
    stacked = {name: np.stack(items)[:, None] for name, items in out.items()}
    stacked["masks"] *= is_strong[positions][:, None, None, None]
    stacked["images"] = ((stacked["images"] / 255.0 - 0.449) / 0.226).astype(np.float32)
    return stacked


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_equal_the_numpy_construction(device):
    images, masks, boxes, is_strong = arrays()
    training_set = TrainingSet(images, masks, boxes, is_strong, torch.device(device))
    sampler = BatchSampler(training_set, 6, 0.5, True, True, seed=11)
    reference_sampler = BatchSampler(TrainingSet(images, masks, boxes, is_strong, torch.device("cpu")), 6, 0.5, True,
                                     True, seed=11)
    for _ in range(5):  # several batches: the pools cycle and reshuffle
        positions, flips = sampler.next()
        ref_positions, ref_flips = reference_sampler.next()
        assert torch.equal(positions, ref_positions) and torch.equal(flips, ref_flips), "draws do not depend on device"
        batch = training_set.batch(positions, flips)
        expected = numpy_batch(images, masks, boxes, is_strong, positions.numpy(), flips.numpy())
        for name in ("images", "masks", "boxes"):
            np.testing.assert_allclose(getattr(batch, name).cpu().numpy(), expected[name], rtol=0, atol=1e-6)
        assert batch.images.device.type == device


def test_normalise_is_the_documented_standardisation():
    value = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert torch.allclose(normalise(value), torch.tensor([[[[-0.449 / 0.226, (1 - 0.449) / 0.226]]]]))


def test_cpu_numerics_follow_params():
    cpu = torch.device("cpu")
    assert Numerics.from_params({"precision": "auto"}, cpu).precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert Numerics.from_params({"precision": "bf16", "channels_last": True}, cpu).channels_last


def test_benchmark_writes_speed_efficiency_and_projection(tmp_path, tiny_prepared):
    params, prepared = tiny_prepared
    out = tmp_path / "performance.md"
    status = bench_performance.main(["--size", "32", "--batch", "4", "--steps", "2", "--rounds", "2", "--warmup", "1",
                                     "--methods", "strong_only,ours", "--device", "cpu", "--prepared",
                                     str(prepared), "--out", str(out)])
    assert status == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| strong_only |") or line.startswith("| ours |")]
    assert len(rows) == 2 and "1.00x" in rows[0]
    efficiency = [float(row.split("|")[5].strip().rstrip("%")) for row in rows]
    assert all(0 < value < 1000 for value in efficiency)
    assert "Projected training time of every configured run x seed" in text
    assert "not included, method not measured" in text, "the default's other methods were not measured"
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(SystemExit):
        bench_performance.main(["--methods", "nope", "--out", str(out)])
