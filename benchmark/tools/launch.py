"""Train the runs DVC reports stale as submitit jobs (local processes or one SLURM job array), then `dvc commit` them.

    dvc repro prepare
    python -m benchmark launch --executor local --gpus 0,1,2,3 --per-gpu 4   # 16 processes on this machine
    python -m benchmark launch --executor slurm --partition gpu --time-limit 240
    dvc repro                                                                 # evaluates and reports only

Every job runs the train stage's own command, `python -m benchmark train <run>`, in the repository, so a
run trained here is the run `dvc repro` would have trained. `--executor local` starts `len(gpus) x
per_gpu` submitit processes on this machine (each pinned to its GPU with CUDA_VISIBLE_DEVICES, or on the
CPU), each training its share of the runs in turn. `--executor slurm` submits one job array, one task per
run, at most `max_parallel` at a time. The `launch:` section of params.yaml holds the defaults; every
key has a flag. A job that is preempted or reaches its time limit is checkpointed by submitit and
requeued; the trainer's checkpoints (at epoch ends, at most once per `train.checkpoint_every_s`) make the
requeued run resume after its last checkpointed epoch (so does launching again after a crash or Ctrl-C).

When every job has ended, the launcher (on this machine, once) runs `dvc commit -f train@<run>` for the
runs that finished: DVC stores their outputs and records in dvc.lock the hashes `dvc repro` would have
recorded. A run that failed is listed with its log and left uncommitted. Logs: `<logs>/<run>.log` (the
training's output, every attempt appended) and `<logs>/submitit/` (job scripts, submitit's job logs).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from benchmark.cli import run_cli
from benchmark.config import ConfigError, LaunchSettings, launch_settings, load_params

SUBMITIT_FOLDER = "submitit"
PR_SET_PDEATHSIG = 1  # prctl option: the kernel sends a signal to the child when its parent dies


def stale_runs(names: list[str]) -> list[str]:
    """The runs whose train stage `dvc status` lists as changed (all of them if DVC cannot tell)."""
    result = subprocess.run(["dvc", "status", *[f"train@{name}" for name in names]], capture_output=True, text=True)
    if result.returncode != 0:
        return names
    return [name for name in names if f"train@{name}:" in result.stdout]


def _child_setup() -> None:
    """In the training process, before exec: leave SIGTERM/SIGUSR2 to submitit in the job process (SLURM signals
    every process of the job; the job process checkpoints, requeues and ends the training), and die with it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere the training may outlive a killed job
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class TrainRuns(submitit.helpers.Checkpointable):
    """One submitit job: train `runs` one after another with the train stage's command; returns what happened.

    Checkpointable: on preemption or time-out submitit pickles this object (with the runs it has finished)
    and requeues it; the run that was interrupted resumes from its last checkpoint."""

    runs: list[str]
    repo: str
    logs: str
    finished: dict[str, dict[str, Any]] | None = None

    def __call__(self) -> dict[str, dict[str, Any]]:
        self.finished = dict(self.finished or {})
        for run in self.runs:
            if run in self.finished:
                continue  # trained before this job was requeued
            log_path = Path(self.logs) / f"{run}.log"  # relative to the repository, as the user gave it
            (Path(self.repo) / log_path).parent.mkdir(parents=True, exist_ok=True)
            devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            where = f"{socket.gethostname()}, " + (f"GPU {devices}" if devices else "CPU")
            started = time.perf_counter()
            with (Path(self.repo) / log_path).open("a") as log:
                log.write(("\n" if log.tell() else "")  # an attempt killed mid-line leaves no newline
                          + f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} python -m benchmark train {run} on {where} "
                          f"(job {submitit.JobEnvironment().job_id}) ===\n")
                log.flush()
                code = subprocess.run([sys.executable, "-m", "benchmark", "train", run], cwd=self.repo, stdout=log,
                                      stderr=subprocess.STDOUT, preexec_fn=_child_setup).returncode
            self.finished[run] = {"exit": code, "seconds": round(time.perf_counter() - started, 1), "where": where,
                                  "log": str(log_path)}
        return self.finished


# -- executors ------------------------------------------------------------------------------------------------
def local_slots(runs: list[str], gpus: tuple[int, ...], per_gpu: int) -> list[tuple[int | None, list[str]]]:
    """(GPU or None for the CPU, its runs) for each of the len(gpus) x per_gpu processes; runs dealt in turn."""
    devices: list[int | None] = list(gpus) or [None]
    slots = [device for device in devices for _ in range(per_gpu)][:len(runs)]
    return [(device, runs[index::len(slots)]) for index, device in enumerate(slots)]


def local_jobs(runs: list[str], settings: LaunchSettings, repo: Path) -> list[submitit.Job]:
    """One submitit local process per slot, pinned to its GPU (CUDA_VISIBLE_DEVICES; empty for CPU slots)."""
    executor = submitit.LocalExecutor(folder=settings.logs / SUBMITIT_FOLDER, max_num_timeout=settings.max_requeues)
    jobs = []
    for device, slot_runs in local_slots(runs, settings.gpus, settings.per_gpu):
        executor.update_parameters(timeout_min=settings.local_time_limit_min,
                                   gpus_per_node=0 if device is None else 1,
                                   visible_gpus=() if device is None else (device,))
        jobs.append(executor.submit(TrainRuns(slot_runs, str(repo), str(settings.logs))))
    return jobs


def slurm_parameters(settings: LaunchSettings) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for the `launch.slurm` settings (one array task per run)."""
    slurm = settings.slurm
    parameters: dict[str, Any] = {
        "job_name": "benchmark-train", "time": slurm.time_limit_min, "cpus_per_task": slurm.cpus_per_job,
        "array_parallelism": slurm.max_parallel, "nodes": 1, "ntasks_per_node": 1,
    }
    optional = {"partition": slurm.partition, "account": slurm.account,
                "gpus_per_node": slurm.gpus_per_job or None,
                "mem": f"{slurm.mem_gb:g}GB" if slurm.mem_gb is not None else None,
                "setup": list(slurm.setup) or None, "additional_parameters": dict(slurm.extra_sbatch) or None}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    return parameters


def slurm_jobs(runs: list[str], settings: LaunchSettings, repo: Path) -> list[submitit.Job]:
    try:
        executor = submitit.SlurmExecutor(folder=settings.logs / SUBMITIT_FOLDER,
                                          max_num_timeout=settings.max_requeues)
    except RuntimeError as error:  # no srun on this machine
        raise LaunchError(f"--executor slurm: {error} Submit from a SLURM login node, or use --executor local.") \
            from error
    try:
        executor.update_parameters(**slurm_parameters(settings))
    except ValueError as error:
        raise LaunchError(f"launch.slurm: submitit rejected the parameters: {error}") from error
    with executor.batch():  # one job array
        jobs = [executor.submit(TrainRuns([run], str(repo), str(settings.logs))) for run in runs]
    return jobs


class LaunchError(RuntimeError):
    """The jobs could not be submitted (no SLURM here, sbatch refused them); one line for the user."""


# -- waiting for the jobs -------------------------------------------------------------------------------------
# JobState values of `scontrol show job` for a job that has not ended: its current attempt is queued or running
SLURM_ALIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING",
                                "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"})


def slurm_controller_state(job_id: str) -> str | None:
    """The job's state as slurmctld holds it now (None: the controller no longer knows the job, or no scontrol)."""
    try:
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    state = next((field.split("=", 1)[1] for field in shown.stdout.split() if field.startswith("JobState=")), None)
    return state if shown.returncode == 0 else None


def has_ended(job: submitit.Job, executor: str) -> bool:
    """Whether the job is over. On SLURM, submitit judges from the accounting (sacct, which slurmdbd fills
    asynchronously) and keeps a "finished" verdict for good; a job without a result is over only once the
    controller, which does the requeueing, no longer has it queued or running."""
    if not job.done():
        return False
    if executor != "slurm" or job.paths.result_pickle.exists():
        return True
    return slurm_controller_state(job.job_id) not in SLURM_ALIVE_STATES


def as_they_end(jobs: list[submitit.Job], executor: str, poll_seconds: float):
    """Yield each job once it has ended (see `has_ended`), in the order they end."""
    waiting = list(jobs)
    while waiting:
        ended = [job for job in waiting if has_ended(job, executor)]
        for job in ended:
            waiting.remove(job)
            yield job
        if waiting and not ended:
            time.sleep(poll_seconds)


def collect(jobs: list[submitit.Job], runs_of: dict[str, list[str]], settings: LaunchSettings) \
        -> dict[str, dict[str, Any]]:
    """Wait for every job (`runs_of`: job id -> its runs); each run's outcome: exit code (None: the job itself
    failed), where it ran, its log."""
    outcomes: dict[str, dict[str, Any]] = {}
    progress = tqdm(total=sum(len(runs) for runs in runs_of.values()), desc="runs finished", unit="run")
    for job in as_they_end(jobs, settings.executor, settings.poll_seconds):
        try:
            results = job.result()
        except Exception as error:  # the job died outside the training (cancelled, node failure, too many time-outs)
            if isinstance(error, submitit.core.utils.FailedJobError):  # the job's own Python code raised
                reason = "an error in the job process; its traceback is in the job log"
            else:  # killed, cancelled, out of memory, node failure, or timed out too often
                reason = (f"SLURM state {slurm_controller_state(job.job_id) or job.state}"
                          if settings.executor == "slurm" else "its process was killed")
            results = {run: {"exit": None, "error": reason, "job_log": str(job.paths.stderr),
                             "log": str(settings.logs / f"{run}.log")} for run in runs_of[job.job_id]}
        for run, outcome in results.items():
            outcomes[run] = {**outcome, "job": job.job_id}
            if outcome["exit"] == 0:
                progress.write(f"{run}: done on {outcome['where']} in {outcome['seconds']:.0f} s "
                               f"(job {job.job_id}, log {outcome['log']})")
            elif outcome["exit"] is None:
                progress.write(f"{run}: FAILED, job {job.job_id} ended without finishing it ({outcome['error']}); "
                               f"logs {outcome['log']} and {outcome['job_log']}")
            else:
                progress.write(f"{run}: FAILED (exit {outcome['exit']}) on {outcome['where']} "
                               f"(job {job.job_id}, log {outcome['log']})")
            progress.update(1)
    progress.close()
    return outcomes


# -- command line ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="", help="comma-separated run names (default: every configured run)")
    parser.add_argument("--all", action="store_true", help="also the runs DVC considers up to date")
    parser.add_argument("--params", default="params.yaml")
    flag = parser.add_argument_group("overrides of params.yaml `launch`")
    flag.add_argument("--executor", choices=("local", "slurm"), help="launch.executor")
    flag.add_argument("--logs", help="launch.logs")
    flag.add_argument("--max-requeues", type=int, help="launch.max_requeues")
    flag.add_argument("--poll-seconds", type=float, help="launch.poll_seconds")
    flag.add_argument("--gpus", help="launch.local.gpus, comma-separated CUDA device ids ('' = CPU processes)")
    flag.add_argument("--per-gpu", type=int, help="launch.local.per_gpu")
    flag.add_argument("--partition", help="launch.slurm.partition")
    flag.add_argument("--account", help="launch.slurm.account")
    flag.add_argument("--gpus-per-job", type=int, help="launch.slurm.gpus_per_job")
    flag.add_argument("--cpus-per-job", type=int, help="launch.slurm.cpus_per_job")
    flag.add_argument("--mem-gb", type=float, help="launch.slurm.mem_gb")
    flag.add_argument("--time-limit", type=int, help="launch.slurm.time_limit_min (minutes)")
    flag.add_argument("--max-parallel", type=int, help="launch.slurm.max_parallel")
    flag.add_argument("--sbatch", action="append", help="adds to launch.slurm.extra_sbatch, e.g. --sbatch=--qos=high")
    flag.add_argument("--setup", action="append", help="adds to launch.slurm.setup (a shell line)")
    return parser.parse_args(argv)


def merged_launch_section(params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """params.yaml `launch` with the flags given on the command line applied over it."""
    section = dict(params.get("launch") or {})
    local, slurm = dict(section.get("local") or {}), dict(section.get("slurm") or {})
    for key, value in (("executor", args.executor), ("logs", args.logs), ("max_requeues", args.max_requeues),
                       ("poll_seconds", args.poll_seconds)):
        if value is not None:
            section[key] = value
    if args.gpus is not None:
        try:
            local["gpus"] = [int(device) for device in args.gpus.split(",") if device.strip()]
        except ValueError:
            raise ConfigError(f"--gpus must be comma-separated CUDA device ids (e.g. 0,1), "
                              f"got {args.gpus!r}.") from None
    if args.per_gpu is not None:
        local["per_gpu"] = args.per_gpu
    for key, value in (("partition", args.partition), ("account", args.account),
                       ("gpus_per_job", args.gpus_per_job), ("cpus_per_job", args.cpus_per_job),
                       ("mem_gb", args.mem_gb), ("time_limit_min", args.time_limit),
                       ("max_parallel", args.max_parallel)):
        if value is not None:
            slurm[key] = value
    for key, extra in (("extra_sbatch", args.sbatch), ("setup", args.setup)):
        if extra:
            slurm[key] = list(slurm.get(key) or []) + extra
    return {**section, "local": local, "slurm": slurm}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        params = load_params(args.params)
        settings = launch_settings({"launch": merged_launch_section(params, args)}, args.params)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configured = list(params["runs"] or {})
    runs = [name.strip() for name in args.runs.split(",") if name.strip()] or configured
    unknown = sorted(set(runs) - set(configured))
    if unknown:
        print(f"error: --runs: not configured in {args.params}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not args.all:
        runs = stale_runs(runs)
    if not runs:
        print("every train stage is up to date; nothing to launch")
        return 0

    repo = Path.cwd()
    try:
        if settings.executor == "local":
            jobs = local_jobs(runs, settings, repo)
            print(f"training {len(runs)} run(s), {len(jobs)} at a time on this machine: {', '.join(runs)}")
        else:
            jobs = slurm_jobs(runs, settings, repo)
            array = jobs[0].job_id.split("_")[0]
            print(f"submitted SLURM job {'array ' if len(jobs) > 1 else ''}{array}: {len(runs)} run(s), at most "
                  f"{min(len(runs), settings.slurm.max_parallel)} at a time: {', '.join(runs)} "
                  f"(sbatch script: {settings.logs / SUBMITIT_FOLDER / array}_submission.sh)")
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except submitit.core.utils.FailedJobError as error:  # sbatch refused the submission
        print(f"error: sbatch refused the job array: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    runs_of = {job.job_id: job.submission().function.runs for job in jobs}

    try:
        outcomes = collect(jobs, runs_of, settings)
    except KeyboardInterrupt:
        for job in jobs:
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        print("interrupted: jobs cancelled, nothing committed; launch again to resume from the checkpoints",
              file=sys.stderr)
        return 130
    finished = [run for run in runs if outcomes.get(run, {}).get("exit") == 0]
    if finished:
        commit = subprocess.run(["dvc", "commit", "-f", *[f"train@{run}" for run in finished]])
        if commit.returncode != 0:
            print("dvc commit failed; the trained outputs are on disk, run it again by hand", file=sys.stderr)
            return 1
    failed = [run for run in runs if run not in finished]
    if failed:
        print(f"failed: {', '.join(failed)}; see their logs above (not committed"
              f"{'; the others are' if finished else ''}).", file=sys.stderr)
        return 1
    print(f"trained and committed {len(finished)} run(s); now `dvc repro` evaluates and reports")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
