"""Does channels_last (or torch.compile) speed the trainer's step on this CPU at 192 px? (issue 28 planning)

    python measurements/cpu_numerics_2026-12-06.py [--methods strong_only,ours] [--size 192] [--rounds 4] [--bf16]

Builds each method once per numerics setting (fp32; channels_last off/on; compile off/on where asked) with
`benchmark.tools.bench_performance.MethodBench` at 1 thread (what a seed gets with three seeds side by side on
2 cores), then times `loop_step` interleaved over rounds, order rotated; prints the median step time and the
per-round ratio to the plain fp32 setting of the same method. `--bf16` adds bf16 autocast with channels-last (what
`precision: auto` picks on a CPU with AVX512-BF16/AMX; emulated, and slow, on one without).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.config import load_params
from benchmark.tools.bench_performance import MethodBench, synthetic_arrays
from benchmark.training.runtime import configure_threads
from benchmark.training.train import Numerics
from methods import available_methods


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="strong_only,ours")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    configure_threads(args.threads)
    params = load_params("params.yaml")
    model_params = {**params["model"], "encoder_weights": None}
    settings = [("fp32", "fp32", False, False), ("fp32+channels_last", "fp32", True, False)]
    if args.compile:
        settings.append(("fp32+compile", "fp32", False, True))
    if args.bf16:
        settings.append(("bf16+channels_last", "bf16", True, False))
    arrays = synthetic_arrays(args.size, 32, 0)
    benches = {}
    for method in args.methods.split(","):
        for label, precision, channels_last, compile_ in settings:
            train = {**params["train"], "precision": precision, "channels_last": channels_last, "compile": compile_}
            numerics = Numerics(torch.device("cpu"), precision, channels_last)
            start = time.perf_counter()
            bench = MethodBench(method, available_methods()[method], model_params, train, arrays, 8, 10 ** 6,
                                numerics, 0)
            bench.loop_steps(2)
            print(f"built {method} {label} (+2 warm-up steps) in {time.perf_counter() - start:.1f} s", flush=True)
            benches[(method, label)] = bench
    times = {key: [] for key in benches}
    keys = list(benches)
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[key].append(benches[key].loop_steps(args.steps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\n{args.size} px, batch 8, {args.threads} thread(s), torch {torch.__version__}, {args.rounds} rounds x "
          f"{args.steps} steps\n\n| method | numerics | step s (median) | ratio to fp32, per round median (min-max) |")
    print("|---|---|---|---|")
    for method, label in keys:
        base = times[(method, "fp32")]
        ratios = [t / b for t, b in zip(times[(method, label)], base)]
        print(f"| {method} | {label} | {statistics.median(times[(method, label)]):.3f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")


if __name__ == "__main__":
    main()
