"""benchmark.tools.launch without a cluster: the `launch:` settings and their flags, how local slots share the runs,
and the sbatch script submitit generates from our settings (array size, concurrency cap, resources); when a
SLURM job counts as over (a requeued one is not, whatever the accounting says)."""
from __future__ import annotations

import copy
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

from benchmark.config import ConfigError, launch_settings, load_params
from benchmark.tools import launch
from tests.conftest import REPO


def settings_from(argv: list[str], params: dict | None = None):
    params = params if params is not None else load_params(REPO / "params.yaml")
    args = launch.parse_args(argv)
    return launch_settings({"launch": launch.merged_launch_section(params, args)})


def test_both_profiles_have_a_valid_launch_section():
    for path in (REPO / "params.yaml", REPO / "profiles" / "paper.yaml"):
        settings = launch_settings(load_params(path), path)
        assert settings.executor == "local" and settings.gpus == () and settings.slurm.max_parallel >= 1


def test_flags_override_params_yaml():
    settings = settings_from(["--executor", "slurm", "--partition", "gpu", "--account", "lab", "--time-limit", "30",
                              "--gpus-per-job", "2", "--cpus-per-job", "8", "--mem-gb", "64", "--max-parallel", "3",
                              "--sbatch=--qos=high", "--sbatch", "#SBATCH --exclusive", "--setup", "module load cuda",
                              "--gpus", "0,1", "--per-gpu", "4", "--logs", "elsewhere"])
    slurm = settings.slurm
    assert settings.executor == "slurm" and str(settings.logs) == "elsewhere"
    assert (slurm.partition, slurm.account, slurm.time_limit_min, slurm.gpus_per_job, slurm.cpus_per_job,
            slurm.mem_gb, slurm.max_parallel) == ("gpu", "lab", 30, 2, 8, 64.0, 3)
    assert slurm.extra_sbatch == {"qos": "high", "exclusive": True} and slurm.setup == ("module load cuda",)
    assert settings.gpus == (0, 1) and settings.per_gpu == 4
    assert settings_from(["--gpus", ""]).gpus == (), "an empty --gpus means CPU processes"


@pytest.mark.parametrize("edit, message", [  # every key's bounds: tests/test_schema.py
    (lambda s: s.update(executor="pbs"), 'launch.executor = "pbs": must be one of local, slurm'),
    (lambda s: s["local"].update(per_gpu=0), "launch.local.per_gpu = 0: must be an integer >= 1"),
    (lambda s: s["local"].update(gpus="0,1"), 'launch.local.gpus = "0,1": must be a list of distinct CUDA device ids'),
    (lambda s: s["slurm"].update(time_limit_min="4h"), 'launch.slurm.time_limit_min = "4h": must be an integer >= 1'),
    (lambda s: s["slurm"].update(mem_gb=-1), "launch.slurm.mem_gb = -1: must be a number > 0, or null"),
    (lambda s: s["slurm"].update(extra_sbatch=["-q normal"]), 'launch.slurm.extra_sbatch[0] = "-q normal": '
                                                              "launch.slurm.extra_sbatch must be a list of long"),
    (lambda s: s["slurm"].pop("partition"), "launch.slurm.partition: missing; it must be a partition name, or null"),
])
def test_bad_launch_values_name_their_key(edit, message):
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    edit(params["launch"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        launch_settings(params)
    with pytest.raises(ConfigError, match="missing section 'launch'"):
        launch_settings({"runs": {}})


def test_a_bad_flag_is_one_line_on_stderr_and_nothing_is_launched(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert launch.main(["--per-gpu", "0"]) == 2
    assert launch.main(["--gpus", "0,x"]) == 2
    assert launch.main(["--runs", "nope"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["error: params.yaml: launch.local.per_gpu = 0: must be an integer >= 1",
                      "error: --gpus must be comma-separated CUDA device ids (e.g. 0,1), got '0,x'.",
                      "error: --runs: not configured in params.yaml: nope"]
    assert not (tmp_path / "logs").exists()


def test_local_slots_are_gpus_times_per_gpu_and_share_the_runs():
    runs = [f"r{i}" for i in range(5)]
    assert launch.local_slots(runs, (0, 1), 2) == [(0, ["r0", "r4"]), (0, ["r1"]), (1, ["r2"]), (1, ["r3"])]
    assert launch.local_slots(runs[:1], (0, 1), 2) == [(0, ["r0"])], "no idle processes for fewer runs"
    assert launch.local_slots(runs, (), 2) == [(None, ["r0", "r2", "r4"]), (None, ["r1", "r3"])], "CPU slots"


def test_generated_sbatch_script_has_the_array_cap_and_resources(tmp_path):
    settings = settings_from(["--executor", "slurm", "--partition", "gpu", "--account", "lab", "--time-limit", "30",
                              "--gpus-per-job", "2", "--cpus-per-job", "8", "--mem-gb", "64", "--max-parallel", "3",
                              "--sbatch=--qos=high", "--sbatch=--exclusive", "--setup", "module load cuda/12.4"])
    parameters = launch.slurm_parameters(settings)
    assert set(parameters) <= SlurmExecutor._valid_parameters(), "every key is one submitit's SlurmExecutor takes"
    # what SlurmExecutor writes for an array of 5 runs (submitit's own renderer, as used at submission)
    script = _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=tmp_path, map_count=5,
                                 **parameters)
    lines = script.splitlines()
    for line in ("#SBATCH --array=0-4%3", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=30",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                 "#SBATCH --qos=high", "#SBATCH --exclusive", "#SBATCH --signal=USR2@90", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "module load cuda/12.4"):
        assert line in lines, f"{line!r} not in the sbatch script:\n{script}"
    assert lines.index("module load cuda/12.4") < next(i for i, line in enumerate(lines) if line.startswith("srun"))
    cpu_only = launch.slurm_parameters(settings_from(["--gpus-per-job", "0"]))
    assert "gpus_per_node" not in cpu_only and "partition" not in cpu_only and "account" not in cpu_only


def test_params_yaml_launch_section_is_documented_yaml():
    text = (REPO / "params.yaml").read_text()
    assert "launch:" in text and yaml.safe_load(text)["launch"]["slurm"]["extra_sbatch"] == []


class _EndedAttempt:
    """A SLURM job as submitit sees it after a requeue: sacct showed the ended attempt, so done() is True and
    cached, and no result has been written yet."""
    job_id = "3_0"

    def __init__(self, folder: Path) -> None:
        self.paths = type("Paths", (), {"result_pickle": folder / "3_0_result.pkl"})()

    def done(self) -> bool:
        return True


@pytest.mark.parametrize("controller_state, ended", [
    ("PENDING", False), ("RUNNING", False), ("REQUEUED", False), ("COMPLETING", False),
    ("FAILED", True), ("CANCELLED", True), ("TIMEOUT", True), (None, True),  # None: the controller forgot it
])
def test_a_requeued_slurm_job_is_not_over_until_the_controller_says_so(tmp_path, monkeypatch, controller_state,
                                                                       ended):
    monkeypatch.setattr(launch, "slurm_controller_state", lambda job_id: controller_state)
    job = _EndedAttempt(tmp_path)
    assert launch.has_ended(job, "slurm") is ended
    job.paths.result_pickle.write_bytes(b"")  # the requeued attempt finished and wrote its result
    assert launch.has_ended(job, "slurm")
    assert launch.has_ended(_EndedAttempt(tmp_path / "elsewhere"), "local")  # processes: submitit knows


def test_the_controller_state_is_read_from_scontrol(monkeypatch):
    shown = ("JobId=4 ArrayJobId=3 ArrayTaskId=0 JobName=benchmark-train\n"
             "   JobState=PENDING Reason=BeginTime Restarts=1")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=shown, stderr="")
    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    assert launch.slurm_controller_state("3_0") == "PENDING"
    assert calls == [["scontrol", "show", "job", "3_0"]]
    monkeypatch.setattr(launch.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 1, stdout="", stderr="slurm_load_jobs error: Invalid job id specified"))
    assert launch.slurm_controller_state("3_0") is None


class _RequeuedJob(_EndedAttempt):
    """A job whose controller shows the requeued attempt queued, then running, then forgets it once it wrote
    its result."""

    def __init__(self, folder: Path, states: list[str]) -> None:
        super().__init__(folder)
        self.states = states


def test_a_requeued_job_is_waited_for_until_its_result(tmp_path, monkeypatch):
    job = _RequeuedJob(tmp_path, ["REQUEUED", "PENDING", "PENDING", "RUNNING", "COMPLETING"])

    def controller(job_id):
        if job.states:
            return job.states.pop(0)
        job.paths.result_pickle.write_bytes(b"")  # the requeued attempt finished
        return None
    monkeypatch.setattr(launch, "slurm_controller_state", controller)
    assert list(launch.as_they_end([job], "slurm", poll_seconds=0.01)) == [job]
    assert job.paths.result_pickle.exists(), "yielded only once the requeued attempt had written its result"


def test_a_job_the_controller_shows_failed_is_over_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "slurm_controller_state", lambda job_id: "FAILED")
    job, started = _EndedAttempt(tmp_path), time.monotonic()
    assert list(launch.as_they_end([job], "slurm", poll_seconds=5.0)) == [job]
    assert time.monotonic() - started < 1, "no wait: a job that ended without its result is reported"
