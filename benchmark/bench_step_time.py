"""Training cost of every registered method: mean time of one optimiser step, in one process.

    python -m benchmark.bench_step_time [--size 96] [--batch 8] [--steps 10] [--rounds 5] [--warmup 2]
                                        [--methods strong_only,ours] [--out reports/method_cost.md]

Every method in `methods.available_methods()` (so a new methods/<name>.py is included without
editing this file; `--methods` restricts the list) is built from params.yaml `model` (the encoder
always from random weights: weights do not change the cost) and gets its own Adam optimiser (lr from
params.yaml `train`). One step is what the trainer does: `training_step` on the batch, the sum of
the terms, backward, Adam step, `after_optimizer_step`. Every method sees the same synthetic mixed
batch: `--batch` images of `--size` px, the share params.yaml `train.strong_share` of them strong
(mask), the rest weak (box only).

Timing: `on_train_start` runs once before anything is timed (a method's one-off stages, e.g. an
ancillary model, are not in the step time; the context claims epochs=1 and as many steps per epoch as
will be run); each method then runs `--warmup` untimed steps. The `--steps` timed steps of a method are
spread over `--rounds` rounds; in each round every method runs its share of steps back to back, the
methods in an order rotated by one every round, so slow phases of a shared machine fall on all methods
alike. A method's ms/step is the median over rounds of its per-round mean; its ratio to Strong-Only is
the median over rounds of the paired per-round ratio (both measured in the same round, which cancels
slow phases better than a ratio of medians); the table also gives the range of the round means. The
file is written to `<out>.tmp` and renamed, so a killed run leaves no complete-looking table. A method
that fails is listed as failed (exit status 1), the others still run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.artifacts import atomic_write_text
from benchmark.config import load_params
from benchmark.runtime import configure_threads, hardware_description, pick_device
from benchmark.sampling import BatchSampler, TrainingSet
from methods import SegmentationMethod, TrainContext, available_methods
from methods.base import Batch

REFERENCE = "strong_only"


def synthetic_arrays(size: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images, one elliptical mass mask per image and its filled tight box, (n, size, size) each."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    boxes = np.zeros_like(masks)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        ry, rx = rng.uniform(0.05, 0.15, size=2) * size + 1
        cy, cx = rng.uniform(0.25, 0.75, size=2) * size
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        rows, cols = np.flatnonzero(masks[i].any(1)), np.flatnonzero(masks[i].any(0))
        boxes[i, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
    return images, masks, boxes


class _Bench:
    """One method with its optimiser, training set (its own, for the layers it registers) and batch."""

    def __init__(self, name: str, cls: type[SegmentationMethod], model_params: dict[str, Any],
                 train_params: dict[str, Any], arrays: tuple[np.ndarray, ...], n_strong: int, batch_size: int,
                 total_steps: int, device: torch.device, seed: int) -> None:
        self.name, self.display_name, self.device = name, cls.display_name, device
        self.round_means: list[float] = []
        self.error: str | None = None
        torch.manual_seed(seed)
        self.method = cls(model_params, {}).to(device)
        images, masks, boxes = arrays
        is_strong = np.arange(len(images)) < n_strong
        training_set = TrainingSet(images, masks, boxes, is_strong, device,
                                   hflip=bool(train_params.get("hflip", True)),
                                   vflip=bool(train_params.get("vflip", True)))
        strong_share = float(train_params.get("strong_share", 0.5))
        self.method.on_train_start(TrainContext(
            training_set=training_set,
            make_sampler=lambda strong, weak, s: BatchSampler(training_set, batch_size, strong_share, strong, weak, s),
            train_params={**train_params, "batch_size": batch_size}, device=device, epochs=1,
            steps_per_epoch=total_steps, seed=seed))
        self.optimizer = torch.optim.Adam([p for p in self.method.parameters() if p.requires_grad],
                                          lr=float(train_params.get("lr", 1e-3)))
        # the same images for every method: positions 0..n_strong-1 strong, the rest weak; no flips
        self.batch: Batch = training_set.batch(torch.arange(batch_size), torch.zeros(batch_size, 2, dtype=torch.bool))
        self.method.train()
        self.step_index = 0

    def step(self) -> float:
        start = time.perf_counter()
        terms = self.method.training_step(self.batch)
        total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.method.after_optimizer_step(self.step_index)
        float(total.detach())  # the trainer reads every loss back each step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.step_index += 1
        return time.perf_counter() - start

    def fail(self, error: BaseException) -> None:
        self.error = f"{type(error).__name__}: {error}".replace("|", "/").replace("\n", " ")[:200]
        traceback.print_exc(file=sys.stderr)


def measure(names: list[str], model_params: dict[str, Any], train_params: dict[str, Any], size: int,
            batch_size: int, steps: int, rounds: int, warmup: int, device: torch.device,
            seed: int = 0, log=print) -> list[_Bench]:
    registry = available_methods()
    n_strong = int(round(float(train_params.get("strong_share", 0.5)) * batch_size))
    arrays = synthetic_arrays(size, max(2 * batch_size, 2), seed)
    total_steps = warmup + steps
    benches: list[_Bench] = []
    for name in names:
        try:
            bench = _Bench(name, registry[name], model_params, train_params, arrays, n_strong, batch_size,
                           total_steps, device, seed)
            for _ in range(warmup):
                bench.step()
        except Exception as error:  # one broken method must not hide the others' numbers
            bench = _Bench.__new__(_Bench)
            bench.name, bench.display_name, bench.round_means = name, registry[name].display_name, []
            bench.fail(error)
        benches.append(bench)
        log(f"{name}: built" + (f", FAILED ({bench.error})" if bench.error else f", {warmup} warm-up steps"))
    rounds = min(rounds, steps)
    for round_index in range(rounds):
        live = [b for b in benches if b.error is None]
        shift = round_index % max(len(live), 1)
        n_steps = steps // rounds + (1 if round_index < steps % rounds else 0)
        for bench in live[shift:] + live[:shift]:
            try:
                bench.round_means.append(sum(bench.step() for _ in range(n_steps)) / n_steps)
            except Exception as error:
                bench.fail(error)
        log(f"round {round_index + 1}/{rounds}: " + ", ".join(
            f"{b.name} {1000 * b.round_means[-1]:.1f} ms" for b in live if b.error is None))
    return benches


def render(benches: list[_Bench], settings: dict[str, Any]) -> str:
    medians = {b.name: statistics.median(b.round_means) for b in benches if b.error is None and b.round_means}
    by_name = {b.name: b for b in benches}
    reference = by_name[REFERENCE].round_means if REFERENCE in medians else None
    lines = [
        "# Training step time per method",
        "",
        "Mean time of one training step (method.training_step + backward + Adam step + after_optimizer_step) "
        "on the same synthetic mixed batch; warm-up steps excluded; methods interleaved over rounds; "
        "ms/step = median over rounds of the per-round mean; ratio = median over rounds of the per-round ratio "
        f"to {REFERENCE}. Written by `python -m benchmark.bench_step_time`.",
        "",
        *(f"- {key}: {value}" for key, value in settings.items()),
        "",
        f"| method | display name | ms/step | ratio to {REFERENCE} | round means, ms (min-max) |",
        "|---|---|---|---|---|",
    ]
    for bench in benches:
        if bench.name not in medians:
            lines.append(f"| {bench.name} | {bench.display_name} | failed | n/a | {bench.error} |")
            continue
        ms = 1000 * medians[bench.name]
        paired = [mine / ref for mine, ref in zip(bench.round_means, reference)] if reference else []
        ratio = f"{statistics.median(paired):.2f}x" if paired else "n/a"
        spread = f"{1000 * min(bench.round_means):.1f}-{1000 * max(bench.round_means):.1f}"
        lines.append(f"| {bench.name} | {bench.display_name} | {ms:.1f} | {ratio} | {spread} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="image side, px")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (spread over the rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaving rounds (at most --steps)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method before the rounds")
    parser.add_argument("--methods", default="", help="comma-separated registry names (default: every method)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/method_cost.md")
    args = parser.parse_args(argv)
    if min(args.size, args.batch, args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--size, --batch, --steps and --rounds must be >= 1, --warmup >= 0")

    params = load_params(args.params)
    registry = available_methods()
    names = [n.strip() for n in args.methods.split(",") if n.strip()] or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; registered: {', '.join(registry)}")
    threads = configure_threads(args.threads)
    device = pick_device(args.device)
    model_params = {**params["model"], "encoder_weights": None}
    train_params = dict(params["train"])
    benches = measure(names, model_params, train_params, args.size, args.batch, args.steps, args.rounds,
                      args.warmup, device, seed=args.seed)
    n_strong = int(round(float(train_params.get("strong_share", 0.5)) * args.batch))
    settings = {
        "images": f"{args.batch} x 1 x {args.size} x {args.size} ({n_strong} strong, {args.batch - n_strong} weak)",
        "model": f"{model_params['encoder']} (random init), decoder channels {list(model_params['decoder_channels'])}",
        "optimiser": f"Adam, lr {train_params.get('lr')}",
        "timing": f"{args.warmup} warm-up + {args.steps} timed steps per method over {min(args.rounds, args.steps)} "
                  "rounds",
        "hardware": f"{hardware_description(device)}, torch {torch.__version__}, {threads} threads",
    }
    table = render(benches, settings)
    atomic_write_text(Path(args.out), table)
    print(table)
    return 1 if any(b.error for b in benches) else 0


if __name__ == "__main__":
    sys.exit(main())
