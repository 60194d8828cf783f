"""Should a run's seeds train one after another on every core, or side by side, one worker per seed?

    python -m benchmark bench-threads [--method ours] [--seeds 3] [--steps 8] [--rounds 8] [--warmup 3]
        [--params params.yaml] [--out FILE]

Measures, on this machine, with the numerics of params.yaml `train` and the default network at
`data.image_size`, the trainer's own per-step code (`benchmark.tools.bench_performance.MethodBench.loop_steps`,
i.e. `benchmark.training.train.loop_step`) in persistent worker processes that idle between measurements:

- **alone at T threads** and **alone at 1 thread** (T = all cores): one training step time each, and
  their ratio (how much the second..T-th thread speed a step up);
- for a run of `--seeds` seeds, the wall time of `--steps` steps of every seed under each schedule
  `train.seed_workers` can give it: **serial** (one seed after another at T threads), and **K workers**
  for K = 2 .. min(seeds, cores + 1) (K seeds at once at T // K threads each, the rest in further waves),
  oversubscribed when K exceeds the cores.

The configurations run interleaved over `--rounds` rounds, their order rotated every round, so a
shared, noisy machine slows all of them alike; every ratio is taken within a round and summarised as
the median with its range over rounds (the spread says how noisy the machine was). The load average
before and after is printed too. Nothing is written unless `--out` is given.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.artifacts import atomic_write_text
from benchmark.config import load_params
from benchmark.training.runtime import resolve_precision


def _worker(conn: Connection, method: str, params: dict[str, Any], size: int, batch: int, threads: int,
            warmup: int, seed: int) -> None:
    """One persistent benchmark process: build the method once, then run `n` loop steps per request."""
    from benchmark.tools.bench_performance import MethodBench, synthetic_arrays
    from benchmark.training.runtime import configure_determinism, configure_threads
    from benchmark.training.train import Numerics
    from methods import available_methods

    configure_threads(threads)
    device = torch.device("cpu")
    configure_determinism(params["train"].get("deterministic", "auto"), device)
    numerics = Numerics.from_params(params["train"], device)
    model_params = {**params["model"], "encoder_weights": None}
    bench = MethodBench(method, available_methods()[method], model_params, dict(params["train"]),
                        synthetic_arrays(size, max(4 * batch, 8), seed), batch, 10 ** 6, numerics, seed)
    bench.loop_steps(warmup)
    conn.send("ready")
    while (n := conn.recv()) is not None:
        conn.send(bench.loop_steps(n))


class Pool:
    """Persistent workers keyed by name; `run` starts the named ones at once and returns the wall time."""

    def __init__(self, specs: dict[str, int], **worker_args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: dict[str, Connection] = {}
        self.processes = []
        for name, threads in specs.items():
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child,), kwargs={**worker_args, "threads": threads},
                                      daemon=True)
            process.start()
            self.conns[name], self.processes = parent, self.processes + [process]
        for name, conn in self.conns.items():
            if conn.recv() != "ready":
                raise RuntimeError(f"worker {name} failed to start")

    def run(self, names: list[str], steps: int) -> float:
        start = time.perf_counter()
        for name in names:
            self.conns[name].send(steps)
        for name in names:
            self.conns[name].recv()
        return time.perf_counter() - start

    def close(self) -> None:
        for conn in self.conns.values():
            conn.send(None)
        for process in self.processes:
            process.join(timeout=30)


def schedules(seeds: int, cores: int) -> dict[str, list[int]]:
    """Schedule name -> the waves of concurrent seeds (wave sizes) that train a run's `seeds` seeds."""
    plans = {"serial": [1] * seeds}
    for workers in range(2, min(seeds, cores + 1) + 1):
        plans[f"{workers} workers"] = [workers] * (seeds // workers) + ([seeds % workers] if seeds % workers else [])
    return plans


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    np.seterr(all="ignore")  # numpy floating-point warnings off for the whole benchmark, as before the move
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ours", help="registry name (default: ours, most configured runs)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the run whose schedules are compared")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per seed and configuration and round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default=None, help="fp32 | bf16 (default: params train.precision)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    if min(args.seeds, args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--seeds, --steps and --rounds must be >= 1, --warmup >= 0")
    params = load_params(args.params)
    if args.precision:
        params["train"]["precision"] = args.precision
    size, batch = int(params["data"]["image_size"]), int(params["train"]["batch_size"])
    cores = os.cpu_count() or 1
    plans = schedules(args.seeds, cores)
    # plan "K workers": K processes at cores // K threads each (every seed of a run at the same threads, so
    # each is bit-identical to its serial run at that thread count); a last, smaller wave uses the first few.
    # Workers are keyed by thread count and shared between plans: t<threads>_<i>
    needed = {"all": cores}
    for name in plans:
        if name != "serial":
            workers = int(name.split()[0])
            needed.update({f"t{max(1, cores // workers)}_{i}": max(1, cores // workers) for i in range(workers)})
    needed.setdefault("t1_0", 1)
    load_before = os.getloadavg()
    print(f"starting {len(needed)} workers ({args.method}, {batch} x {size} px, {cores} cores) ...", file=sys.stderr)
    pool = Pool(needed, method=args.method, params=params, size=size, batch=batch, warmup=args.warmup, seed=0)
    configurations = ["alone, all threads", "alone, 1 thread", *[name for name in plans if name != "serial"]]
    times: dict[str, list[float]] = {name: [] for name in configurations}
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(configurations)
            for name in configurations[shift:] + configurations[:shift]:
                if name == "alone, all threads":
                    seconds = pool.run(["all"], args.steps)
                elif name == "alone, 1 thread":
                    seconds = pool.run(["t1_0"], args.steps)
                else:
                    workers = int(name.split()[0])
                    threads = max(1, cores // workers)
                    seconds = sum(pool.run([f"t{threads}_{i}" for i in range(wave)], args.steps)
                                  for wave in plans[name])
                times[name].append(seconds)
            print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
                f"{name} {times[name][-1]:.2f} s" for name in configurations), file=sys.stderr)
    finally:
        pool.close()
    load_after = os.getloadavg()
    precision = resolve_precision(str(params["train"].get("precision", "auto")), torch.device("cpu"))

    step_all = [t / args.steps for t in times["alone, all threads"]]
    step_one = [t / args.steps for t in times["alone, 1 thread"]]
    serial = [args.seeds * t for t in times["alone, all threads"]]  # one seed after another at all threads
    lines = [
        f"# Seeds side by side or one after another ({args.method}, {cores}-core CPU)", "",
        f"`python -m benchmark bench-threads --method {args.method} --seeds {args.seeds} --steps {args.steps} "
        f"--rounds {args.rounds}" + (f" --precision {args.precision}" if args.precision else "")
        + f"`: {batch} x 1 x {size} x {size} batches, {precision} numerics, torch {torch.__version__}; "
        f"{args.rounds} interleaved rounds, median (min-max) over rounds. "
        f"Load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (a shared machine: other work "
        "was running). Serial = the all-threads step time x seeds (one seed after another).", "",
        f"- step time alone at {cores} threads: {spread([1000 * t for t in step_all], 0)} ms; at 1 thread: "
        f"{spread([1000 * t for t in step_one], 0)} ms; ratio 1-thread / {cores}-thread, per round: "
        f"{spread([a / b for a, b in zip(step_one, step_all)])}",
        "", f"| schedule of a {args.seeds}-seed run | waves | wall time / serial, per round |", "|---|---|---|",
        f"| serial ({cores} threads per seed) | {' + '.join('1' for _ in range(args.seeds))} | 1.00 |",
    ]
    best, best_ratio = "serial", 1.0
    for name, waves in plans.items():
        if name == "serial":
            continue
        ratios = [t / s for t, s in zip(times[name], serial)]
        threads = max(1, cores // waves[0])
        lines.append(f"| {name} ({threads} thread{'s' if threads > 1 else ''} per seed) | "
                     f"{' + '.join(map(str, waves))} | {spread(ratios)} |")
        if statistics.median(ratios) < best_ratio:
            best, best_ratio = name, statistics.median(ratios)
    lines += ["", f"Fastest by the median: **{best}** ({best_ratio:.2f} of the serial wall time)."]
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
