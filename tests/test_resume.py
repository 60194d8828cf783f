"""Interrupted training resumes exactly, incompatible checkpoints are refused, a seed is reproducible.

- every registered method: interrupted after epoch 1 and resumed == never interrupted (bit for bit);
- a real `python -m benchmark train` subprocess killed with SIGKILL mid-epoch, re-run: the same
  per-image metrics as an uninterrupted run, and the completed epochs were not trained again;
- a checkpoint written under another configuration, or another resolved precision, is not resumed from;
- checkpoints are written at most once per `train.checkpoint_every_s`, never after the last epoch,
  and how often they are written changes no weight;
- two runs of the same seed on CPU write identical per-image CSVs.
"""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import benchmark.training.train as trainer
from benchmark.config import RunSpec, run_spec
from benchmark.evaluation.evaluate import evaluate_run
from benchmark.training.train import CHECKPOINT_NAME, checkpoint_dir, train_run
from methods import available_methods, get_method

REPO = Path(__file__).resolve().parents[1]


def two_epoch_params(params: dict, checkpoints: Path) -> dict:
    params = copy.deepcopy(params)
    params["train"].update(epochs=2, checkpoint_dir=str(checkpoints))
    return params


def spec_for(method: str) -> RunSpec:
    fraction = 0.0 if not get_method(method).uses_strong else 1.0 if not get_method(method).uses_weak else 0.25
    return RunSpec(name=f"resume_{method}", method=method, strong_fraction=fraction, seeds=(0,), row=method)


class Interrupted(Exception):
    pass


def interrupt_after_first_epoch_then_resume(spec: RunSpec, params: dict, prepared, runs: Path, monkeypatch) -> dict:
    """Trains `spec` until its first checkpoint is written, kills it there, trains it again: the resumed info."""
    real_save = trainer.atomic_torch_save

    def save_then_die(path, payload):
        real_save(path, payload)
        if Path(path).name == CHECKPOINT_NAME and payload["epoch"] == 1:
            raise Interrupted("killed after the first epoch's checkpoint")

    monkeypatch.setattr(trainer, "atomic_torch_save", save_then_die)
    with pytest.raises(Interrupted):
        train_run(spec, params, prepared, runs, show_progress=False)
    monkeypatch.setattr(trainer, "atomic_torch_save", real_save)
    assert not (runs / spec.name / "train_info.json").exists()
    return train_run(spec, params, prepared, runs, show_progress=False)


@pytest.mark.parametrize("method", available_methods())
def test_resumed_training_equals_uninterrupted(method, tiny_prepared, tmp_path, monkeypatch):
    params, prepared = tiny_prepared
    spec = spec_for(method)
    straight = train_run(spec, two_epoch_params(params, tmp_path / "ck_a"), prepared, tmp_path / "a",
                         show_progress=False)

    params_b = two_epoch_params(params, tmp_path / "ck_b")
    resumed = interrupt_after_first_epoch_then_resume(spec, params_b, prepared, tmp_path / "b", monkeypatch)

    assert resumed["seeds"]["0"]["resumed_from_epoch"] == 1 and straight["seeds"]["0"]["resumed_from_epoch"] == 0
    before = resumed["seeds"]["0"]["seconds_before_resume"]
    assert before > 0 and straight["seeds"]["0"]["seconds_before_resume"] == 0
    assert resumed["train_wall_seconds"] >= before, "the stage's time counts the epoch trained before the interruption"
    a = torch.load(tmp_path / "a" / spec.name / "models" / "seed_0.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / spec.name / "models" / "seed_0.pt", weights_only=True)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{method}: resumed weights differ from uninterrupted ones in {different[:5]}"
    log_a = pd.read_csv(tmp_path / "a" / spec.name / "train_log.csv").drop(columns="seconds")
    log_b = pd.read_csv(tmp_path / "b" / spec.name / "train_log.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(log_a, log_b)
    assert not checkpoint_dir(params_b, spec, 0).parent.exists(), "checkpoints are removed once the run is complete"


def test_a_resumed_seed_does_not_train_self_correctings_ancillary_again(tiny_prepared, tmp_path, monkeypatch):
    """The checkpoint holds the trained ancillary, so a resume skips its stage (about 23 min per seed at 192 px);
    that the weights still equal an uninterrupted run's is the test above."""
    params, prepared = tiny_prepared
    method = get_method("self_correcting")
    hook, stage, resuming, stages = method.on_train_start, method._train_ancillary, [], []

    def recording_hook(self, context):
        resuming.append(context.resuming)
        hook(self, context)

    def recording_stage(self, context, steps):
        stages.append(steps)
        stage(self, context, steps)

    monkeypatch.setattr(method, "on_train_start", recording_hook)
    monkeypatch.setattr(method, "_train_ancillary", recording_stage)
    resumed = interrupt_after_first_epoch_then_resume(spec_for("self_correcting"),
                                                      two_epoch_params(params, tmp_path / "ck"), prepared,
                                                      tmp_path / "runs", monkeypatch)
    assert resumed["seeds"]["0"]["resumed_from_epoch"] == 1
    assert resuming == [False, True], "the trainer tells the hook whether the seed resumes"
    assert len(stages) == 1 and stages[0] > 0, f"the ancillary stage ran {len(stages)} times, not once"


def test_checkpoints_follow_the_interval_and_never_change_the_weights(tiny_prepared, tmp_path, monkeypatch):
    params, prepared = tiny_prepared
    spec = spec_for("strong_only")
    real_save, saved = trainer.atomic_torch_save, []

    def recording_save(path, payload):
        if Path(path).name == CHECKPOINT_NAME:
            saved.append(payload["epoch"])
        real_save(path, payload)

    monkeypatch.setattr(trainer, "atomic_torch_save", recording_save)
    weights = {}
    for every_s, expected in ((0, [1, 2]), (3600, [])):
        saved.clear()
        run_params = copy.deepcopy(params)
        run_params["train"].update(epochs=3, checkpoint_dir=str(tmp_path / f"ck_{every_s}"),
                                   checkpoint_every_s=every_s)
        train_run(spec, run_params, prepared, tmp_path / f"runs_{every_s}", show_progress=False)
        assert saved == expected, f"checkpoint_every_s = {every_s}: checkpoints after epochs {saved}"
        weights[every_s] = torch.load(tmp_path / f"runs_{every_s}" / spec.name / "models" / "seed_0.pt",
                                      weights_only=True)
    assert all(torch.equal(weights[0][key], weights[3600][key]) for key in weights[0])


def train_until_the_first_checkpoint(spec: RunSpec, params: dict, prepared, out: Path, monkeypatch) -> None:
    """Trains `spec` until its first checkpoint is written and stops there, as a kill would."""
    real_save = trainer.atomic_torch_save

    def save_then_die(path, payload):
        real_save(path, payload)
        if Path(path).name == CHECKPOINT_NAME:
            raise Interrupted

    monkeypatch.setattr(trainer, "atomic_torch_save", save_then_die)
    with pytest.raises(Interrupted):
        train_run(spec, params, prepared, out, show_progress=False)
    monkeypatch.setattr(trainer, "atomic_torch_save", real_save)


def test_incompatible_checkpoint_is_not_resumed(tiny_prepared, tmp_path, monkeypatch, capsys):
    params, prepared = tiny_prepared
    spec = spec_for("strong_only")
    params_a = two_epoch_params(params, tmp_path / "ck")
    train_until_the_first_checkpoint(spec, params_a, prepared, tmp_path / "out", monkeypatch)

    changed = copy.deepcopy(params_a)
    changed["train"]["lr"] = 0.5 * float(changed["train"]["lr"])
    info = train_run(spec, changed, prepared, tmp_path / "out", show_progress=False)
    assert info["seeds"]["0"]["resumed_from_epoch"] == 0
    assert "written for a different config; not resuming from it" in capsys.readouterr().out


def test_a_checkpoint_of_other_resolved_numerics_is_not_resumed(tiny_prepared, tmp_path, monkeypatch, capsys):
    """`precision: auto` is one setting but two numerics: a bf16 checkpoint (a CPU with native bf16) must not be
    continued in fp32 (a session on a CPU without it), which would train one seed in two precisions."""
    params, prepared = tiny_prepared
    spec = spec_for("strong_only")
    params = two_epoch_params(params, tmp_path / "ck")
    params["train"]["precision"] = "auto"
    monkeypatch.setattr(trainer, "resolve_precision", lambda requested, device: "bf16")
    train_until_the_first_checkpoint(spec, params, prepared, tmp_path / "out", monkeypatch)
    monkeypatch.setattr(trainer, "resolve_precision", lambda requested, device: "fp32")
    info = train_run(spec, params, prepared, tmp_path / "out", show_progress=False)
    assert info["precision"] == "fp32"
    assert info["seeds"]["0"]["resumed_from_epoch"] == 0
    assert "written for a different numerics; not resuming from it" in capsys.readouterr().out


def test_same_seed_gives_identical_per_image_metrics(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    params["train"]["checkpoint_dir"] = str(tmp_path / "ck")
    name = "strong_only_100"
    spec = run_spec(params, name)
    outputs = []
    for out in ("first", "second"):
        train_run(spec, params, prepared, tmp_path / out, show_progress=False)
        evaluate_run(name, params, prepared, tmp_path / out)
        outputs.append((tmp_path / out / name / "per_image.csv").read_bytes())
    assert outputs[0] == outputs[1]


def _train_command(params_file: Path, prepared: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmark", "train", "strong_only_100", "--params", str(params_file),
            "--prepared", str(prepared), "--out", str(out)]


def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    params["train"].update(epochs=4, steps_per_epoch="all_train")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def write_params(name: str) -> Path:
        params["train"]["checkpoint_dir"] = str(tmp_path / f"ck_{name}")
        path = tmp_path / f"params_{name}.yaml"
        path.write_text(yaml.safe_dump(params))
        return path

    straight_params = write_params("straight")
    subprocess.run(_train_command(straight_params, prepared, tmp_path / "straight"), check=True, env=env,
                   capture_output=True, cwd=REPO)

    killed_params = write_params("killed")
    checkpoint = tmp_path / "ck_killed" / "strong_only_100" / "seed_0" / CHECKPOINT_NAME
    process = subprocess.Popen(_train_command(killed_params, prepared, tmp_path / "killed"), env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # right after the first checkpoint: inside the next epoch
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run was killed, not finished"
    assert not (tmp_path / "killed" / "strong_only_100" / "train_info.json").exists()
    done_epochs = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= done_epochs < 4

    rerun = subprocess.run(_train_command(killed_params, prepared, tmp_path / "killed"), check=True, env=env,
                           capture_output=True, text=True, cwd=REPO)
    assert f"resumed after epoch {done_epochs} of 4" in rerun.stderr + rerun.stdout
    info = yaml.safe_load((tmp_path / "killed" / "strong_only_100" / "train_info.json").read_text())
    assert info["seeds"]["0"]["resumed_from_epoch"] == done_epochs, "completed epochs were not trained again"

    for name, params_file in (("straight", straight_params), ("killed", killed_params)):
        evaluate_run("strong_only_100", yaml.safe_load(params_file.read_text()), prepared, tmp_path / name)
    straight_csv = (tmp_path / "straight" / "strong_only_100" / "per_image.csv").read_bytes()
    killed_csv = (tmp_path / "killed" / "strong_only_100" / "per_image.csv").read_bytes()
    assert straight_csv == killed_csv


def test_the_time_before_a_resume_counts_each_wave_of_seeds_by_its_longest():
    assert trainer.wall_before_resume([10.0, 30.0, 20.0], workers=3) == 30.0  # side by side
    assert trainer.wall_before_resume([10.0, 30.0, 20.0], workers=1) == 60.0  # one after another
    assert trainer.wall_before_resume([10.0, 30.0, 20.0], workers=2) == 50.0  # (10, 30), then 20
    assert trainer.wall_before_resume([0.0, 0.0], workers=2) == 0.0  # never interrupted
