"""`benchmark.tools.launch --executor slurm` against a real single-node SLURM cluster started on localhost.

The cluster (tests/slurm_cluster.py) needs Debian's slurm-wlm, slurmdbd, munge and mariadb-server and root;
without them every test here skips, saying what was missing. With them: a two-run tiny pipeline trained as
one job array gives the per-image results `dvc repro` gives and leaves `dvc status` clean; a job sent
SLURM's time-limit/preemption signal is checkpointed by submitit, requeued, and resumes from the trainer's
per-epoch checkpoint; a killed job is reported with its logs, left uncommitted, and resumes when launched again (a plain
`scancel` lets the training run on for SLURM's KillWait, and a run that finishes in it is committed).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import slurm_cluster
from tests.conftest import make_pipeline_copy

RUNS = ("strong_only_100", "strong_only_10")
STAGES = [f"{stage}@{name}" for name in RUNS for stage in ("train", "evaluate")]  # not the report: not needed here
SLURM_FLAGS = ["--executor", "slurm", "--gpus-per-job", "0", "--cpus-per-job", "1", "--max-parallel", "2",
               "--time-limit", "20", "--poll-seconds", "1"]
WAIT_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterUnavailable as error:
        pytest.skip(f"no SLURM test cluster on this machine: {error}")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def work(cluster, tmp_path_factory) -> Path:
    return make_pipeline_copy(tmp_path_factory.mktemp("repo"))


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env={**env, "DVC_NO_ANALYTICS": "1"}, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def running_job(cluster) -> str | None:
    jobs = cluster.command("squeue", "-h", "-o", "%i %T").split()
    return jobs[0] if len(jobs) == 2 and jobs[1] == "RUNNING" else None


def background_launch(work: Path, env: dict[str, str], run_name: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(["python", "-m", "benchmark", "launch", "--runs", run_name, *SLURM_FLAGS], cwd=work,
                                env={**env, "DVC_NO_ANALYTICS": "1"}, stdout=out, stderr=subprocess.STDOUT)


def what_happened(cluster, work: Path, job: str, launcher_log: Path) -> str:
    """The launcher's output, the ends of the job's logs and what the controller logged about the job."""
    parts = [f"launcher:\n{launcher_log.read_text()}"]
    for log in sorted((work / "logs" / "launch" / "submitit").glob(f"{job}_*log.*")):
        parts.append(f"{log.name}:\n" + "\n".join(log.read_text().splitlines()[-15:]))
    controller = (cluster.root / "slurmctld.log").read_text().splitlines()
    parts.append("slurmctld.log:\n" + "\n".join(line for line in controller if re.search(rf"JobId={job}\b", line)))
    return "\n".join(parts)


def test_job_array_gives_what_dvc_repro_gives(cluster, work: Path):
    env = cluster.env
    run(["dvc", "repro", *STAGES], work, env)
    expected = {name: (work / "runs" / name / "per_image.csv").read_bytes() for name in RUNS}
    for name in RUNS:
        shutil.rmtree(work / "runs" / name)

    out = run(["python", "-m", "benchmark", "launch", *SLURM_FLAGS, "--sbatch=--comment=benchmark-test"], work, env)
    array = re.search(r"submitted SLURM job array (\d+): 2 run\(s\), at most 2 at a time", out)
    assert array and "trained and committed 2 run(s)" in out, out
    script = (work / "logs" / "launch" / "submitit" / f"{array.group(1)}_submission.sh").read_text().splitlines()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --cpus-per-task=1", "#SBATCH --time=20",
                 "#SBATCH --comment=benchmark-test", "#SBATCH --signal=USR2@90"):
        assert line in script
    states = cluster.command("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array.group(1)).split()
    assert sorted(states) == [f"{array.group(1)}_0|COMPLETED", f"{array.group(1)}_1|COMPLETED"]

    repro = run(["dvc", "repro", *STAGES], work, env)
    assert "Running stage 'train@" not in repro
    for name in RUNS:
        assert (work / "runs" / name / "per_image.csv").read_bytes() == expected[name], \
            f"{name}: trained on SLURM, the same per-image results as dvc repro"
    assert "up to date" in run(["dvc", "status", *STAGES], work, env)


def test_a_signalled_job_is_requeued_and_resumes_from_its_checkpoint(cluster, work: Path, tmp_path: Path):
    env = cluster.env
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["epochs"] = 6
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checkpoint = work / "checkpoints" / "strong_only_10" / "seed_0" / "last.pt"
    run_log = work / "logs" / "launch" / "strong_only_10.log"
    earlier = len(run_log.read_text()) if run_log.exists() else 0
    launcher = background_launch(work, env, "strong_only_10", tmp_path / "launch.out")
    try:
        job = wait_for(lambda: running_job(cluster), "the job to run")
        wait_for(checkpoint.exists, "the first epoch's checkpoint")
        # what SLURM sends 90 s before the time limit (--signal=USR2@90), and submitit's preemption signal
        cluster.command("scancel", "--signal=USR2", job)
        wait_for(lambda: all(field in cluster.command("scontrol", "show", "job", job)
                             for field in ("Restarts=1", "JobState=PENDING")), "the requeue")
        # SLURM starts the requeued job after its credential lifetime (the cluster's cred_expire); forcing an
        # earlier start makes the node refuse it ("Job credential revoked") and the job fails
        assert launcher.wait(timeout=WAIT_S) == 0, what_happened(cluster, work, job, tmp_path / "launch.out")
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "trained and committed 1 run(s)" in (tmp_path / "launch.out").read_text()
    log = run_log.read_text()[earlier:]
    assert log.count("python -m benchmark train strong_only_10 on ") == 2 and "resumed after epoch" in log
    info = json.loads((work / "runs" / "strong_only_10" / "train_info.json").read_text())
    assert info["seeds"]["0"]["resumed_from_epoch"] >= 1 and info["epochs"] == 6
    job_log = (work / "logs" / "launch" / "submitit" / f"{job}_0_log.out").read_text()
    assert "Calling checkpoint method" in job_log and "Requeued job" in job_log


def test_a_killed_job_is_reported_left_uncommitted_and_resumes_when_launched_again(cluster, work: Path,
                                                                                 tmp_path: Path):
    env = cluster.env
    checkpoint = work / "checkpoints" / "strong_only_100" / "seed_0" / "last.pt"
    launcher = background_launch(work, env, "strong_only_100", tmp_path / "launch.out")
    try:
        job = wait_for(lambda: running_job(cluster), "the job to run")
        wait_for(checkpoint.exists, "the first epoch's checkpoint")
        # SIGKILL to every process of the job, as the OOM killer or a lost node would (a plain scancel sends
        # SIGTERM first, and the training, left to submitit, runs on until SLURM's KillWait ends it)
        for line in cluster.command("scontrol", "listpids", job).splitlines()[1:]:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        assert launcher.wait(timeout=WAIT_S) == 1
    finally:
        if launcher.poll() is None:
            launcher.kill()
    out = (tmp_path / "launch.out").read_text()
    assert f"strong_only_100: FAILED, job {job} ended without finishing it (SLURM state FAILED" in out, out
    assert "logs logs/launch/strong_only_100.log and " in out and f"{job}_0_log.err" in out
    assert "train@strong_only_100:" in run(["dvc", "status"], work, env), "the killed run is not committed"

    again = run(["python", "-m", "benchmark", "launch", "--runs", "strong_only_100", *SLURM_FLAGS], work, env)
    assert "trained and committed 1 run(s)" in again
    assert "resumed after epoch" in (work / "logs" / "launch" / "strong_only_100.log").read_text()
    run(["dvc", "repro", *STAGES], work, env)
    assert "up to date" in run(["dvc", "status", *STAGES], work, env)
    left = [name for name in os.listdir(work / "checkpoints") if not name.endswith(".lock")]  # the runs' lock files
    assert not left, "finished runs leave no checkpoints"
