"""DVC stage `train@<run>`: train one configured run and save its final weights.

    python -m benchmark.train <run-name> [--params params.yaml] [--prepared data/prepared] [--out runs]

The trainer knows no method by name: it builds `methods/<method>.py` through the
registry, feeds it batches composed for the method's label kinds, and minimises the
sum of the loss terms it returns, with the protocol of params.yaml `train` (Adam, poly
decay per epoch, flips). Outputs in runs/<run>/: model.pt (state dict, final epoch —
the paper protocol has no validation split), train_log.csv (one row per epoch, a DVC
plot) and train_info.json (timing, device, label counts).
"""
from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from benchmark.artifacts import atomic_torch_save, atomic_write_csv, atomic_write_json
from benchmark.config import ConfigError, RunSpec, load_params, run_spec
from benchmark.data import PreparedData, load_prepared
from benchmark.runtime import configure_threads, hardware_description, pick_device, seed_everything
from benchmark.sampling import BatchSampler, TrainingSet
from methods import SegmentationMethod, TrainContext, get_method


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the run stops before anything is saved."""


def build_method(spec: RunSpec, model_params: dict[str, Any]) -> SegmentationMethod:
    method_cls = get_method(spec.method)
    try:
        return method_cls(model_params, spec.options)
    except ValueError as error:
        raise ConfigError(f"params.yaml: runs.{spec.name}: {error}") from error


def training_set_for(data: PreparedData, spec: RunSpec, train_params: dict[str, Any],
                     device: torch.device) -> TrainingSet:
    train_rows = data.rows("cbis", "train")
    strong, _ = data.strong_and_weak(spec.strong_fraction)
    index = train_rows["index"].to_numpy()
    arrays = data.arrays["cbis"]
    is_strong = pd.Series(index).isin(strong).to_numpy()
    return TrainingSet(arrays["images"][index], arrays["masks"][index], arrays["boxes"][index], is_strong, device,
                       hflip=bool(train_params["hflip"]), vflip=bool(train_params["vflip"]))


def poly_lr(base_lr: float, epoch: int, epochs: int, power: float) -> float:
    """The paper's schedule: lr = lr0 * (1 - epoch / nEpoch) ** power, set at the start of each epoch."""
    return base_lr * (1 - epoch / epochs) ** power


def steps_per_epoch(mode: str, n_train: int, n_used: int, batch_size: int) -> int:
    if mode == "all_train":
        return math.ceil(n_train / batch_size)
    if mode == "method":
        return math.ceil(n_used / batch_size)
    raise ConfigError(f"params.yaml: train.steps_per_epoch must be 'all_train' or 'method', got {mode!r}.")


def make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    if name != "adam":
        raise ConfigError(f"params.yaml: train.optimizer {name!r} is not supported (the paper uses 'adam').")
    return torch.optim.Adam(parameters, lr=lr)


def train_run(spec: RunSpec, params: dict[str, Any], prepared_dir: Path, out_dir: Path,
              show_progress: bool = True) -> dict[str, Any]:
    train_params, model_params = params["train"], params["model"]
    started = time.time()
    threads = configure_threads(int(train_params.get("num_threads", 0)))
    device = pick_device(train_params.get("device", "auto"))
    seed_everything(spec.seed)

    data = load_prepared(prepared_dir)
    method = build_method(spec, model_params).to(device)
    training_set = training_set_for(data, spec, train_params, device)
    batch_size = int(train_params["batch_size"])
    sampler = BatchSampler(training_set, batch_size, float(train_params["strong_share"]), method.uses_strong,
                           method.uses_weak, seed=spec.seed)
    epochs = int(train_params["epochs"])
    n_steps = steps_per_epoch(train_params["steps_per_epoch"], len(training_set), sampler.n_used, batch_size)

    method.on_train_start(TrainContext(
        training_set=training_set,
        make_sampler=lambda strong, weak, seed: BatchSampler(training_set, batch_size, float(train_params["strong_share"]),
                                                             strong, weak, seed),
        train_params=train_params, device=device, epochs=epochs, steps_per_epoch=n_steps, seed=spec.seed,
    ))
    # created after the hook, so parameters a method froze there are not optimised
    optimizer = make_optimizer(train_params["optimizer"], [p for p in method.parameters() if p.requires_grad],
                               float(train_params["lr"]))
    log_rows = []
    progress = tqdm(total=epochs * n_steps, desc=f"train {spec.name}", unit="step", disable=not show_progress)
    method.train()
    for epoch in range(epochs):
        lr = poly_lr(float(train_params["lr"]), epoch, epochs, float(train_params["poly_power"]))
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch_start, sums = time.perf_counter(), defaultdict(float)
        for step in range(n_steps):
            batch = training_set.batch(*sampler.next())
            terms = method.training_step(batch)
            total = sum(terms.values())
            for name, value in {**terms, "total": total}.items():
                if not torch.isfinite(value):
                    raise NonFiniteLossError(f"run {spec.name}: loss term '{name}' is {value.item()} at epoch "
                                             f"{epoch + 1}, step {step + 1}; nothing was saved.")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            method.after_optimizer_step(epoch * n_steps + step)
            for name, value in {**terms, "total": total}.items():
                sums[name] += float(value.detach())
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{float(total.detach()):.4f}")
        method.on_epoch_end(epoch, epochs)
        log_rows.append({"epoch": epoch + 1, "lr": lr, **{k: v / n_steps for k, v in sums.items()},
                         "seconds": round(time.perf_counter() - epoch_start, 3)})
    progress.close()

    run_dir = out_dir / spec.name
    n_strong = int(training_set.is_strong.sum())
    atomic_write_csv(run_dir / "train_log.csv", pd.DataFrame(log_rows))
    atomic_torch_save(run_dir / "model.pt", method.state_dict())
    info = {
        "run": spec.name, "method": spec.method, "row": spec.row, "strong_fraction": spec.strong_fraction,
        "seed": spec.seed, "options": method.options,
        "n_train": len(training_set), "n_strong": n_strong,
        "n_strong_used": n_strong if method.uses_strong else 0,
        "n_weak_used": len(training_set) - n_strong if method.uses_weak else 0,
        "uses_strong": method.uses_strong, "uses_weak": method.uses_weak,
        "epochs": epochs, "steps_per_epoch": n_steps, "batch_size": batch_size,
        "encoder": model_params["encoder"], "encoder_weights": model_params.get("encoder_weights"),
        "image_size": int(training_set.images.shape[-1]), "device": str(device), "threads": threads,
        "hardware": hardware_description(device), "torch": torch.__version__,
        "train_seconds": round(time.time() - started, 2),
    }
    atomic_write_json(run_dir / "train_info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a key of `runs` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    info = train_run(run_spec(params, args.run), params, Path(args.prepared), Path(args.out))
    print(f"{args.run}: trained {info['epochs']} epochs x {info['steps_per_epoch']} steps on {info['hardware']} "
          f"in {info['train_seconds']:.1f} s")


if __name__ == "__main__":
    main()
