"""End to end: the real DVC pipeline on a tiny configuration, in a temporary copy of the repository.

Also follows README "Add a method" literally: one new file under methods/ and one entry in
params.yaml, nothing else, and the new row appears in reports/tables.md. Then kills a
`dvc repro` in the middle of a training stage (SIGKILL to its whole process group) and checks
that nothing it left (nor the run's earlier evaluation) looks complete to DVC or to the report, and
that the next `dvc repro` resumes from the checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_pipeline_copy


def readme_method_example() -> str:
    """The code block of README "Add a method", verbatim: the test follows the README literally."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Add a method", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory) -> Path:
    return make_pipeline_copy(tmp_path_factory.mktemp("repo"))


def test_dvc_repro_end_to_end(pipeline_copy: Path):
    work = pipeline_copy
    # Add a method as README says: one file, one params entry.
    (work / "methods" / "box_only.py").write_text(readme_method_example())
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["runs"]["box_only_0"] = {"method": "box_only", "row": "Box-Only", "strong_fraction": 0.0}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = sorted(run(["git", "status", "--porcelain", "--untracked-files=all"], work).splitlines())
    assert changed == [" M params.yaml", "?? methods/box_only.py"], "adding a method touches nothing else"

    run(["dvc", "repro"], work)
    tables = (work / "reports" / "tables.md").read_text()
    assert "synthetic stand-in" in tables
    assert "| Strong-Only | 100% | 0% |" in tables and "| Strong-Only | 10% | 0% |" in tables
    assert "| Box-Only | 0% | 100% |" in tables, "the new method's row is reported"
    metrics = json.loads((work / "runs" / "strong_only_100" / "metrics.json").read_text())
    assert 0 <= metrics["cbis"]["dice"] <= 100 and metrics["inbreast"]["n_images"] == 6
    assert (work / "reports" / "figures" / "data_preview.png").stat().st_size > 1000

    # Nothing changed: nothing runs again.
    assert "changed" not in run(["dvc", "status"], work)
    second = run(["dvc", "repro"], work)
    assert "Running stage" not in second

    # Editing one method's file invalidates only that method's runs (and the report after them).
    with open(work / "methods" / "strong_only.py", "a") as handle:
        handle.write("\n# edited\n")
    status = run(["dvc", "status"], work)
    assert "train@strong_only_100" in status and "train@strong_only_10" in status
    assert "train@box_only_0" not in status and "prepare" not in status.split("train@")[0]
    (work / "methods" / "strong_only.py").write_text((REPO / "methods" / "strong_only.py").read_text())

    # The declared metrics and plots are readable by DVC itself.
    shown = run(["dvc", "metrics", "show"], work)
    assert "runs/strong_only_100/metrics.json" in shown and "cbis.dice" in shown
    run(["dvc", "plots", "show", "--json"], work)


def test_killed_stage_leaves_nothing_complete_and_resumes(pipeline_copy: Path):
    work = pipeline_copy
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run(["dvc", "repro"], work)  # up to date first (the previous test may have edited things)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checkpoint = work / "checkpoints" / "strong_only_100" / "seed_0" / "last.pt"
    process = subprocess.Popen(["dvc", "repro", "train@strong_only_100"], cwd=work, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the training process it started
    process.wait()
    assert checkpoint.exists(), "the stage was killed after its first epoch"

    run_dir = work / "runs" / "strong_only_100"
    assert not (run_dir / "train_info.json").exists() and not (run_dir / "models").exists()
    for name in ("metrics.json", "per_image.csv", "examples.npz"):  # of the evaluation before the re-training
        assert not (run_dir / name).exists(), f"{name} of the earlier evaluation looks current"
    shown = run(["dvc", "metrics", "show"], work)
    row = next(line for line in shown.splitlines() if line.startswith("runs/strong_only_100/metrics.json"))
    assert set(row.split()[1:]) == {"-"}, f"dvc metrics show lists no values for the run: {row}"
    assert "train@strong_only_100" in run(["dvc", "status"], work), "DVC does not take the killed stage as done"
    report = subprocess.run(["python", "-m", "benchmark", "report", "--out", str(work / "report_check" / "tables.md")],
                            cwd=work, env=env, capture_output=True, text=True)
    assert report.returncode != 0 and "strong_only_100" in report.stderr, "the report refuses an unfinished run"

    resumed = run(["dvc", "repro"], work)
    assert "resumed after epoch" in resumed
    assert "changed" not in run(["dvc", "status"], work)
    info = json.loads((run_dir / "train_info.json").read_text())
    assert info["seeds"]["0"]["resumed_from_epoch"] >= 1 and info["epochs"] == 3
    assert not (work / "checkpoints" / "strong_only_100").exists()


LAUNCHED = ("strong_only_100", "strong_only_10")


def test_local_executor_gives_what_dvc_repro_gives_and_dvc_records_it(pipeline_copy: Path):
    work = pipeline_copy
    run(["dvc", "repro"], work)
    expected = {name: (work / "runs" / name / "per_image.csv").read_bytes() for name in LAUNCHED}
    for name in LAUNCHED:  # the train stages are stale now: their outputs are gone
        shutil.rmtree(work / "runs" / name)
    out = run(["python", "-m", "benchmark", "launch", "--executor", "local", "--per-gpu", "2", "--poll-seconds", "1"],
              work)
    assert "training 2 run(s), 2 at a time on this machine" in out and "trained and committed 2 run(s)" in out
    for name in LAUNCHED:
        assert f"{name}: done on " in out and f"log logs/launch/{name}.log" in out
        assert f"python -m benchmark train {name} on " in (work / "logs" / "launch" / f"{name}.log").read_text()
    status = run(["dvc", "status"], work)
    assert not any(f"train@{name}:" in status for name in LAUNCHED), "dvc commit recorded the launched runs"
    assert "evaluate@strong_only_100" in status
    repro = run(["dvc", "repro"], work)
    assert "Running stage 'train@" not in repro and "Running stage 'evaluate@strong_only_10'" in repro
    for name in LAUNCHED:
        assert (work / "runs" / name / "per_image.csv").read_bytes() == expected[name], \
            f"{name}: the launcher's training gives dvc repro's per-image results"
    assert "changed" not in run(["dvc", "status"], work)
    assert "nothing to launch" in run(["python", "-m", "benchmark", "launch"], work)


def test_a_killed_local_job_resumes_when_launched_again(pipeline_copy: Path):
    work = pipeline_copy
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run(["dvc", "repro", "prepare"], work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["epochs"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checkpoint = work / "checkpoints" / "strong_only_10" / "seed_0" / "last.pt"
    launcher = subprocess.Popen(["python", "-m", "benchmark", "launch", "--runs", "strong_only_10",
                                 "--poll-seconds", "1"], cwd=work, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher, submitit's process and the training
    launcher.wait()
    assert checkpoint.exists(), "the job was killed after its first epoch"
    assert "train@strong_only_10:" in run(["dvc", "status"], work), "a killed job is not committed"

    out = run(["python", "-m", "benchmark", "launch", "--runs", "strong_only_10", "--poll-seconds", "1"], work)
    assert "trained and committed 1 run(s)" in out
    assert "resumed after epoch" in (work / "logs" / "launch" / "strong_only_10.log").read_text()
    info = json.loads((work / "runs" / "strong_only_10" / "train_info.json").read_text())
    assert info["seeds"]["0"]["resumed_from_epoch"] >= 1 and info["epochs"] == 4
    assert "train@strong_only_10:" not in run(["dvc", "status"], work)


def test_a_failed_run_is_reported_with_its_log_and_left_uncommitted(pipeline_copy: Path):
    work = pipeline_copy
    run(["dvc", "repro", "prepare"], work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["runs"]["broken_0"] = {"method": "strong_only", "row": "Broken", "strong_fraction": 1.0,
                                  "options": {"loss": "no_such_loss"}}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(work / "runs" / "strong_only_100", ignore_errors=True)
    result = subprocess.run(["python", "-m", "benchmark", "launch", "--runs", "broken_0,strong_only_100",
                             "--per-gpu", "2", "--poll-seconds", "1"], cwd=work, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert result.returncode == 1
    assert "broken_0: FAILED (exit 1)" in result.stdout and "log logs/launch/broken_0.log" in result.stdout
    assert "failed: broken_0" in result.stderr and "the others are" in result.stderr
    assert "no_such_loss" in (work / "logs" / "launch" / "broken_0.log").read_text()
    status = run(["dvc", "status"], work)
    assert "train@broken_0:" in status and "train@strong_only_100:" not in status
