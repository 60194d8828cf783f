"""The hostile trials of issue 16, one test (or parameter) per row of its table, on the tiny configuration.

Each trial is run as a user runs it, `python -m benchmark <stage> ...` (in this process through the suite's
command, benchmark/__main__.py, so the dispatch and the error handling are the real ones; one trial is a real
second process), and
must end either in a correct result or in one line that names the key, the value and what is allowed,
with a non-zero exit status and no traceback. A few trials read what a stage left on disk.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import benchmark.training.train as trainer
from benchmark.__main__ import main as suite_command
from benchmark.cli import DVC_STAGE, UnwritableOutputError, add_run_argument, chosen_run, run_cli
from benchmark.config import run_spec
from benchmark.data.prepared import load_prepared
from benchmark.evaluation.evaluate import evaluate_run
from benchmark.nn.networks import WeightsUnavailableError, build_unet
from benchmark.training.train import CHECKPOINT_NAME, train_run
from benchmark.training.train import main as train_main
from tests.conftest import REPO, tiny_params
from tests.conftest import edited_params as edited
from tests.fake_runs import fabricate_run, rewrite_train_log

RUN = "strong_only_100"


def run_stage(command: str, *args: str) -> tuple[int, str]:
    """`python -m benchmark <command> args...` in this process: (exit status, stderr). An exception that escapes
    the entry point is what the interpreter would print, a traceback, with status 1."""
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        try:
            code = suite_command([command, *map(str, args)])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
        except Exception:  # noqa: BLE001 - the interpreter's behaviour for an uncaught exception
            traceback.print_exc()
            code = 1
    return code, stderr.getvalue()


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm's progress bars."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not any(marker in line for marker in ("step/s", "s/step", "batch/s", "domain/s", "%|"))]


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert code != 0 and len(lines) == 1, f"exit {code}, stderr:\n{stderr[-3000:]}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_run(tiny_prepared, tmp_path_factory) -> tuple[dict, Path, Path]:
    """Tiny params with the Strong-Only 100% run and a hybrid run, in a folder of their own; the prepared data."""
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    params["runs"] = {RUN: params["runs"][RUN],
                      "hybrid": {"method": "vanilla_hybrid", "row": "Vanilla-Hybrid", "strong_fraction": 0.5}}
    params["train"]["checkpoint_dir"] = str(tmp_path_factory.mktemp("trial_checkpoints"))
    params["report"]["bootstrap_resamples"] = 200
    return params, prepared, tmp_path_factory.mktemp("trials")


@pytest.fixture(scope="module")
def trained(one_run, tmp_path_factory) -> Path:
    """runs/ with RUN trained and evaluated (copy it before changing it)."""
    params, prepared, _ = one_run
    runs = tmp_path_factory.mktemp("trained") / "runs"
    train_run(run_spec(params, RUN), params, prepared, runs, show_progress=False)
    evaluate_run(RUN, params, prepared, runs)
    return runs


def copy_runs(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "runs"))


def fabricated_pair(tmp_path: Path, prepared: Path, epochs: tuple[int, int] = (3, 3),
                    dice: tuple[float, float] = (0.5, 0.5)) -> Path:
    """runs/ with the two Strong-Only runs fabricated (one seed, the same Dice on every test image)."""
    data, runs = load_prepared(prepared), tmp_path / "runs"
    tests = {domain: data.rows(domain, "test") for domain in ("cbis", "inbreast")}
    for (name, fraction), run_epochs, value in zip((("strong_only_100", 1.0), ("strong_only_10", 0.1)), epochs, dice):
        fabricate_run(runs, data, name, method="strong_only", row="Strong-Only", strong_fraction=fraction,
                      uses_weak=False, epochs=run_epochs,
                      dice={domain: {0: np.full(len(rows), value)} for domain, rows in tests.items()})
    return runs


# -- rows of the table whose input is a params.yaml value ---------------------------------------------------
CONFIG_TRIALS = {  # id: (stage, edits, fragments of the one-line error)
    "epochs 0": ("train", {"train.epochs": 0}, ["train.epochs = 0: must be an integer >= 1"]),
    "epochs -1": ("train", {"train.epochs": -1}, ["train.epochs = -1: must be an integer >= 1"]),
    "batch_size 0": ("train", {"train.batch_size": 0}, ["train.batch_size = 0: must be an integer >= 1"]),
    "image_size 0": ("prepare", {"data.image_size": 0}, ["data.image_size = 0: must be an integer >= 32"]),
    "image_size 1": ("prepare", {"data.image_size": 1}, ["data.image_size = 1: must be an integer >= 32"]),
    "image_size -5": ("prepare", {"data.image_size": -5}, ["data.image_size = -5: must be an integer >= 32"]),
    "strong_fraction abc": ("train", {f"runs.{RUN}.strong_fraction": "abc"},
                            [f'runs.{RUN}.strong_fraction = "abc": must be a number in [0, 1]']),
    "strong_fraction null": ("train", {f"runs.{RUN}.strong_fraction": None},
                             [f"runs.{RUN}.strong_fraction = null: must be a number in [0, 1]"]),
    "strong_fraction true": ("train", {f"runs.{RUN}.strong_fraction": True},
                             [f"runs.{RUN}.strong_fraction = true: must be a number in [0, 1]"]),
    "threshold 2.0": ("evaluate", {"evaluate.threshold": 2.0},
                      ["evaluate.threshold = 2.0: must be a number in (0, 1)"]),
    "test_fraction 0": ("prepare", {"data.test_fraction": 0}, ["data.test_fraction = 0: must be a number in (0, 1)"]),
    "strong_share 1.5": ("train", {"train.strong_share": 1.5},
                         ["train.strong_share = 1.5: must be a number in [0, 1] (that share of every hybrid batch "
                          "is strong) or natural"]),
    "seeds [-1]": ("train", {"seeds": [-1]}, ["seeds[0] = -1: seeds must be a non-empty list of distinct integers"]),
    "device gpu": ("train", {"train.device": "gpu"}, ['train.device = "gpu": must be auto, cpu, cuda or cuda:N']),
    # issue 25: a checkpoint folder the cleanup would have taken results or the project with
    "checkpoint_dir runs": ("train", {"train.checkpoint_dir": "runs"},
                            ['train.checkpoint_dir = "runs": must be a folder of its own', "inside runs/"]),
    "checkpoint_dir .": ("train", {"train.checkpoint_dir": "."},
                         ['train.checkpoint_dir = ".": must be a folder of its own', "the project folder"]),
    "checkpoint_dir data": ("evaluate", {"train.checkpoint_dir": "data"},
                            ['train.checkpoint_dir = "data": must be a folder of its own', "inside data/"]),
    # issue 25: the message named the wrong key or denied an existing file
    "method base": ("train", {f"runs.{RUN}.method": "base"},
                    [f'runs.{RUN}.method = "base"', "methods/base.py is part of the registry, not a method"]),
}


def stage_args(stage: str, params_file: Path, prepared: Path, runs: Path, run: str = RUN) -> list:
    if stage == "prepare":
        return ["--params", params_file, "--out", runs.parent / "prepared_out", "--preview", runs.parent / "p.png"]
    if stage == "train":
        return [run, "--params", params_file, "--prepared", prepared, "--out", runs]
    if stage == "evaluate":
        return [run, "--params", params_file, "--prepared", prepared, "--runs", runs]
    return ["--params", params_file, "--runs", runs, "--prepared", prepared, "--out", runs.parent / "out" / "tables.md"]


@pytest.mark.parametrize("trial", CONFIG_TRIALS)
def test_a_bad_params_value_is_one_line_naming_key_value_and_what_is_allowed(trial, one_run, trained, tmp_path):
    stage, edits, fragments = CONFIG_TRIALS[trial]
    params, prepared, _ = one_run
    runs = copy_runs(trained, tmp_path)
    params_file = write_params(tmp_path / "params.yaml", edited(params, edits))
    before = {path: path.stat().st_mtime_ns for path in runs.rglob("*")}
    code, stderr = run_stage(stage, *stage_args(stage, params_file, prepared, runs))
    assert_one_line_error(code, stderr, f"{params_file}: ", *fragments)
    assert {path: path.stat().st_mtime_ns for path in runs.rglob("*")} == before, "no output was touched"
    assert not (tmp_path / "prepared_out").exists()


def test_cuda_device_on_a_machine_without_one(one_run, trained, tmp_path, monkeypatch):
    params, prepared, _ = one_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs = copy_runs(trained, tmp_path)
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"train.device": "cuda:0"}))
    for stage in ("train", "evaluate"):
        code, stderr = run_stage(stage, *stage_args(stage, params_file, prepared, runs))
        assert_one_line_error(code, stderr, "train.device = 'cuda:0': no CUDA device is visible", "use auto or cpu")
    assert (runs / RUN / "metrics.json").is_file(), "the earlier results were not touched"


def test_a_gpu_index_the_machine_does_not_have(one_run, trained, tmp_path, monkeypatch):
    params, prepared, _ = one_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"train.device": "cuda:7"}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, copy_runs(trained, tmp_path)))
    assert_one_line_error(code, stderr, "train.device = 'cuda:7': this machine has 2 CUDA device(s) (cuda:0 to cuda:1)")


def test_a_method_that_trains_on_masks_gets_at_least_one_strong_image(one_run, tmp_path):
    """strong_fraction 0.001 of 16 training images is 0 masks: a hybrid method used to train on boxes alone."""
    params, prepared, _ = one_run
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"runs.hybrid.strong_fraction": 0.001}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs", run="hybrid"))
    assert_one_line_error(code, stderr, "runs.hybrid.strong_fraction = 0.001: gives 0 of the 16 training images a mask",
                          "method vanilla_hybrid trains on masks", "strong_fraction >= 0.0625")
    assert not (tmp_path / "runs").exists()


def test_the_real_command_line_prints_one_line_and_exits_non_zero(one_run, tmp_path):
    """The same as above through a real `python -m benchmark train` process."""
    params, prepared, _ = one_run
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"train.epochs": 0}))
    result = subprocess.run([sys.executable, "-m", "benchmark", "train", RUN, "--params", str(params_file),
                             "--prepared", str(prepared), "--out", str(tmp_path / "runs")], cwd=REPO,
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"{params_file}: train.epochs = 0: must be an integer >= 1"]


# -- divergence -----------------------------------------------------------------------------------------------
def test_an_exploding_loss_stops_the_run_naming_run_seed_epoch_and_term(one_run, trained, tmp_path):
    """lr 1e6: the loss reached 2e12 and stayed finite; the run "succeeded" with 0.00 Dice. Its earlier
    results must not survive the failed training either."""
    params, prepared, _ = one_run
    runs = copy_runs(trained, tmp_path)
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"train.lr": 1.0e6}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, runs))
    assert "Traceback" not in stderr
    line = error_lines(stderr)[-1]
    assert code == 1 and line.startswith(f"run {RUN} (seed 0): the loss diverged at epoch 1: its mean total loss ")
    assert "more than train.divergence_factor = 100" in line and "largest term 'structure'" in line
    left = sorted(path.name for path in (runs / RUN).rglob("*"))
    assert left == [], f"a diverged training leaves nothing that looks like a result: {left}"


def test_the_report_marks_a_run_whose_loss_did_not_decrease(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared)
    log = pd.read_csv(runs / "strong_only_10" / "train_log.csv")
    log["total"] = log["structure"] = [1.0, 1.2, 1.1]  # epoch 3 ends above epoch 1
    rewrite_train_log(runs / "strong_only_10", log)
    params_file = write_params(tmp_path / "params.yaml", params)
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert code == 0, stderr[-3000:]
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "| Strong-Only † | 10% | 0% |" in text and "| Strong-Only | 100% | 0% |" in text
    assert "† training loss did not decrease" in text
    assert "**Training loss did not decrease** († in the tables) in: Strong-Only 10%" in text
    assert "seed 0: training loss did not decrease (epoch 1: 1, epoch 3: 1.1)" in text


@pytest.mark.parametrize("damage", ["missing", "edited"])
def test_the_report_refuses_a_missing_or_edited_train_log(tiny_prepared, tmp_path, damage):
    """The † mark reads train_log.csv: without the file, or with one a user edited, it was silently skipped."""
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared)
    path = runs / "strong_only_10" / "train_log.csv"
    if damage == "missing":
        path.unlink()
    else:
        log = pd.read_csv(path)
        log["total"] = log["total"][::-1].to_numpy()  # a loss that rose, rewritten to look like one that fell
        log.to_csv(path, index=False)
    params_file = write_params(tmp_path / "params.yaml", params)
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    expected = "missing (the train stage writes it" if damage == "missing" else "not the log"
    assert_one_line_error(code, stderr, str(path), expected, "dvc repro train@strong_only_10")
    assert not (tmp_path / "out" / "tables.md").exists()


# -- nothing stale --------------------------------------------------------------------------------------------
def test_a_failed_training_removes_the_runs_earlier_evaluation(one_run, trained, tmp_path, monkeypatch):
    """NaN after an earlier successful run: metrics.json, per_image.csv and examples.npz used to stay and
    `dvc metrics show` listed them as current (the kill -9 case is in test_pipeline)."""
    params, prepared, _ = one_run
    runs = copy_runs(trained, tmp_path)
    from methods.strong_only import StrongOnly

    real_step = StrongOnly.training_step
    monkeypatch.setattr(StrongOnly, "training_step",
                        lambda self, batch: {k: v * float("nan") for k, v in real_step(self, batch).items()})
    code, stderr = run_stage("train", *stage_args("train", write_params(tmp_path / "p.yaml", params), prepared, runs))
    for name in ("metrics.json", "per_image.csv", "examples.npz", "train_info.json", "train_log.csv", "models"):
        assert not (runs / RUN / name).exists(), f"{name} of the earlier run is still there"
    assert code == 1 and "loss term 'structure' is nan" in error_lines(stderr)[-1] and "Traceback" not in stderr


def test_an_edited_strong_fraction_is_refused_by_evaluate_and_report(one_run, trained, tmp_path):
    """strong_fraction edited after training, evaluate + report by hand: the row said 50% for a model trained at
    100% (the issue's example: 50% vs 10%)."""
    params, prepared, _ = one_run
    runs = copy_runs(trained, tmp_path)
    changed = edited(params, {f"runs.{RUN}.strong_fraction": 0.5})
    changed["runs"] = {RUN: changed["runs"][RUN]}
    params_file = write_params(tmp_path / "params.yaml", changed)
    expected = (f"runs.{RUN} differs from what {runs / RUN / 'train_info.json'} was trained with: strong_fraction 0.5 "
                "(trained: 1.0)")
    for stage in ("evaluate", "report"):
        code, stderr = run_stage(stage, *stage_args(stage, params_file, prepared, runs))
        assert_one_line_error(code, stderr, expected, f"dvc repro train@{RUN}")
    assert (runs / RUN / "metrics.json").is_file(), "evaluate refused before removing anything"
    assert not (tmp_path / "out" / "tables.md").exists()


def test_a_per_image_csv_copied_from_another_run_is_refused(tiny_prepared, tmp_path):
    """It was accepted: a paired row of +0.00 [+0.00, +0.00], p = 1."""
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared, dice=(0.6, 0.4))
    params_file = write_params(tmp_path / "params.yaml", params)
    code, _ = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert code == 0, "the untouched runs are reported"
    shutil.copy(runs / "strong_only_100" / "per_image.csv", runs / "strong_only_10" / "per_image.csv")
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert_one_line_error(code, stderr, f"{runs / 'strong_only_10' / 'per_image.csv'}: not the file",
                          "copied from another run", "dvc repro evaluate@strong_only_10")


# -- checkpoints and concurrent trainers -----------------------------------------------------------------------
class Interrupted(Exception):
    pass


def test_random_bytes_inside_a_checkpoint_discard_it_and_the_run_starts_over(one_run, tmp_path, monkeypatch, capsys):
    """It was resumed from, then NaN at the next epoch on every re-run, with advice to lower the learning rate."""
    params, prepared, _ = one_run
    params = edited(params, {"train.epochs": 2, "train.checkpoint_dir": str(tmp_path / "ck")})
    spec = run_spec(params, RUN)
    real_save = trainer.atomic_torch_save

    def save_then_die(path, payload):
        real_save(path, payload)
        if Path(path).name == CHECKPOINT_NAME and payload["epoch"] == 1:
            raise Interrupted

    monkeypatch.setattr(trainer, "atomic_torch_save", save_then_die)
    with pytest.raises(Interrupted):
        train_run(spec, params, prepared, tmp_path / "runs", show_progress=False)
    monkeypatch.setattr(trainer, "atomic_torch_save", real_save)
    checkpoint = tmp_path / "ck" / RUN / "seed_0" / CHECKPOINT_NAME
    size = checkpoint.stat().st_size
    with checkpoint.open("r+b") as handle:  # 64 KiB of random bytes in the middle of the file
        handle.seek(size // 2)
        handle.write(np.random.default_rng(0).bytes(64 * 1024))
    assert checkpoint.stat().st_size == size
    capsys.readouterr()
    info = train_run(spec, params, prepared, tmp_path / "runs", show_progress=False)
    out = capsys.readouterr().out
    assert f"{checkpoint}: damaged checkpoint" in out and "discarded it, starting from scratch" in out
    assert info["seeds"]["0"]["resumed_from_epoch"] == 0
    log = pd.read_csv(tmp_path / "runs" / RUN / "train_log.csv")
    assert list(log["epoch"]) == [1, 2] and np.isfinite(log["total"]).all()


def test_a_second_trainer_of_the_same_run_stops_at_once(one_run, tmp_path):
    """Two `python -m benchmark train <same run>` at once: one crashed on the checkpoint rename."""
    params, prepared, _ = one_run
    params = edited(params, {"train.epochs": 30, "train.checkpoint_dir": str(tmp_path / "ck")})
    params_file = write_params(tmp_path / "params.yaml", params)
    args = stage_args("train", params_file, prepared, tmp_path / "runs")
    first = subprocess.Popen([sys.executable, "-m", "benchmark", "train", *map(str, args)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        checkpoint = tmp_path / "ck" / RUN / "seed_0" / CHECKPOINT_NAME
        deadline = time.time() + 240
        while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first trainer is still training"
        started = time.perf_counter()
        code, stderr = run_stage("train", *args)
        assert_one_line_error(code, stderr, f"run {RUN} is being trained by another process",
                              f"{tmp_path / 'ck' / (RUN + '.lock')}")
        assert time.perf_counter() - started < 30, "it stopped at once, before training"
        assert first.poll() is None, "the first trainer was not disturbed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# -- encoder weight files ----------------------------------------------------------------------------------------
MODEL = {"encoder": "resnet18", "encoder_weights": None, "decoder_channels": [16, 16, 8, 8, 8]}


def write_text(path: Path) -> None:
    path.write_text("these are not weights\n")


def write_empty(path: Path) -> None:
    path.write_bytes(b"")


def write_pickled_list(path: Path) -> None:
    torch.save([1, 2, 3], path)


def write_other_encoder(path: Path) -> None:
    torch.save(build_unet({**MODEL, "encoder": "resnet34"}).encoder.state_dict(), path)


def write_wrong_shapes(path: Path) -> None:
    state = build_unet(MODEL).encoder.state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, path)


@pytest.mark.parametrize("writer, reason", [
    (write_text, "torch.load cannot read it"),
    (write_empty, "torch.load cannot read it"),
    (write_pickled_list, "it holds a list, not a mapping of parameter names to tensors"),
    (write_other_encoder, "unexpected ['layer1.2.conv1.weight'"),
    (write_wrong_shapes, "shapes differ: conv1.weight (64, 1, 3, 3) instead of (64, 1, 7, 7)"),
], ids=["text", "empty", "pickled list", "resnet34 for resnet18", "wrong shapes"])
def test_a_weight_file_that_is_no_state_dict_of_the_encoder_gives_the_documented_error(writer, reason, tmp_path):
    path = tmp_path / "weights.pth"
    writer(path)
    with pytest.raises(WeightsUnavailableError) as error:
        build_unet({**MODEL, "encoder_weights": str(path)})
    message = str(error.value)
    assert message.startswith(f"model.encoder_weights: {path} is not a state dict of the configured encoder resnet18")
    assert reason in message and "\n" not in message


def test_a_bad_weight_file_stops_the_train_stage_with_one_line(one_run, tmp_path, monkeypatch):
    params, prepared, _ = one_run
    monkeypatch.chdir(tmp_path)  # the stages' working directory is the project root, where weights/ lies
    (tmp_path / "weights").mkdir()
    write_text(tmp_path / "weights" / "weights.pth")
    params_file = write_params(tmp_path / "params.yaml",
                               edited(params, {"model.encoder_weights": "weights/weights.pth"}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs"))
    assert_one_line_error(code, stderr, "is not a state dict of the configured encoder resnet18")
    assert not (tmp_path / "runs").exists()


def test_a_weights_file_outside_the_weights_folder_is_refused(one_run, tmp_path):
    """DVC re-trains when a dependency changes; a weights file it does not know of could be swapped unseen."""
    params, prepared, _ = one_run
    torch.save(build_unet(MODEL).encoder.state_dict(), tmp_path / "weights.pth")
    params_file = write_params(tmp_path / "params.yaml",
                               edited(params, {"model.encoder_weights": str(tmp_path / "weights.pth")}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs"))
    assert_one_line_error(code, stderr, "model.encoder_weights", "weights/<file>", "the train stage depends on "
                                                                                  "weights/")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "weights" in stages["train"]["do"]["deps"]


def test_the_weights_file_content_is_fingerprinted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / "encoder.pth"
    fingerprints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(build_unet(MODEL).encoder.state_dict(), path)
        fingerprints.append(trainer.weights_fingerprint({**MODEL, "encoder_weights": "weights/encoder.pth"}))
    assert fingerprints[0] != fingerprints[1] and len(fingerprints[0]) == 64
    assert trainer.weights_fingerprint({**MODEL, "encoder_weights": None}) == "None"


def test_a_method_option_error_names_its_key(one_run, tmp_path):
    params, prepared, _ = one_run
    for run, edits, expected in (
            (RUN, {f"runs.{RUN}.options": {"nope": 1}}, f"runs.{RUN}.options.nope = 1: unknown option of method "
                                                       "strong_only; its options: bce_weighting, loss"),
            ("hybrid", {"runs.hybrid.options": {"loss": "abc"}},
             "runs.hybrid.options.loss = 'abc': must be one of structure, bce_dice, bce"),
            ("hybrid", {"runs.hybrid.method": "strong_weak", "runs.hybrid.options": {"neck_layers": 99}},
             "runs.hybrid.options (method strong_weak): option neck_layers must be an integer from 0 to")):
        params_file = write_params(tmp_path / "params.yaml", edited(params, edits))
        code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs", run=run))
        assert_one_line_error(code, stderr, expected)
    assert not (tmp_path / "runs").exists()


# -- issue 25: nothing a user types can delete what the pipeline did not write --------------------------------
def test_the_checkpoint_cleanup_deletes_only_what_the_trainer_wrote(one_run, tmp_path):
    """Before: the cleanup after a finished training was rmtree(<checkpoint_dir>/<run>), whatever it held."""
    params, prepared, _ = one_run
    folder = tmp_path / "checkpoints"
    keep = [folder / RUN / "notes.txt", folder / RUN / "seed_0" / "mine.bin"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not the trainer's")
    params = edited(params, {"train.checkpoint_dir": str(folder)})
    train_run(run_spec(params, RUN), params, prepared, tmp_path / "runs", show_progress=False)
    assert all(path.read_text() == "not the trainer's" for path in keep)
    assert not (folder / RUN / "seed_0" / CHECKPOINT_NAME).exists(), "its own checkpoint is gone"
    clean = edited(params, {"train.checkpoint_dir": str(tmp_path / "clean")})
    train_run(run_spec(clean, RUN), clean, prepared, tmp_path / "runs_clean", show_progress=False)
    assert not (tmp_path / "clean" / RUN).exists(), "and the folders it made, once empty"


def test_prepare_never_replaces_a_folder_it_did_not_write(one_run, tmp_path):
    """Before: `prepare --out <folder>` removed the folder with everything in it, then wrote the data there."""
    params, _, _ = one_run
    params_file = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "results"
    (out / "ours_10").mkdir(parents=True)
    (out / "ours_10" / "metrics.json").write_text("{}")
    code, stderr = run_stage("prepare", "--params", params_file, "--out", out, "--preview", tmp_path / "p.png")
    assert_one_line_error(code, stderr, f"{out}: holds ours_10, not only prepared data")
    assert (out / "ours_10" / "metrics.json").read_text() == "{}"
    prepared = tmp_path / "prepared"
    assert run_stage("prepare", "--params", params_file, "--out", prepared, "--preview", tmp_path / "p.png")[0] == 0
    assert run_stage("prepare", "--params", params_file, "--out", prepared, "--preview", tmp_path / "p.png")[0] == 0, \
        "a folder prepare wrote is replaced"


def test_a_key_given_twice_in_params_yaml_is_refused_not_the_last_one_silently_kept(one_run, tmp_path):
    """Before: `epochs: 1` then `epochs: 7` trained 7 epochs without a word (DVC itself refuses such a file)."""
    params, prepared, _ = one_run
    text = yaml.safe_dump(params, sort_keys=False)
    assert text.count("  epochs: 1\n") == 1
    params_file = tmp_path / "params.yaml"
    params_file.write_text(text.replace("  epochs: 1\n", "  epochs: 1\n  lr: 0.001\n  epochs: 7\n"))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs"))
    assert_one_line_error(code, stderr, f"{params_file}: not valid YAML (line",
                          "the key 'epochs' appears twice in one mapping (first on line")
    assert not (tmp_path / "runs").exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _float_images_with_nan(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    images = arrays["images"].astype(np.float32)
    images[0, 0, 0] = np.nan
    np.savez(path, **{**arrays, "images": images})


def _mask_value_2(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["masks"][0, 0, 0] = 2
    np.savez(path, **arrays)


DAMAGES = {  # id: (file, how, fragment of the one-line error after the file's path)
    "truncated cbis.npz": ("cbis.npz", _truncate, "damaged or not prepared data"),
    "deleted cbis.npz": ("cbis.npz", lambda path: path.unlink(), "missing from the prepared data"),
    "truncated manifest": ("manifest.csv", _truncate, "rows of this domain, but cbis.npz holds 20 images"),
    "NaN in float images": ("cbis.npz", _float_images_with_nan, "arrays of float32, uint8 (prepare writes uint8)"),
    "mask value 2": ("inbreast.npz", _mask_value_2, "masks or boxes with values other than 0 and 1"),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_damaged_prepared_data_is_one_line_naming_the_file_and_how_to_rebuild_it(damage, stage, one_run, trained,
                                                                                 tmp_path):
    """Before: BadZipFile or IndexError tracebacks, or (NaN images) exit 0 with Dice 0.00 and RuntimeWarnings."""
    params, prepared, _ = one_run
    damaged = Path(shutil.copytree(prepared, tmp_path / "prepared"))
    name, how, fragment = DAMAGES[damage]
    how(damaged / name)
    runs = copy_runs(trained, tmp_path) if stage == "evaluate" else tmp_path / "runs"
    params_file = write_params(tmp_path / "params.yaml", params)
    code, stderr = run_stage(stage, *stage_args(stage, params_file, damaged, runs))
    assert_one_line_error(code, stderr, f"{damaged / name}: ", fragment, "dvc repro prepare")


# -- issue 25: one run, one data set, one schedule ----------------------------------------------------------------
def test_evaluate_and_report_refuse_a_run_trained_on_other_prepared_data(one_run, trained, tmp_path):
    """data.split_seed changed, prepare, then evaluate + report by hand: 6 of 8 "test" images were training images."""
    params, prepared, _ = one_run
    runs = copy_runs(trained, tmp_path)
    resplit = edited(params, {"data.split_seed": params["data"]["split_seed"] + 1})
    params_file = write_params(tmp_path / "params.yaml", resplit)
    other = tmp_path / "prepared"
    assert run_stage("prepare", "--params", params_file, "--out", other, "--preview", tmp_path / "p.png")[0] == 0
    for stage in ("evaluate", "report"):
        code, stderr = run_stage(stage, *stage_args(stage, params_file, other, runs))
        assert_one_line_error(code, stderr, f"{runs / RUN / 'train_info.json'}: seed(s) 0 were trained on other "
                                            f"prepared data than {other} holds now", f"dvc repro train@{RUN}")
    assert (runs / RUN / "metrics.json").is_file(), "evaluate refused before removing anything"


def test_the_report_refuses_runs_of_two_schedules(tiny_prepared, tmp_path):
    """One run re-trained by hand at 6 epochs, params restored: the summary said "6 epochs" for every run."""
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared, epochs=(3, 6))
    params_file = write_params(tmp_path / "params.yaml", params)
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert_one_line_error(code, stderr, "the runs were trained at 2 schedules (epochs 3,",
                          ": strong_only_100; epochs 6,", ": strong_only_10)")
    assert not (tmp_path / "out" / "tables.md").exists()


def test_the_report_names_the_data_the_runs_were_trained_on(tiny_prepared, tmp_path):
    """data.source: real set, then the report alone: it said "the real CBIS-DDSM" of synthetic runs."""
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared)
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"data.source": "real"}))
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert_one_line_error(code, stderr, f"params.yaml data.source is real, but {prepared} holds synthetic data")
    assert not (tmp_path / "out" / "tables.md").exists()


def test_params_edited_while_the_run_trains_fail_the_stage_and_leave_no_outputs(one_run, tmp_path, monkeypatch):
    """train.lr edited during `dvc repro`: dvc.lock recorded the new value, train_info.json the old one, and
    `dvc status` called the stage up to date."""
    params, prepared, _ = one_run
    params_file = write_params(tmp_path / "params.yaml", params)
    real_train_run = trainer.train_run

    def edit_midway(*args, **kwargs):
        info = real_train_run(*args, **kwargs)
        write_params(params_file, edited(params, {"train.lr": 0.5}))  # as if saved while it trained
        return info

    monkeypatch.setattr(trainer, "train_run", edit_midway)
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs"))
    assert_one_line_error(code, stderr, f"run {RUN}: {params_file} changed while it trained", "run `dvc repro` again")
    assert not (tmp_path / "runs" / RUN / "train_info.json").exists()
    assert not (tmp_path / "runs" / RUN / "models").exists()


def _edit_json(path: Path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload, indent=2))


@pytest.mark.parametrize("file, edit, fragment", [
    ("train_info.json", lambda info: info.update(strong_fraction=0.5),
     "train_info.json: not the file {run}/metrics.json was computed with"),
    ("train_info.json", lambda info: info.update(method="ours"),
     "train_info.json: not the file {run}/metrics.json was computed with"),
    ("metrics.json", lambda metrics: metrics["cbis"].update(dice=91.23),
     "metrics.json: its cbis numbers are not those of {run}/per_image.csv"),
    ("metrics.json", lambda metrics: metrics["per_seed"]["0"]["inbreast"].update(smeasure=1.0),
     "metrics.json: its per_seed numbers are not those of {run}/per_image.csv"),
])
def test_the_report_reads_rows_only_from_files_whose_hashes_and_numbers_check_out(tiny_prepared, tmp_path, file,
                                                                                   edit, fragment):
    """An edited train_info.json showed "Ours 50%" beside the paper's 50% row; an edited metrics.json a Dice of
    91.23 beside a paired difference of +0.08."""
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared)
    params_file = write_params(tmp_path / "params.yaml", params)
    assert run_stage("report", *stage_args("report", params_file, prepared, runs))[0] == 0
    _edit_json(runs / "strong_only_10" / file, edit)
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert_one_line_error(code, stderr, str(runs / "strong_only_10" / fragment.format(run=runs / "strong_only_10")),
                          "dvc repro evaluate@strong_only_10")


def test_a_training_refused_on_a_params_value_leaves_no_earlier_evaluation(one_run, trained, tmp_path):
    """`epochs: 0` under `dvc repro`: DVC removed the weights and train_info.json, but metrics.json, per_image.csv
    and examples.npz stayed and `dvc metrics show` listed them."""
    params, prepared, _ = one_run
    runs = copy_runs(trained, tmp_path)
    shutil.rmtree(runs / RUN / "models")  # what `dvc repro` removes before it runs the train stage
    (runs / RUN / "train_info.json").unlink()
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"train.epochs": 0}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, runs))
    assert_one_line_error(code, stderr, "train.epochs = 0: must be an integer >= 1")
    assert not any((runs / RUN / name).exists() for name in ("metrics.json", "per_image.csv", "examples.npz"))


def test_a_report_that_fails_leaves_no_tables_and_names_a_broken_json_file(tiny_prepared, tmp_path):
    """The JSON error named no file, and the earlier tables.md stayed after the failed report."""
    params, prepared = tiny_prepared
    runs = fabricated_pair(tmp_path, prepared)
    params_file = write_params(tmp_path / "params.yaml", params)
    assert run_stage("report", *stage_args("report", params_file, prepared, runs))[0] == 0
    assert (tmp_path / "out" / "tables.md").is_file()
    broken = runs / "strong_only_10" / "metrics.json"
    broken.write_text(broken.read_text()[:-40])
    code, stderr = run_stage("report", *stage_args("report", params_file, prepared, runs))
    assert_one_line_error(code, stderr, f"{broken}: not valid JSON (", "re-run the stage that writes it")
    assert not (tmp_path / "out" / "tables.md").exists()


def children_of(pid: int) -> list[int]:
    """Child processes of `pid` but multiprocessing's resource tracker (which ends on its own)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        command = (status.parent / "cmdline").read_bytes() if (status.parent / "cmdline").exists() else b""
        if int(fields.get("PPid", "0").strip() or 0) == pid and b"resource_tracker" not in command:
            found.append(int(status.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads child processes from /proc")
def test_sigterm_to_a_trainer_stops_its_seed_workers_and_the_run_resumes(one_run, tmp_path):
    """SIGTERM (what SLURM sends before a kill) to a trainer with seed_workers 2: both workers trained on, writing
    last.pt, and a restarted trainer got the lock and crashed on last.pt.tmp -> last.pt."""
    params, prepared, _ = one_run
    params = edited(params, {"train.epochs": 15, "train.checkpoint_dir": str(tmp_path / "ck"), "seeds": [0, 1],
                             "train.seed_workers": 2, "train.num_threads": 2})
    params_file = write_params(tmp_path / "params.yaml", params)
    args = [str(a) for a in stage_args("train", params_file, prepared, tmp_path / "runs")]
    trainer_process = subprocess.Popen([sys.executable, "-m", "benchmark", "train", *args], cwd=REPO,
                                       env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        checkpoints = [tmp_path / "ck" / RUN / f"seed_{seed}" / CHECKPOINT_NAME for seed in (0, 1)]
        deadline = time.time() + 300
        while not all(path.exists() for path in checkpoints) and trainer_process.poll() is None \
                and time.time() < deadline:
            time.sleep(0.1)
        workers = children_of(trainer_process.pid)
        assert trainer_process.poll() is None and len(workers) >= 2, "both seeds train in worker processes"
        trainer_process.send_signal(signal.SIGTERM)
        _, stderr = trainer_process.communicate(timeout=120)
        assert trainer_process.returncode == 1 and f"run {RUN}: stopped by signal 15" in stderr
        time.sleep(1)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "no worker trains on"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(trainer_process.pid, signal.SIGKILL)
        trainer_process.wait()
    stamps = [path.stat().st_mtime_ns for path in checkpoints]
    time.sleep(2)
    assert [path.stat().st_mtime_ns for path in checkpoints] == stamps, "nothing writes the checkpoints any more"
    again = subprocess.run([sys.executable, "-m", "benchmark", "train", *args], cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    info = json.loads((tmp_path / "runs" / RUN / "train_info.json").read_text())
    assert all(info["seeds"][seed]["resumed_from_epoch"] > 0 for seed in ("0", "1")), "both seeds resumed"


def test_an_unknown_encoder_is_reported_under_its_own_key_not_the_method_options(one_run, tmp_path):
    """`model.encoder: resnet999` was reported as "runs.<run>.options (method strong_only): ..."."""
    params, prepared, _ = one_run
    params_file = write_params(tmp_path / "params.yaml", edited(params, {"model.encoder": "resnet999"}))
    code, stderr = run_stage("train", *stage_args("train", params_file, prepared, tmp_path / "runs"))
    line = assert_one_line_error(code, stderr, "model.encoder = 'resnet999': not an encoder of "
                                               "segmentation-models-pytorch")
    assert "options" not in line


def test_no_run_name_reaches_dvcs_shell():
    """DVC interpolates a `runs` key into a stage's command before any schema sees it; no command may carry one."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = (stage.get("do") or stage)["cmd"]
        assert "${" not in command, f"stage {name}: {command}"


@pytest.mark.parametrize("address, expected", [("train@ours_10", "ours_10"), ("dvc.yaml:evaluate@a.b-c", "a.b-c"),
                                               ("train@x;touch PWNED", "x;touch PWNED")])
def test_a_stage_takes_its_run_from_dvc(monkeypatch, address, expected):
    parser = argparse.ArgumentParser()
    add_run_argument(parser)
    monkeypatch.setenv(DVC_STAGE, address)
    assert chosen_run(parser.parse_args(["--from-dvc-stage"]), parser) == expected


def test_a_hostile_run_name_from_dvc_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    params = tiny_params()
    params["runs"]["x';touch PWNED;'"] = params["runs"]["strong_only_10"]  # DVC builds its stage from the key
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv(DVC_STAGE, "train@x';touch PWNED;'")
    monkeypatch.chdir(tmp_path)
    assert run_cli(train_main, ["--from-dvc-stage"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "x';touch PWNED;'" in error and "letters, digits" in error, error
    assert not (tmp_path / "PWNED").exists()
    monkeypatch.delenv(DVC_STAGE)
    assert run_cli(train_main, ["--from-dvc-stage"]) == 1
    assert "not a <stage>@<run> address" in capsys.readouterr().err


# -- a full disk, a read-only folder -------------------------------------------------------------------------
def disk_full_after(nbytes: int):
    """A writer that puts `nbytes` on disk and then fails as a full disk does."""
    def write(self, data, *args, **kwargs):
        with open(self, "wb") as handle:
            handle.write((data.encode() if isinstance(data, str) else bytes(memoryview(data)))[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


@pytest.mark.parametrize("writer", ["model", "json", "figure"])
def test_a_full_disk_leaves_no_temporary_file_and_says_so_in_one_line(writer, tmp_path, monkeypatch):
    """A full disk left 30-100 MB .tmp files and torch's 'enforce fail at inline_container.cc'."""
    from benchmark.artifacts import atomic_torch_save, atomic_write_json
    from benchmark.drawing import plt, save_figure

    path = tmp_path / "out" / {"model": "seed_0.pt", "json": "metrics.json", "figure": "fig.png"}[writer]
    if writer == "figure":
        real_savefig = plt.Figure.savefig

        def savefig(self, target, *args, **kwargs):
            real_savefig(self, target, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(plt.Figure, "savefig", savefig)
    else:
        monkeypatch.setattr(Path, "write_bytes" if writer == "model" else "write_text", disk_full_after(100))
    with pytest.raises(UnwritableOutputError) as error:
        {"model": lambda: atomic_torch_save(path, {"w": torch.zeros(1000)}),
         "json": lambda: atomic_write_json(path, {"a": list(range(1000))}),
         "figure": lambda: save_figure(plt.figure(), path)}[writer]()
    assert str(error.value).startswith(f"{path}: could not be written (No space left on device)")
    assert "\n" not in str(error.value) and list((tmp_path / "out").iterdir()) == []


def test_prepare_on_a_full_disk_leaves_no_half_written_folder(tmp_path, monkeypatch):
    params = tiny_params()
    params_file = write_params(tmp_path / "params.yaml", params)
    real_savez = np.savez

    def savez(file, **arrays):
        real_savez(file, **arrays)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "savez", savez)
    code, stderr = run_stage("prepare", "--params", params_file, "--out", tmp_path / "prepared",
                             "--preview", tmp_path / "preview.png")
    assert_one_line_error(code, stderr, f"{tmp_path / 'prepared'}: could not be written (No space left on device)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_a_read_only_run_folder_is_one_line(tmp_path, monkeypatch):
    """`chmod -w runs/<run>` (OSError 30 on a read-only mount) gave a traceback."""
    from benchmark.artifacts import remove_outputs

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(UnwritableOutputError, match=r"run/metrics.json: could not be removed \(Read-only file "
                                                    r"system\); the stage changed nothing"):
        remove_outputs(tmp_path / "run", ("metrics.json",))
