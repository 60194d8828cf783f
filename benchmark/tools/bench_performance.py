"""Training speed of every registered method, and how much of it the training loop wastes.

    python -m benchmark performance [--size 96] [--batch 8] [--steps 12] [--rounds 4] [--warmup 3]
        [--methods strong_only,ours] [--device auto] [--n-train N] [--processes K] [--append FILE ...]
        [--out reports/performance.md]

For each method (every module of `methods/`, or `--methods`), in one process on one device,
with the numerics of params.yaml `train` (precision, channels_last, fused Adam):
- **ceiling**: the method's optimisation step on a batch that is already on the device
  (forward in the configured precision, its losses, backward, Adam, its per-step hook): the
  network work no loop can avoid;
- **loop**: `benchmark.training.train.loop_step`, exactly what the trainer runs per step: the batch drawn
  from the device-resident training set, flipped and normalised on the device, the same
  optimisation step and hook, the loss values logged (kept on the device) and the progress bar.
Efficiency = ceiling time / loop time. The methods run interleaved over `--rounds` rounds (their
order rotated each round) so a noisy shared machine slows all of them alike; each figure is the
median over rounds. Images/s = batch / step time. Ratio = the method's loop time over
Strong-Only's in the same round (median over rounds): what a run of the method costs.

The projection multiplies each configured run's steps (epochs x steps per epoch x seeds, from
params.yaml and the training-set size: `--n-train`, default the prepared data's) by its method's
loop step time; evaluation and data preparation are not included. Writes `--out` atomically.

`--processes K` runs K copies at once on the device (CPU threads split between them) and sums
their images/s: what K training runs sharing one GPU get (small batches leave a big GPU mostly
idle, so runs side by side add up). `--append` adds files verbatim, e.g. a GPU measurement
recorded with this script, to the CPU stage's report.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark.artifacts import atomic_write_text
from benchmark.cli import run_cli
from benchmark.config import all_runs, load_params
from benchmark.contract import TrainContext
from benchmark.training.runtime import configure_determinism, configure_threads, hardware_description, pick_device
from benchmark.training.sampling import BatchSampler, TrainingSet, batch_strong_share
from benchmark.training.train import (
    Numerics,
    compile_networks,
    loop_step,
    make_optimizer,
    optimisation_step,
    steps_per_epoch,
)
from methods import SegmentationMethod, available_methods

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


class MethodBench:
    """One method with its optimiser, its device-resident training set, sampler and a ready batch."""

    def __init__(self, name: str, cls: type[SegmentationMethod], model_params: dict[str, Any],
                 train_params: dict[str, Any], arrays: tuple[np.ndarray, ...], batch_size: int, total_steps: int,
                 numerics: Numerics, seed: int) -> None:
        self.name, self.display_name, self.numerics = name, cls.display_name, numerics
        self.ceiling: list[float] = []
        self.loop: list[float] = []
        self.error: str | None = None
        torch.manual_seed(seed)
        self.method = numerics.prepare(cls(model_params, {}))
        images, masks, boxes = arrays
        is_strong = np.arange(len(images)) < len(images) // 2
        self.training_set = TrainingSet(images, masks, boxes, is_strong, numerics.device,
                                        hflip=bool(train_params.get("hflip", True)),
                                        vflip=bool(train_params.get("vflip", True)))
        share = batch_strong_share(train_params.get("strong_share", 0.5), float(is_strong.mean()))
        make_sampler = lambda strong, weak, s: BatchSampler(self.training_set, batch_size, share, strong, weak, s)  # noqa: E731
        self.sampler = make_sampler(cls.uses_strong, cls.uses_weak, seed)
        self.method.on_train_start(TrainContext(
            training_set=self.training_set, make_sampler=make_sampler,
            train_params={**train_params, "batch_size": batch_size}, device=numerics.device, epochs=1,
            steps_per_epoch=total_steps, seed=seed))
        self.optimizer = make_optimizer(train_params.get("optimizer", "adam"),
                                        [p for p in self.method.parameters() if p.requires_grad],
                                        float(train_params.get("lr", 1e-3)))
        compile_networks(self.method, train_params)
        self.ready_batch = self.training_set.batch(*self.sampler.next())
        self.history: list[torch.Tensor] = []
        self.progress = tqdm(total=total_steps * 4, disable=True)
        self.method.train()
        self.global_step = 0

    def _sync(self) -> None:
        if self.numerics.device.type == "cuda":
            torch.cuda.synchronize(self.numerics.device)

    def ceiling_steps(self, n: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(n):
            optimisation_step(self.method, self.ready_batch, self.optimizer, self.numerics)
            self.method.after_optimizer_step(self.global_step)
            self.global_step += 1
        self._sync()
        return (time.perf_counter() - start) / n

    def loop_steps(self, n: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(n):
            loop_step(self.method, self.training_set, self.sampler, self.optimizer, self.numerics, self.global_step,
                      self.history, self.progress)
            self.global_step += 1
        torch.stack(self.history).cpu()  # the trainer's once-per-epoch read-back of the logged losses
        self.history.clear()
        self._sync()
        return (time.perf_counter() - start) / n

    def fail(self, error: BaseException) -> None:
        self.error = f"{type(error).__name__}: {error}".replace("|", "/").replace("\n", " ")[:200]
        traceback.print_exc(file=sys.stderr)


def measure(names: list[str], model_params: dict[str, Any], train_params: dict[str, Any], size: int,
            batch_size: int, steps: int, rounds: int, warmup: int, numerics: Numerics, seed: int = 0,
            log=print) -> list[MethodBench]:
    registry = available_methods()
    arrays = synthetic_arrays(size, max(4 * batch_size, 8), seed)
    benches: list[MethodBench] = []
    for name in names:
        try:
            bench = MethodBench(name, registry[name], model_params, train_params, arrays, batch_size,
                                2 * (warmup + steps), numerics, seed)
            bench.ceiling_steps(warmup), bench.loop_steps(warmup)
        except Exception as error:  # one broken method must not hide the others' numbers
            bench = MethodBench.__new__(MethodBench)
            bench.name, bench.display_name, bench.ceiling, bench.loop = name, registry[name].display_name, [], []
            bench.fail(error)
        benches.append(bench)
        log(f"{name}: built" + (f", FAILED ({bench.error})" if bench.error else f", {warmup} warm-up steps"))
    rounds = min(rounds, steps)
    for round_index in range(rounds):
        live = [b for b in benches if b.error is None]
        shift = round_index % max(len(live), 1)
        n = steps // rounds + (1 if round_index < steps % rounds else 0)
        for bench in live[shift:] + live[:shift]:
            try:  # alternate which of the two goes first, so neither always runs on a warmer cache
                if round_index % 2:
                    bench.loop.append(bench.loop_steps(n)), bench.ceiling.append(bench.ceiling_steps(n))
                else:
                    bench.ceiling.append(bench.ceiling_steps(n)), bench.loop.append(bench.loop_steps(n))
            except Exception as error:
                bench.fail(error)
        log(f"round {round_index + 1}/{rounds}: " + ", ".join(
            f"{b.name} {1000 * b.ceiling[-1]:.1f}/{1000 * b.loop[-1]:.1f} ms" for b in live if b.error is None))
    return benches


def summarise(benches: list[MethodBench], batch_size: int) -> pd.DataFrame:
    by_name = {b.name: b for b in benches if b.error is None}
    reference = by_name.get(REFERENCE)
    rows = []
    for bench in benches:
        if bench.error is not None:
            rows.append({"method": bench.name, "display_name": bench.display_name, "error": bench.error})
            continue
        ceiling, loop = statistics.median(bench.ceiling), statistics.median(bench.loop)
        rows.append({
            "method": bench.name, "display_name": bench.display_name,
            "ceiling_ms": 1000 * ceiling, "loop_ms": 1000 * loop,
            "ceiling_images_per_s": batch_size / ceiling, "loop_images_per_s": batch_size / loop,
            "efficiency": statistics.median(c / o for c, o in zip(bench.ceiling, bench.loop)),
            "ratio_to_reference": statistics.median(o / r for o, r in zip(bench.loop, reference.loop))
            if reference else math.nan,
            "loop_ms_min": 1000 * min(bench.loop), "loop_ms_max": 1000 * max(bench.loop), "error": "",
        })
    return pd.DataFrame(rows)


def projection(params: dict[str, Any], table: pd.DataFrame, n_train: int) -> tuple[float, list[str]]:
    """Training seconds of every configured run x seed at the measured loop step times."""
    train_params, registry = params["train"], available_methods()
    batch = int(train_params["batch_size"])
    loop_seconds = dict(zip(table["method"], table.get("loop_ms", pd.Series(dtype=float)) / 1000))
    total, missing = 0.0, []
    for spec in all_runs(params):
        if not math.isfinite(loop_seconds.get(spec.method, math.nan)):
            missing.append(spec.name)
            continue
        cls = registry[spec.method]
        n_strong = round(spec.strong_fraction * n_train)  # ~ the prepared strong subset
        n_used = (n_strong if cls.uses_strong else 0) + (n_train - n_strong if cls.uses_weak else 0)
        n_steps = steps_per_epoch(train_params["steps_per_epoch"], n_train, n_used, batch)
        total += len(spec.seeds) * int(train_params["epochs"]) * n_steps * loop_seconds[spec.method]
    return total, missing


def aggregate(tables: list[pd.DataFrame], batch_size: int) -> pd.DataFrame:
    """K processes measured at once on one device: images/s add up; the effective time of one step is
    batch / total images/s, the step time a run gets when K runs share the device."""
    frame = pd.concat(tables)
    failed = frame[frame["error"].astype(bool)].drop_duplicates("method")
    live = frame[~frame["method"].isin(failed["method"])]
    rows = live.groupby("method", sort=False).agg(
        display_name=("display_name", "first"), ceiling_images_per_s=("ceiling_images_per_s", "sum"),
        loop_images_per_s=("loop_images_per_s", "sum"), efficiency=("efficiency", "median"),
        ratio_to_reference=("ratio_to_reference", "median"), loop_ms_min=("loop_ms", "min"),
        loop_ms_max=("loop_ms", "max"), processes=("loop_ms", "size")).reset_index()
    rows["loop_ms"] = 1000 * batch_size / rows["loop_images_per_s"]  # effective, with K runs at a time
    rows["ceiling_ms"] = 1000 * batch_size / rows["ceiling_images_per_s"]
    rows["error"] = ""
    return pd.concat([rows, failed], ignore_index=True)


def render(table: pd.DataFrame, settings: dict[str, Any], projected: tuple[float, list[str]] | None,
           processes: int = 1) -> str:
    concurrent = processes > 1
    lines = [
        "# Training speed and loop efficiency per method", "",
        "Written by `python -m benchmark performance` (one process, one device, methods interleaved over "
        "rounds, medians over rounds). **Ceiling**: the method's optimisation step (forward in the configured "
        "precision, its losses, backward, Adam, its per-step hook) on a batch already on the device. **Loop**: "
        "the trainer's own per-step code (`benchmark.training.train.loop_step`: batch drawn, flipped and normalised "
        "on the device, the same step, losses logged on the device, progress bar). "
        "Efficiency = ceiling time / loop time. "
        "Ratio = loop time relative to Strong-Only, measured in the same rounds.", "",
        *(f"- {key}: {value}" for key, value in settings.items()), "",
        *([f"**{processes} processes measured at once on the one device** (as {processes} training runs sharing it "
           "would be): img/s are the sums over the processes; loop ms/step is the effective time per step "
           "(batch / summed img/s), with the range of the processes' own step times; efficiency and cost are "
           "medians over the processes.", ""] if concurrent else []),
        "| method | row name | ceiling img/s | loop img/s | efficiency | loop ms/step (min-max) "
        "| cost vs Strong-Only |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        if row.error:
            lines.append(f"| {row.method} | {row.display_name} | failed | | | {row.error} | |")
            continue
        lines.append(f"| {row.method} | {row.display_name} | {row.ceiling_images_per_s:.1f} | "
                     f"{row.loop_images_per_s:.1f} | {100 * row.efficiency:.1f}% | {row.loop_ms:.1f} "
                     f"({row.loop_ms_min:.1f}-{row.loop_ms_max:.1f}) | {row.ratio_to_reference:.2f}x |")
    if projected is not None:
        seconds, missing = projected
        lines += ["", f"**Projected training time of every configured run x seed at these step times"
                      f"{f', {processes} runs at a time' if concurrent else ''}: "
                      f"{seconds / 3600:.2f} h ({seconds / 60:.1f} min)**"
                  + (f" (not included, method not measured: {', '.join(missing)})" if missing else "")
                  + "; evaluation and data preparation not included."]
    return "\n".join(lines) + "\n"


def run_workers(argv: list[str], processes: int, batch_size: int) -> pd.DataFrame:
    """Start `processes` copies of this benchmark at once (CPU threads split between them), sum their results."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    base = [arg for index, arg in enumerate(argv)  # the same arguments without --processes and its value
            if arg != "--processes" and not arg.startswith("--processes=")
            and not (index > 0 and argv[index - 1] == "--processes")]
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / f"worker_{i}.json" for i in range(processes)]
        workers = [subprocess.Popen([sys.executable, "-m", "benchmark", "performance", *base, "--processes", "1",
                                     "--threads", str(threads), "--table-json", str(out),
                                     "--out", str(Path(folder) / f"worker_{i}.md")])
                   for i, out in enumerate(outputs)]
        codes = [worker.wait() for worker in workers]
        if any(codes) or not all(out.is_file() for out in outputs):
            raise SystemExit(f"bench_performance: a worker failed (exit codes {codes})")
        tables = [pd.read_json(out, orient="records") for out in outputs]
    for table in tables:
        table["error"] = table["error"].fillna("")
    return aggregate(tables, batch_size)


def prepared_train_count(prepared: Path) -> int | None:
    manifest = prepared / "manifest.csv"
    if not manifest.is_file():
        return None
    frame = pd.read_csv(manifest, usecols=["domain", "split"])
    return int(((frame["domain"] == "cbis") & (frame["split"] == "train")).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="image side, px (default: params data.image_size)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: params train.batch_size)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method and kind, over the rounds")
    parser.add_argument("--rounds", type=int, default=4, help="interleaving rounds (at most --steps)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method before the rounds")
    parser.add_argument("--methods", default="", help="comma-separated registry names (default: every method)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared", help="for the training-set size of the projection")
    parser.add_argument("--n-train", type=int, default=None, help="training images for the projection")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: params train.device)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1,
                        help="measure in K processes at once on the device and sum their throughput")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: params)")
    parser.add_argument("--append", nargs="*", default=[], help="files appended verbatim (e.g. GPU measurements)")
    parser.add_argument("--table-json", default=None, help=argparse.SUPPRESS)  # a worker's result (--processes)
    parser.add_argument("--out", default="reports/performance.md")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    train_params = dict(params["train"])
    size = args.size or int(params["data"]["image_size"])
    batch = args.batch or int(train_params["batch_size"])
    if min(size, batch, args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--size, --batch, --steps and --rounds must be >= 1, --warmup >= 0")
    registry = available_methods()
    names = [n.strip() for n in args.methods.split(",") if n.strip()] or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; registered: {', '.join(registry)}")
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    threads = configure_threads(args.threads if args.threads is not None else int(train_params.get("num_threads", 0)))
    device = pick_device(args.device or train_params.get("device", "auto"))
    configure_determinism(train_params.get("deterministic", "auto"), device)
    numerics = Numerics.from_params(train_params, device)
    model_params = {**params["model"], "encoder_weights": None}  # weights do not change the cost
    if args.processes > 1:
        table = run_workers(argv if argv is not None else sys.argv[1:], args.processes, batch)
    else:
        benches = measure(names, model_params, train_params, size, batch, args.steps, args.rounds, args.warmup,
                          numerics, seed=args.seed, log=lambda line: print(line, file=sys.stderr))
        table = summarise(benches, batch)
    if args.table_json:  # a worker of --processes: its table only
        table.to_json(args.table_json, orient="records")
        return 0
    n_train = args.n_train or prepared_train_count(Path(args.prepared))
    settings = {
        "batch": f"{batch} x 1 x {size} x {size}, half strong (mask) and half weak (box) images",
        "model": f"{model_params['encoder']} U-Net (random init), decoder channels "
                 f"{list(model_params['decoder_channels'])}",
        "numerics": f"{numerics.precision}, channels_last {numerics.channels_last}, fused Adam",
        "timing": f"{args.warmup} warm-up + {args.steps} timed steps per method and kind over "
                  f"{min(args.rounds, args.steps)} rounds",
        "hardware": f"{hardware_description(device)}, torch {torch.__version__}, "
                    + (f"{args.processes} processes" if args.processes > 1 else f"{threads} threads"),
    }
    if n_train:
        settings["projection"] = (f"{len(all_runs(params))} configured runs, {n_train} training images, "
                                  f"{train_params['epochs']} epochs")
    text = render(table, settings, projection(params, table, n_train) if n_train else None, args.processes)
    for path in args.append:
        if not Path(path).is_file():
            parser.error(f"--append {path}: no such file")
        text += (f"\n---\n\n*Appended from `{path}` (a measurement recorded by this script elsewhere, e.g. on a GPU; "
                 "not re-measured by this run):*\n\n" + Path(path).read_text().replace("\n# ", "\n## "))
    atomic_write_text(Path(args.out), text)
    print(text)
    return 1 if table["error"].astype(bool).any() else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
