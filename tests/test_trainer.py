"""The trainer's pieces: batch composition, flips, schedule, one real training step."""
import numpy as np
import pytest
import torch

from benchmark.config import RunSpec
from benchmark.sampling import BatchSampler, TrainingSet
from benchmark.train import NonFiniteLossError, poly_lr, steps_per_epoch, train_run


def make_set(n=10, n_strong=3, size=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    masks = (rng.random((n, size, size)) > 0.7).astype(np.uint8)
    is_strong = np.zeros(n, bool)
    is_strong[:n_strong] = True
    return TrainingSet(images, masks, masks.copy(), is_strong, torch.device("cpu"))


def test_hybrid_batches_keep_the_strong_share():
    sampler = BatchSampler(make_set(), batch_size=8, strong_share=0.5, uses_strong=True, uses_weak=True, seed=0)
    for _ in range(5):
        positions, _ = sampler.next()
        assert (positions < 3).sum() == 4, "4 of 8 from the 3-image strong pool, re-sampled"


def test_single_kind_methods_draw_from_their_pool_only():
    training_set = make_set()
    strong_only = BatchSampler(training_set, 4, 0.5, uses_strong=True, uses_weak=False, seed=0)
    weak_only = BatchSampler(training_set, 4, 0.5, uses_strong=False, uses_weak=True, seed=0)
    seen_strong = torch.cat([strong_only.next()[0] for _ in range(6)])
    seen_weak = torch.cat([weak_only.next()[0] for _ in range(6)])
    assert set(seen_strong.tolist()) == {0, 1, 2}
    assert set(seen_weak.tolist()) == set(range(3, 10))
    with pytest.raises(ValueError, match="no training images"):
        BatchSampler(make_set(n_strong=0), 4, 0.5, uses_strong=True, uses_weak=False, seed=0)


def test_same_seed_same_batches_and_flips_are_consistent():
    training_set = make_set()
    a = BatchSampler(training_set, 4, 0.5, True, True, seed=3)
    b = BatchSampler(training_set, 4, 0.5, True, True, seed=3)
    for _ in range(3):
        (pa, fa), (pb, fb) = a.next(), b.next()
        assert torch.equal(pa, pb) and torch.equal(fa, fb)
    positions = torch.tensor([0, 4])
    flips = torch.tensor([[True, False], [False, True]])
    batch = training_set.batch(positions, flips)
    assert torch.equal(batch.boxes[0, 0], training_set.boxes[0, 0].flip(-1).float())
    assert torch.equal(batch.boxes[1, 0], training_set.boxes[4, 0].flip(-2).float())
    assert torch.equal(batch.masks[0, 0], batch.boxes[0, 0]), "strong image keeps its (flipped) mask"
    assert batch.masks[1].sum() == 0, "a weak image's mask is never a label"


def test_poly_schedule_and_epoch_length():
    assert poly_lr(1e-4, 0, 50, 0.9) == 1e-4
    assert poly_lr(1e-4, 25, 50, 0.9) == pytest.approx(1e-4 * 0.5 ** 0.9)
    assert steps_per_epoch("all_train", 100, 10, 8) == 13
    assert steps_per_epoch("method", 100, 10, 8) == 2


def test_one_epoch_trains_and_saves(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    spec = RunSpec(name="t", method="strong_only", strong_fraction=0.5, seeds=(0,), row="Strong-Only")
    info = train_run(spec, params, prepared, tmp_path, show_progress=False)
    assert info["n_strong"] == 8 and info["steps_per_epoch"] == 4
    state = torch.load(tmp_path / "t" / "models" / "seed_0.pt", weights_only=True)
    assert any(key.startswith("net.encoder") for key in state)
    log = (tmp_path / "t" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("seed,epoch,lr,structure,total") and len(log) == 2


def test_non_finite_loss_stops_the_run(tiny_prepared, tmp_path, monkeypatch):
    params, prepared = tiny_prepared
    from methods.strong_only import StrongOnly

    real_step, calls = StrongOnly.training_step, []

    def third_step_overflows(self, batch):
        calls.append(1)
        terms = real_step(self, batch)
        return {**terms, "structure": terms["structure"] * (float("inf") if len(calls) == 3 else 1.0)}

    monkeypatch.setattr(StrongOnly, "training_step", third_step_overflows)
    spec = RunSpec(name="nan", method="strong_only", strong_fraction=0.5, seeds=(0,), row="Strong-Only")
    with pytest.raises(NonFiniteLossError, match=r"run nan \(seed 0\): loss term 'structure' is inf at epoch 1, "
                                                 r"step 3 of 4\. Training stopped; no weights or metrics"):
        train_run(spec, params, prepared, tmp_path, show_progress=False)
    assert not (tmp_path / "nan").exists() or not any((tmp_path / "nan").rglob("*.*")), "nothing was written"
