"""The trainer's pieces: batch composition, flips, schedule, one real training step, seeds side by side."""
import copy
import multiprocessing

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from benchmark.cli import MissingOutputError
from benchmark.config import ConfigError, RunSpec
from benchmark.training.sampling import BatchSampler, TrainingSet, batch_strong_share
from benchmark.training.train import (
    NonFiniteLossError,
    check_batch_fits,
    check_finite,
    poly_lr,
    run_seed_processes,
    seed_schedule,
    steps_per_epoch,
    train_run,
    training_memory_gb,
)


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


@pytest.mark.parametrize("share, fraction, strong_per_batch", [
    (0.5, 0.1, 4), ("natural", 0.1, 1), ("natural", 0.075, 1), ("natural", 0.5, 4), (0.05, 0.1, 1), (1.0, 0.1, 7),
    (0.0, 0.1, 1)])
def test_a_hybrid_batch_holds_both_kinds_at_its_share(share, fraction, strong_per_batch):
    """`natural` is the run's strong fraction; a share that rounds to no image of a kind (0.05 x 8) trained the
    method on the other kind alone."""
    sampler = BatchSampler(make_set(), 8, batch_strong_share(share, fraction), uses_strong=True, uses_weak=True,
                           seed=0)
    for _ in range(4):
        positions, _ = sampler.next()
        assert (positions < 3).sum() == strong_per_batch


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


def test_provenance_names_the_commit_a_seed_started_from(tiny_prepared, tmp_path, monkeypatch):
    """A commit made while a run trains (a docstring edit during a long dvc repro) is not what the run executed."""
    import benchmark.training.train as trainer
    from methods.strong_only import StrongOnly
    params, prepared = tiny_prepared
    head = {"git_commit": "commit-at-start", "git_dirty": False}
    monkeypatch.setattr(trainer, "git_state", lambda: dict(head))
    real_step = StrongOnly.training_step

    def commit_meanwhile(self, batch):
        head["git_commit"] = "commit-made-during-training"
        return real_step(self, batch)

    monkeypatch.setattr(StrongOnly, "training_step", commit_meanwhile)
    spec = RunSpec(name="prov", method="strong_only", strong_fraction=0.5, seeds=(0,), row="Strong-Only")
    info = train_run(spec, params, prepared, tmp_path, show_progress=False)
    assert info["seeds"]["0"]["provenance"]["git_commit"] == "commit-at-start"


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


def test_seed_workers_are_capped_by_cores_and_memory_and_a_batch_that_cannot_fit_is_refused():
    """Issue 25: `seed_workers: auto` with 6 seeds started 6 processes (7.8 GB), seed_schedule(auto, 1000) gave 1000
    workers; `train.batch_size: 100000` was killed by the kernel at 23 GB without a message."""
    cpu = torch.device("cpu")
    plenty = 1000.0
    assert seed_schedule({"seed_workers": "auto", "num_threads": 2}, 1000, cpu, available_gb=plenty) == (4, 1)
    assert seed_schedule({"seed_workers": 1000, "num_threads": 2}, 1000, cpu, available_gb=plenty) == (4, 1)
    assert seed_schedule({"seed_workers": "auto", "num_threads": 2}, 3, cpu, available_gb=plenty) == (3, 1)
    one_fits = 1.5 * training_memory_gb(8, 96)
    assert seed_schedule({"seed_workers": "auto", "num_threads": 2, "batch_size": 8}, 3, cpu, 96, one_fits) == (1, 2)
    two_fit = 2 / 0.8 * training_memory_gb(8, 192) + 0.1
    assert seed_schedule({"seed_workers": "auto", "num_threads": 2, "batch_size": 8}, 3, cpu, 192, two_fit) == (2, 1)
    check_batch_fits({"batch_size": 8}, 96, cpu, available_gb=4.0)
    with pytest.raises(ConfigError, match=r"train.batch_size = 100000: training at 96 px needs about 5001 GB "
                                          r"\(0.05 GB per image of a batch\), more than the 23.0 GB"):
        check_batch_fits({"batch_size": 100000}, 96, cpu, available_gb=23.0)
    check_batch_fits({"batch_size": 100000}, 96, torch.device("cuda"), available_gb=23.0)  # not the CPU's memory


def test_seed_schedule_splits_the_threads_between_seed_workers():
    cpu = torch.device("cpu")
    assert seed_schedule({"seed_workers": "auto", "num_threads": 2}, 3, cpu) == (3, 1)
    assert seed_schedule({"seed_workers": "auto", "num_threads": 2}, 1, cpu) == (1, 2), "one seed: every thread"
    assert seed_schedule({"seed_workers": "auto", "num_threads": 1}, 3, cpu) == (1, 1), "one core: serial"
    assert seed_schedule({"seed_workers": 2, "num_threads": 8}, 3, cpu) == (2, 4)
    assert seed_schedule({"seed_workers": 5, "num_threads": 8}, 3, cpu) == (3, 2), "never more workers than seeds"
    assert seed_schedule({"seed_workers": 1, "num_threads": 0}, 3, cpu) == (1, 0), "serial keeps torch's default"
    assert seed_schedule({"seed_workers": "auto", "num_threads": 8}, 3, torch.device("cuda")) == (1, 8)
    for bad in ("many", 0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="train.seed_workers must be 'auto' or a positive integer"):
            seed_schedule({"seed_workers": bad}, 3, cpu)
    with pytest.raises(ConfigError, match="on the CPU only"):
        seed_schedule({"seed_workers": 2}, 3, torch.device("cuda"))


def test_seeds_trained_side_by_side_are_bit_identical_to_serial_training(tiny_prepared, tmp_path):
    """Three seeds in two worker processes (1 thread each; the third starts when one ends: a multiprocessing.Pool
    replacing its worker there hung the trainer) against the same seeds one after another at 1 thread."""
    params, prepared = tiny_prepared
    spec = RunSpec(name="s", method="vanilla_hybrid", strong_fraction=0.5, seeds=(0, 1, 2), row="Vanilla-Hybrid")
    infos = {}
    for mode, threads, workers in (("serial", 1, 1), ("parallel", 2, 2)):
        run_params = copy.deepcopy(params)
        run_params["train"].update(num_threads=threads, seed_workers=workers,
                                   checkpoint_dir=str(tmp_path / f"ck_{mode}"))
        infos[mode] = train_run(spec, run_params, prepared, tmp_path / mode, show_progress=False)
    assert (infos["serial"]["seed_workers"], infos["serial"]["threads"]) == (1, 1)
    assert (infos["parallel"]["seed_workers"], infos["parallel"]["threads"]) == (2, 1)
    for seed in ("0", "1", "2"):
        assert infos["parallel"]["seeds"][seed]["model_sha256"] == infos["serial"]["seeds"][seed]["model_sha256"]
        serial = torch.load(tmp_path / "serial" / "s" / "models" / f"seed_{seed}.pt", weights_only=True)
        parallel = torch.load(tmp_path / "parallel" / "s" / "models" / f"seed_{seed}.pt", weights_only=True)
        assert serial.keys() == parallel.keys() and all(torch.equal(serial[k], parallel[k]) for k in serial)
    assert infos["serial"]["seeds"]["0"]["model_sha256"] != infos["serial"]["seeds"]["1"]["model_sha256"]
    logs = {mode: pd.read_csv(tmp_path / mode / "s" / "train_log.csv").drop(columns="seconds") for mode in infos}
    pd.testing.assert_frame_equal(logs["serial"], logs["parallel"], check_exact=True)
    assert list(logs["parallel"]["seed"]) == [0, 1, 2], "log rows in seed order"


def test_a_seed_that_fails_in_its_process_fails_the_run_with_its_own_error(tiny_prepared, tmp_path):
    params, _ = tiny_prepared
    spec = RunSpec(name="s", method="vanilla_hybrid", strong_fraction=0.5, seeds=(0, 1), row="Vanilla-Hybrid")
    jobs = [(spec, seed, params, tmp_path / "nowhere", {}, False, 1, seed) for seed in (0, 1)]
    with pytest.raises(MissingOutputError, match="nowhere"):
        run_seed_processes(jobs, 2)
    assert not multiprocessing.active_children(), "no seed process is left behind"


@pytest.mark.parametrize("epoch, step, advice", [(1, 0, "check the prepared data (dvc repro prepare)"),
                                                 (1, 2, "lower train.lr"), (3, 0, "lower train.lr")])
def test_a_non_finite_loss_advises_by_where_it_happened(epoch, step, advice):
    """NaN data stopped the run with 'lower train.lr', which cannot act before the first update."""
    values = torch.ones(4, 2)
    values[step, 1] = float("nan")
    with pytest.raises(NonFiniteLossError) as error:
        check_finite("r", 0, epoch, ["a", "b"], values)
    assert advice in str(error.value)


def test_the_code_fingerprint_does_not_depend_on_what_the_process_imported(tiny_prepared):
    """A study (one process that also imports the evaluation and reporting code) and the train stage fingerprinted
    different sets of loaded modules, so neither resumed the other's checkpoints."""
    import subprocess
    import sys

    from tests.conftest import REPO

    params, prepared = tiny_prepared
    script = ("import sys, json\n{extra}from benchmark.config import load_params, run_spec\n"
              "from benchmark.training.train import run_fingerprint\n"
              "params = load_params(sys.argv[1]); spec = run_spec(params, 'strong_only_10')\n"
              "print(run_fingerprint(spec, params, sys.argv[2])['code'])\n")
    params_file = prepared.parent / "fingerprint_params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    codes = {subprocess.run([sys.executable, "-c", script.format(extra=extra), str(params_file), str(prepared)],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
             for extra in ("", "import benchmark.reporting.report, benchmark.tools.study\n")}
    assert len(codes) == 1
