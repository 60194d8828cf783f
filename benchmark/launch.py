"""Train many configured runs at once: several per GPU, on several GPUs; then let DVC record them.

    dvc repro prepare
    python -m benchmark.launch --gpus 0,1,2,3 --per-gpu 4      # every stale run, 16 at a time; dvc commit
    dvc repro                                                  # evaluate and report

`dvc repro` runs one stage at a time. This launcher runs the same stage command
(`python -m benchmark.train <run>`) for every configured run (or `--runs a,b`) that DVC does not
already consider up to date, `--per-gpu` processes per GPU, each process pinned to its GPU
with CUDA_VISIBLE_DEVICES. Small-batch training leaves a large GPU mostly idle, so runs side by
side add up (measured on one H100 at 352 px: 4 runs at a time gave 2.2-3x one run's throughput;
see measurements/). It then runs `dvc commit -f train@<run>` for the runs that finished, which
stores their outputs and records in dvc.lock the hashes `dvc repro` would have recorded (the
dependencies are the same files), so the final `dvc repro` only evaluates and reports. A run that fails is listed with its log; an interrupted one resumes
from its checkpoint the next time, as under `dvc repro`. Logs: `--logs` (default logs/launch/).
"""
from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmark.cli import run_cli
from benchmark.config import load_params


def stale_runs(names: list[str]) -> list[str]:
    """The runs whose train stage `dvc status` lists as changed (all of them if DVC cannot tell)."""
    result = subprocess.run(["dvc", "status", *[f"train@{name}" for name in names]], capture_output=True, text=True)
    if result.returncode != 0:
        return names
    return [name for name in names if f"train@{name}:" in result.stdout]


def launch(runs: list[str], slots: list[str | None], logs: Path, say=print) -> dict[str, int]:
    """Run `python -m benchmark.train <run>` for every run, one per slot at a time; slot = a CUDA device or None."""
    logs.mkdir(parents=True, exist_ok=True)
    todo: queue.Queue[str] = queue.Queue()
    for run in runs:
        todo.put(run)
    codes: dict[str, int] = {}

    def worker(device: str | None) -> None:
        while True:
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            env = dict(os.environ)
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
            started = time.perf_counter()
            with (logs / f"{run}.log").open("w") as log:
                code = subprocess.run([sys.executable, "-m", "benchmark.train", run], env=env, stdout=log,
                                      stderr=subprocess.STDOUT).returncode
            codes[run] = code
            where = f"GPU {device}" if device is not None else "CPU"
            say(f"{run}: {'done' if code == 0 else f'FAILED (exit {code})'} on {where} in "
                f"{time.perf_counter() - started:.0f} s (log {logs / f'{run}.log'})")

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="", help="comma-separated CUDA device ids; empty: no GPU (CPU processes)")
    parser.add_argument("--per-gpu", type=int, default=1, help="training processes at a time per GPU (or on the CPU)")
    parser.add_argument("--runs", default="", help="comma-separated run names (default: every configured run)")
    parser.add_argument("--all", action="store_true", help="also the runs DVC considers up to date")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--logs", default="logs/launch")
    args = parser.parse_args(argv)
    if args.per_gpu < 1:
        parser.error("--per-gpu must be >= 1")
    configured = list(load_params(args.params)["runs"] or {})
    runs = [name.strip() for name in args.runs.split(",") if name.strip()] or configured
    unknown = sorted(set(runs) - set(configured))
    if unknown:
        parser.error(f"not configured in {args.params}: {', '.join(unknown)}")
    if not args.all:
        runs = stale_runs(runs)
    if not runs:
        print("every train stage is up to date; nothing to launch")
        return 0
    devices = [device.strip() for device in args.gpus.split(",") if device.strip()] or [None]
    slots = [device for device in devices for _ in range(args.per_gpu)]
    print(f"training {len(runs)} run(s), {len(slots)} at a time: {', '.join(runs)}")
    codes = launch(runs, slots, Path(args.logs))
    finished = [run for run in runs if codes.get(run) == 0]
    if finished:
        commit = subprocess.run(["dvc", "commit", "-f", *[f"train@{run}" for run in finished]])
        if commit.returncode != 0:
            print("dvc commit failed; the trained outputs are on disk, run it again by hand", file=sys.stderr)
            return 1
    failed = sorted(set(runs) - set(finished))
    if failed:
        print(f"failed: {', '.join(failed)}; see their logs (the others are committed).", file=sys.stderr)
        return 1
    print(f"trained and committed {len(finished)} run(s); now `dvc repro` evaluates and reports")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
