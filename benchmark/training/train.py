"""DVC stage `train@<run>`: train one configured run, once per seed, and save the final weights.

    python -m benchmark train <run-name> [--params params.yaml] [--prepared data/prepared] [--out runs]

The trainer knows no method by name: it builds `methods/<method>.py` through the
registry, feeds it batches composed for the method's label kinds, and minimises the
sum of the loss terms it returns, with the protocol of params.yaml `train` (Adam, poly
decay per epoch, flips), in the configured precision and memory format.

Before anything is written the stage checks params.yaml (benchmark.config), takes the run's lock
(`<checkpoint_dir>/<run>.lock`: a second trainer of the same run stops at once), resolves the device
and precision, builds the method once (its options and encoder weights) and checks the label budget
(a method that trains on masks gets at least one strong image, one on boxes only at least one weak
image). Only then are the run's previous outputs removed, evaluation outputs included, so a failed
or killed training leaves nothing under runs/<run>/ that looks like a result.

Divergence: a run stops, naming run, seed, epoch and loss term, when a loss term is NaN or
infinite, or when an epoch's mean total loss exceeds `train.divergence_factor` times the total loss
of the run's first step (the untrained network's); checked once per epoch.

Seeds side by side: `train.seed_workers` (`auto` or a number) trains a run's seeds in that many
worker processes at once (spawned, one fresh process per seed), the CPU threads (`train.num_threads`,
0 = every core) split evenly between them; `auto` is one worker per seed on a CPU with at least two
cores (on a GPU, one). A seed's result does not depend on the workers: each is bit-identical on CPU
to a serial run (`seed_workers: 1`) at the same threads per seed. The thread count itself is part of
the numerics (oneDNN splits its reductions by thread), so train_info.json records it.

Interruptions: an epoch's end writes a checkpoint (weights, optimizer, RNG and sampler
states, the method's own training state, the log so far, and a sha256 of all of it) in
`train.checkpoint_dir`, which DVC neither tracks nor deletes, once `train.checkpoint_every_s`
seconds of training passed since the last one (0: every epoch; never after the last epoch).
Re-running the stage resumes each seed from its last checkpointed epoch, but only when the
checkpoint's checksum matches its contents (a damaged one is deleted, with a message) and its
fingerprint (configuration, prepared data, code, torch version, and the device type and
precision that `auto` resolved to) equals the run's; otherwise it starts over and says why.
The checkpoints are removed once every seed's outputs are written.

Outputs in runs/<run>/, written once every seed has trained, each under a temporary name and
renamed: models/seed_<s>.pt (state dict of the final epoch — the paper protocol has no validation
split), train_log.csv (one row per seed and epoch, a DVC plot) and, last, train_info.json (timing,
label counts, the run's configuration, provenance), whose presence marks the stage's outputs complete.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import io
import math
import multiprocessing
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_connections
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from benchmark.artifacts import (
    EVALUATION_OUTPUTS,
    TRAIN_OUTPUTS,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    file_sha256,
    remove_outputs,
    sha256_json,
)
from benchmark.cli import ReportedError, add_run_argument, chosen_run, run_cli
from benchmark.config import (
    RUN_NAME_PATTERN,
    ConfigError,
    RunSpec,
    check_run_spec,
    load_params,
    run_spec,
    validate_params,
)
from benchmark.contract import TrainContext
from benchmark.data.prepared import PreparedData, load_prepared, prepared_fingerprint
from benchmark.nn.losses import structure_window
from benchmark.training.runtime import (
    autocast,
    configure_determinism,
    configure_threads,
    git_state,
    hardware_description,
    now_iso,
    package_versions,
    pick_device,
    resolve_precision,
    seed_everything,
)
from benchmark.training.sampling import BatchSampler, TrainingSet, batch_strong_share
from methods import SegmentationMethod, get_method
from methods.base import OptionError

CHECKPOINT_NAME = "last.pt"


class DivergedError(ReportedError, FloatingPointError):
    """The run's loss diverged; the run stops before any output is written."""


class NonFiniteLossError(DivergedError):
    """A loss term became NaN or infinite."""


class LossExplodedError(DivergedError):
    """An epoch's mean loss grew beyond `train.divergence_factor` x the run's first-step loss."""


class TrainingStopped(ReportedError, RuntimeError):
    """SIGTERM (what SLURM and `kill` send) reached a trainer with seed workers: the workers were stopped too."""


class RunLockedError(ReportedError, RuntimeError):
    """Another process is training the same run."""


def build_method(spec: RunSpec, model_params: dict[str, Any]) -> SegmentationMethod:
    try:
        method_cls = get_method(spec.method)
    except KeyError as error:
        raise ConfigError(f"params.yaml: runs.{spec.name}.method = {spec.method!r}: {error.args[0]}") from None
    try:
        return method_cls(model_params, spec.options)
    except OptionError as error:
        raise ConfigError(f"params.yaml: runs.{spec.name}.options.{error.key} = {error.value!r}: "
                          f"{error.allowed}") from None
    except ReportedError:  # complete already and about another key (model.encoder, model.encoder_weights)
        raise
    except ValueError as error:  # a method's own check of its options
        raise ConfigError(f"params.yaml: runs.{spec.name}.options (method {spec.method}): "
                          f"{' '.join(str(error).split())}") from None


def check_label_budget(spec: RunSpec, method_cls: type[SegmentationMethod], data: PreparedData) -> None:
    """A method that trains on masks needs at least one strong image; one that trains on boxes only, one weak."""
    strong, weak = data.strong_and_weak(spec.strong_fraction)
    n_train = len(strong) + len(weak)
    where = f"params.yaml: runs.{spec.name}.strong_fraction = {spec.strong_fraction:g}"
    if method_cls.uses_strong and len(strong) == 0:
        raise ConfigError(f"{where}: gives 0 of the {n_train} training images a mask, but method {spec.method} "
                          f"trains on masks; it needs at least 1 strong image (strong_fraction >= {1 / n_train:.4g})")
    if not method_cls.uses_strong and method_cls.uses_weak and len(weak) == 0:
        raise ConfigError(f"{where}: leaves no box-only image of the {n_train} training images, but method "
                          f"{spec.method} trains on boxes only; use a smaller strong_fraction")


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
    # the fused kernel is the same Adam update in one pass over the parameters: 4x faster than the
    # default multi-tensor one on a CPU (measured 7.6 vs 30.6 ms for 12.5 M parameters), also on CUDA
    return torch.optim.Adam(parameters, lr=lr, fused=True)


# -- the training step, shared with the speed benchmark ------------------------------------------------
@dataclass
class Numerics:
    """How the network runs on the device: precision ('fp32'|'bf16') and memory format."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def from_params(cls, train_params: dict[str, Any], device: torch.device) -> "Numerics":
        try:
            precision = resolve_precision(str(train_params.get("precision", "auto")), device)
        except ValueError as error:
            raise ConfigError(f"params.yaml: {error}") from error
        return cls(device, precision, bool(train_params.get("channels_last", False)))

    def prepare(self, method: SegmentationMethod) -> SegmentationMethod:
        method = method.to(self.device)
        return method.to(memory_format=torch.channels_last) if self.channels_last else method


def compile_networks(method: SegmentationMethod, train_params: dict[str, Any]) -> None:
    """`train.compile`: torch.compile each network of the method, in place (state_dict keys unchanged)."""
    if train_params.get("compile", False):
        for child in method.children():
            child.compile()


def optimisation_step(method: SegmentationMethod, batch, optimizer: torch.optim.Optimizer,
                      numerics: Numerics) -> dict[str, torch.Tensor]:
    """One step as the trainer runs it: forward (autocast), summed loss, backward, optimizer step.

    Returns the detached loss terms and their `total` (float32, still on the device: no sync)."""
    if numerics.channels_last:
        batch.images = batch.images.contiguous(memory_format=torch.channels_last)
    with autocast(numerics.device, numerics.precision):
        terms = method.training_step(batch)
    terms = {name: value.float() for name, value in terms.items()}  # losses summed in float32
    total = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {**{name: value.detach() for name, value in terms.items()}, "total": total.detach()}


def loop_step(method: SegmentationMethod, training_set: TrainingSet, sampler: BatchSampler,
              optimizer: torch.optim.Optimizer, numerics: Numerics, global_step: int, history: list[torch.Tensor],
              progress: tqdm) -> list[str]:
    """Everything the training loop does per step: draw and augment a batch on the device, the optimisation
    step, the method's per-step hook, and the logging (loss values stay on the device); returns term names."""
    losses = optimisation_step(method, training_set.batch(*sampler.next()), optimizer, numerics)
    method.after_optimizer_step(global_step)
    history.append(torch.stack(list(losses.values())))
    progress.update(1)
    return list(losses)


def check_finite(run: str, seed: int, epoch: int, names: list[str], values: torch.Tensor) -> None:
    """values: (steps, terms) of one epoch; checked once per epoch so the GPU never waits per step."""
    bad = ~torch.isfinite(values)
    if bad.any():
        step, term = (int(i) for i in torch.nonzero(bad)[0])
        # before the first update the learning rate has done nothing yet: the inputs or the loss itself are wrong
        advice = ("check the prepared data (dvc repro prepare) and the method's loss: the learning rate has not "
                  "acted yet at the first step" if (epoch, step) == (1, 0) else
                  "lower train.lr, or check the method's loss for a division by zero")
        raise NonFiniteLossError(
            f"run {run} (seed {seed}): loss term '{names[term]}' is {values[step, term].item()} at epoch {epoch}, "
            f"step {step + 1} of {len(values)}. Training stopped; no weights or metrics were written for this run "
            f"({advice}).")


def check_divergence(run: str, seed: int, epoch: int, names: list[str], values: torch.Tensor, first_loss: float,
                     factor: float) -> None:
    """The divergence rule: the epoch's mean total loss above `factor` x the total loss of the run's first step.

    The first step's loss is the untrained network's, so an explosion within the first epoch counts too
    (a run whose first epoch already averages 1e12 would pass a rule relative to the first epoch's mean)."""
    means = values.double().mean(0)
    total = float(means[names.index("total")])
    if first_loss > 0 and total > factor * first_loss:
        terms = [k for k, name in enumerate(names) if name != "total"]
        largest = max(terms, key=lambda k: float(means[k]))
        raise LossExplodedError(
            f"run {run} (seed {seed}): the loss diverged at epoch {epoch}: its mean total loss {total:.4g} is "
            f"{total / first_loss:.3g} x the first step's {first_loss:.4g} (more than train.divergence_factor = "
            f"{factor:g}); largest term '{names[largest]}' (mean {float(means[largest]):.4g}). Training stopped; no "
            "weights or metrics were written for this run (lower train.lr).")


# -- checkpoints ------------------------------------------------------------------------------------------
def loaded_code(spec: RunSpec) -> dict[str, Path]:
    """Module name -> file of every loaded module of the `benchmark` and `methods` packages: what the run executes
    (the method's module is imported first, so its file is among them)."""
    get_method(spec.method)
    return {name: Path(module.__file__) for name, module in list(sys.modules.items())
            if name.split(".")[0] in ("benchmark", "methods") and getattr(module, "__file__", None)}


def package_code() -> dict[str, Path]:
    """Relative path -> file of every Python file of the `benchmark` and `methods` packages."""
    root = Path(__file__).resolve().parents[2]
    return {path.relative_to(root).as_posix(): path for package in ("benchmark", "methods")
            for path in sorted((root / package).rglob("*.py")) if "__pycache__" not in path.parts}


def changed_while_training(watched: dict[Path, str]) -> list[str]:
    """The watched files (path -> sha256 taken before training) whose content differs now, or that are gone."""
    return [str(path) for path, digest in watched.items() if not path.is_file() or file_sha256(path) != digest]


def run_fingerprint(spec: RunSpec, params: dict[str, Any], prepared_dir: Path,
                    numerics: Numerics | None = None) -> dict[str, str]:
    """What a checkpoint must match to be resumed: configuration, prepared data, code, torch version, the local
    encoder weights file's content and, given `numerics`, what `auto` resolved to here (device type and
    precision): a bf16 checkpoint is not continued in fp32 on a CPU without native bf16, or the other way round.

    The code is every file of the `benchmark` and `methods` packages, loaded or not: a fixed set, so a study
    (one process that imports more) and the train stage fingerprint the same code the same way."""
    # where and how often checkpoints are written changes no result, so a checkpoint survives a change of either
    train_params = {key: value for key, value in params["train"].items()
                    if key not in ("checkpoint_dir", "checkpoint_every_s")}
    code_files = package_code()
    return {
        "config": sha256_json({"model": params["model"], "train": train_params, "method": spec.method,
                              "strong_fraction": spec.strong_fraction, "options": spec.options}),
        "data": prepared_fingerprint(prepared_dir),
        "code": sha256_json({name: file_sha256(path) for name, path in code_files.items() if path.is_file()}),
        "torch": str(torch.__version__),
        "weights": weights_fingerprint(params["model"]),
        **({"numerics": f"{numerics.device.type} {numerics.precision}"} if numerics is not None else {}),
    }


def weights_file(model_params: dict[str, Any]) -> Path | None:
    """The local encoder weights file the run starts from; None for random or downloaded ImageNet weights."""
    weights = model_params.get("encoder_weights")
    return None if weights in (None, "imagenet") else Path(weights)


def weights_fingerprint(model_params: dict[str, Any]) -> str:
    """sha256 of the local encoder weights file, else the setting itself (null, imagenet: pinned by the lock file)."""
    path = weights_file(model_params)
    if path is None:
        return str(model_params.get("encoder_weights"))
    return file_sha256(path) if path.is_file() else f"missing: {path}"


def checkpoint_dir(params: dict[str, Any], spec: RunSpec, seed: int) -> Path:
    return Path(params["train"]["checkpoint_dir"]).expanduser() / spec.name / f"seed_{seed}"


def remove_checkpoints(params: dict[str, Any], spec: RunSpec) -> None:
    """Delete what this trainer wrote under <checkpoint_dir>/<run>/, each seed's checkpoint and its temporary,
    then the folders that leaves empty: whatever else a misplaced folder holds stays where it is."""
    for seed in spec.seeds:
        folder = checkpoint_dir(params, spec, seed)
        for name in (CHECKPOINT_NAME, CHECKPOINT_NAME + ".tmp"):
            (folder / name).unlink(missing_ok=True)
        for empty in (folder, folder.parent):
            with contextlib.suppress(OSError):  # not empty, or already gone
                empty.rmdir()


@contextlib.contextmanager
def run_lock(params: dict[str, Any], spec: RunSpec) -> Iterator[Path]:
    """Hold the run's lock, taken at once or not at all: two trainers of one run would overwrite each other's
    checkpoints and outputs. It lives beside the checkpoints (untracked by DVC and git)."""
    path = Path(params["train"]["checkpoint_dir"]).expanduser() / f"{spec.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(f"run {spec.name} is being trained by another process (it holds {path}); wait for it "
                             "to finish or stop it, then run again.") from None
    try:
        yield path
    finally:
        lock.release()


def payload_sha256(payload: Any) -> str:
    """sha256 over every value of a checkpoint (tensor bytes with dtype and shape, numbers, strings), in order:
    written into the checkpoint, recomputed after loading it, so damage anywhere in the file is caught."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)};".encode())
            for key, item in value.items():
                digest.update(f"{key!r}:".encode())
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"list {len(value)};".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{type(value).__name__} {value!r};".encode())

    feed(payload)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_torch_save(path, {**payload, "sha256": payload_sha256(payload)})


def load_compatible_checkpoint(path: Path, fingerprint: dict[str, str], device: torch.device,
                               say=print) -> dict[str, Any] | None:
    """The checkpoint at `path` if it is intact and was written by this exact configuration, else None (and
    why). A damaged checkpoint is deleted: resuming from it would continue from corrupted weights."""
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        recorded = checkpoint.pop("sha256", None)
        damage = None if recorded is None or recorded == payload_sha256(checkpoint) else \
            "its contents do not match the sha256 written with it"
    except Exception as error:  # a truncated file cannot exist (atomic writes), but a damaged or foreign one might
        damage = f"torch.load cannot read it ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    if not damage and recorded is None:
        say(f"{path}: has no checksum (written by an older trainer); not resuming from it, starting from scratch.")
        return None
    if damage:
        path.unlink(missing_ok=True)
        say(f"{path}: damaged checkpoint: {damage}; discarded it, starting from scratch.")
        return None
    differs = [key for key, value in fingerprint.items() if checkpoint.get("fingerprint", {}).get(key) != value]
    if differs:
        say(f"{path}: written for a different {', '.join(differs)}; not resuming from it, starting from scratch.")
        return None
    return checkpoint


def _rng_states() -> dict[str, Any]:
    """Every global random stream a method may draw from (dropout, MC sampling), in torch.load-safe types."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
              "numpy": [torch.as_tensor(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    random.setstate((3, tuple(states["python"]), None))
    keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


# -- one seed -----------------------------------------------------------------------------------------------
@dataclass
class SeedResult:
    state_dict: dict[str, torch.Tensor]
    log_rows: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def train_seed(spec: RunSpec, seed: int, params: dict[str, Any], data: PreparedData, fingerprint: dict[str, str],
               show_progress: bool = True, progress_position: int | None = None) -> SeedResult:
    """One seed of a run, under the protocol's structure-loss window (`train.structure_window`, every method alike)."""
    try:
        window = structure_window(params["train"].get("structure_window", "scaled"))
    except ValueError as error:
        raise ConfigError(f"params.yaml: {error}") from error
    with window:
        return _train_seed(spec, seed, params, data, fingerprint, show_progress, progress_position)


def _train_seed(spec: RunSpec, seed: int, params: dict[str, Any], data: PreparedData, fingerprint: dict[str, str],
                show_progress: bool, progress_position: int | None) -> SeedResult:
    train_params, model_params = params["train"], params["model"]
    # the code that trains the seed: read now, as a commit made while it trains does not change what it runs
    started_at, started, source = now_iso(), time.perf_counter(), git_state()
    device = pick_device(train_params["device"])
    deterministic = configure_determinism(train_params["deterministic"], device)
    numerics = Numerics.from_params(train_params, device)
    seed_everything(seed)

    method = numerics.prepare(build_method(spec, model_params))
    training_set = training_set_for(data, spec, train_params, device)
    batch_size = int(train_params["batch_size"])
    strong_share = batch_strong_share(train_params["strong_share"], spec.strong_fraction)
    sampler = BatchSampler(training_set, batch_size, strong_share, method.uses_strong, method.uses_weak, seed=seed)
    epochs = int(train_params["epochs"])
    n_steps = steps_per_epoch(train_params["steps_per_epoch"], len(training_set), sampler.n_used, batch_size)
    checkpoint_path = checkpoint_dir(params, spec, seed) / CHECKPOINT_NAME
    # read before the hook, which may then skip a stage whose result the checkpoint holds (an ancillary model)
    checkpoint = load_compatible_checkpoint(checkpoint_path, fingerprint, device, say=tqdm.write)
    label = f"train {spec.name} seed {seed}"
    method.on_train_start(TrainContext(
        training_set=training_set,
        make_sampler=lambda strong, weak, sub_seed: BatchSampler(training_set, batch_size, strong_share, strong, weak,
                                                                 sub_seed),
        train_params=train_params, device=device, epochs=epochs, steps_per_epoch=n_steps, seed=seed,
        learning_rate=lambda step: poly_lr(float(train_params["lr"]), min(step // n_steps, epochs - 1), epochs,
                                           float(train_params["poly_power"])),
        resuming=checkpoint is not None, show_progress=show_progress, progress_position=progress_position,
        label=label,
    ))
    # created after the hook, so parameters a method froze there are not optimised
    optimizer = make_optimizer(train_params["optimizer"], [p for p in method.parameters() if p.requires_grad],
                               float(train_params["lr"]))
    compile_networks(method, train_params)

    first_epoch, log_rows, seconds_before, first_loss = 0, [], 0.0, None
    progress = tqdm(total=epochs * n_steps, desc=label, unit="step", disable=not show_progress,
                    position=progress_position)
    try:  # closed on any exit, so an error message starts on a line of its own
        if checkpoint is not None:
            method.load_state_dict(checkpoint["model"])
            method.load_training_state(checkpoint["method_state"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            sampler.load_state_dict(checkpoint["sampler"])
            _restore_rng_states(checkpoint["rng"])
            first_epoch, log_rows = int(checkpoint["epoch"]), list(checkpoint["log_rows"])
            seconds_before, first_loss = float(checkpoint["train_seconds"]), float(checkpoint["first_loss"])
            progress.update(first_epoch * n_steps)
            progress.write(f"{spec.name} seed {seed}: resumed after epoch {first_epoch} of {epochs} from "
                           f"{checkpoint_path}")

        method.train()
        checkpoint_every_s, last_checkpoint = float(train_params["checkpoint_every_s"]), time.perf_counter()
        for epoch in range(first_epoch, epochs):
            lr = poly_lr(float(train_params["lr"]), epoch, epochs, float(train_params["poly_power"]))
            for group in optimizer.param_groups:
                group["lr"] = lr
            epoch_start, history, names = time.perf_counter(), [], None
            for step in range(n_steps):
                names = loop_step(method, training_set, sampler, optimizer, numerics, epoch * n_steps + step, history,
                                  progress)
            values = torch.stack(history).cpu()  # the epoch's only device-to-host copy
            check_finite(spec.name, seed, epoch + 1, names, values)
            first_loss = float(values[0, names.index("total")]) if first_loss is None else first_loss
            check_divergence(spec.name, seed, epoch + 1, names, values, first_loss,
                             float(train_params["divergence_factor"]))
            method.on_epoch_end(epoch, epochs)
            means = dict(zip(names, values.double().mean(0).tolist()))
            log_rows.append({"seed": seed, "epoch": epoch + 1, "lr": lr, **means,
                             "seconds": round(time.perf_counter() - epoch_start, 3)})
            progress.set_postfix(epoch=epoch + 1, loss=f"{means['total']:.4f}")
            # a checkpoint costs a serialisation of the weights and Adam's moments (3x the model) and a write: at
            # most one per train.checkpoint_every_s, none after the last epoch (the run's output follows at once)
            if epoch + 1 == epochs or time.perf_counter() - last_checkpoint < checkpoint_every_s:
                continue
            last_checkpoint = time.perf_counter()
            save_checkpoint(checkpoint_path, {
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": method.state_dict(),
                "method_state": method.training_state(), "optimizer": optimizer.state_dict(),
                "sampler": sampler.state_dict(), "rng": _rng_states(), "log_rows": log_rows,
                "train_seconds": seconds_before + time.perf_counter() - started, "first_loss": first_loss,
            })
    finally:
        progress.close()

    n_strong = int(training_set.is_strong.sum())
    counts = {"n_train": len(training_set), "n_strong": n_strong,
              "n_strong_used": n_strong if method.uses_strong else 0,
              "n_weak_used": len(training_set) - n_strong if method.uses_weak else 0,
              "steps_per_epoch": n_steps, "image_size": int(training_set.images.shape[-1]),
              "options": method.options, "uses_strong": method.uses_strong, "uses_weak": method.uses_weak,
              "precision": numerics.precision, "channels_last": numerics.channels_last,
              "deterministic": deterministic, "device": str(device), "hardware": hardware_description(device)}
    seed_info = {
        "train_seconds": round(seconds_before + time.perf_counter() - started, 2),
        "resumed_from_epoch": first_epoch,
        "seconds_before_resume": round(seconds_before, 2),  # trained in an earlier, interrupted process
        "provenance": {**source, "started": started_at, "finished": now_iso(), "seed": seed,
                       "device": counts["hardware"], "packages": package_versions(), "fingerprint": fingerprint,
                       "params": {"model": model_params, "train": train_params, "seeds": list(spec.seeds),
                                  "run": {"method": spec.method, "row": spec.row,
                                          "strong_fraction": spec.strong_fraction, "options": spec.options}}},
    }
    state = {key: value.detach().cpu() for key, value in method.state_dict().items()}
    return SeedResult(state, log_rows, {"counts": counts, "seed": seed_info})


# -- one run (all seeds) ----------------------------------------------------------------------------------------
# Memory of one training process on the CPU, measured with ps on the default (ResNet-18 U-Net, 96 px, batch 8):
# ~0.85 GB resident for torch, the method and the training set, ~0.05 GB per image of a batch for the
# activations kept for backward (they grow with the pixels). A rough estimate, used only to refuse a schedule
# that cannot fit, never to pick a good one.
PROCESS_BASE_GB, ACTIVATION_GB_PER_IMAGE_AT_96 = 0.85, 0.05
MAX_WORKERS_PER_CORE = 2  # 3 seeds on 2 cores measured 0.81 of serial (README "Speed"); more only thrash


def training_memory_gb(batch_size: int, image_size: int) -> float:
    """Estimated resident memory of one training process (see PROCESS_BASE_GB)."""
    return PROCESS_BASE_GB + ACTIVATION_GB_PER_IMAGE_AT_96 * batch_size * (image_size / 96) ** 2


def available_memory_gb() -> float | None:
    """MemAvailable of /proc/meminfo in GB; None where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_batch_fits(train_params: dict[str, Any], image_size: int, device: torch.device,
                     available_gb: float | None = None) -> None:
    """On the CPU, refuse a batch whose estimated memory exceeds what the machine has (the kernel would kill the
    run without a word)."""
    available_gb = available_memory_gb() if available_gb is None else available_gb
    batch = int(train_params["batch_size"])
    need = training_memory_gb(batch, image_size)
    if device.type == "cpu" and available_gb is not None and need > available_gb:
        raise ConfigError(f"params.yaml: train.batch_size = {batch}: training at {image_size} px needs about "
                          f"{need:.0f} GB ({ACTIVATION_GB_PER_IMAGE_AT_96 * (image_size / 96) ** 2:.2f} GB per image "
                          f"of a batch), more than the {available_gb:.1f} GB this machine has available; lower "
                          "train.batch_size.")


def seed_schedule(train_params: dict[str, Any], n_seeds: int, device: torch.device, image_size: int = 96,
                  available_gb: float | None = None) -> tuple[int, int]:
    """(worker processes, torch threads per seed) of a run with `n_seeds` seeds; threads 0 = torch's default
    (every core) for a serial run, as before `train.seed_workers` existed. Never more workers than seeds, than
    MAX_WORKERS_PER_CORE per core, or than fit in 80% of the available memory (`training_memory_gb` each)."""
    requested = train_params.get("seed_workers", 1)
    num_threads = int(train_params.get("num_threads", 0))
    # the cores this process may use (a container's or taskset's share), not the machine's
    cores = num_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if requested == "auto":
        workers = n_seeds if device.type == "cpu" and cores >= 2 else 1
    elif isinstance(requested, int) and not isinstance(requested, bool) and requested >= 1:
        workers = requested
    else:
        raise ConfigError(f"params.yaml: train.seed_workers must be 'auto' or a positive integer, got {requested!r}.")
    workers = min(workers, n_seeds, MAX_WORKERS_PER_CORE * cores)
    available_gb = available_memory_gb() if available_gb is None else available_gb
    if available_gb is not None:
        per_worker = training_memory_gb(int(train_params.get("batch_size", 8)), image_size)
        workers = max(1, min(workers, int(0.8 * available_gb / per_worker)))
    if workers == 1:
        return 1, num_threads
    if device.type != "cpu":
        raise ConfigError("params.yaml: train.seed_workers > 1 trains seeds in parallel processes on the CPU only; "
                          f"the device here is {device}. Use 1 (or 'auto'), or benchmark.tools.launch for several runs "
                          "per GPU.")
    return workers, max(1, cores // workers)


PR_SET_PDEATHSIG = 1  # prctl option (Linux): the kernel signals this process when its parent dies


def _die_with_parent() -> None:
    """In each seed worker: SIGTERM when the trainer dies, even by SIGKILL, so no worker trains on alone, writing
    checkpoints a restarted trainer of the same run would also write."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_sigterm(spec: RunSpec) -> Iterator[None]:
    """While seed workers train: SIGTERM to the trainer stops them (the trainer terminates their processes) and
    ends the stage with a one-line message; the checkpoints already written resume the run. Left as it is where
    the trainer's SIGTERM is not the default (benchmark.tools.launch leaves it to submitit)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL or \
            threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise TrainingStopped(f"run {spec.name}: stopped by signal {signum}; its seed workers were stopped too. "
                              "Run the same command again to resume from the last checkpoints.")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _seed_worker(job: tuple) -> tuple[bytes, list[dict[str, Any]], dict[str, Any]]:
    """One seed in a spawned worker process: its own threads, data and RNG state, nothing shared. The weights go
    back serialised: a tensor sent as itself travels through shared memory that dies with this process (which
    exits after its one task), and the parent writes the models once every seed has trained."""
    spec, seed, params, prepared_dir, fingerprint, show_progress, threads, position = job
    configure_threads(threads)
    result = train_seed(spec, seed, params, load_prepared(prepared_dir), fingerprint, show_progress, position)
    buffer = io.BytesIO()
    torch.save(result.state_dict, buffer)
    return buffer.getvalue(), result.log_rows, result.info


def _seed_process(job: tuple, sender: Connection) -> None:
    """The target of one seed's process: its result, or the exception it raised, goes back through `sender`."""
    _die_with_parent()
    try:
        message: tuple[str, Any] = ("result", _seed_worker(job))
    except BaseException as error:  # noqa: BLE001 - the trainer re-raises it, as if the seed had run in-process
        message = ("error", error)
    try:
        sender.send(message)
    except Exception:  # noqa: BLE001 - an exception that does not pickle still travels as its text
        sender.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}")))
    sender.close()


def run_seed_processes(jobs: list[tuple], workers: int) -> list[tuple[bytes, list[dict[str, Any]], dict[str, Any]]]:
    """Every job in a fresh spawned process of its own, at most `workers` at once; the results in job order.

    Spawn, not fork: a forked child would inherit this process's OpenMP pool. One process per seed, started and
    joined here, rather than a multiprocessing.Pool with maxtasksperchild=1: a Pool replaces each finished worker
    with a new one, and that replacement hung both Pool.terminate() and Pool.join() after every seed had
    trained (seen twice in a study). A seed that fails, or a signal to the trainer, stops the other seeds."""
    context = multiprocessing.get_context("spawn")
    waiting, running, results = list(enumerate(jobs)), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                index, job = waiting.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_seed_process, args=(job, sender), daemon=True)
                process.start()
                sender.close()  # the child holds the only sending end: its death reads as EOF here
                running[index] = (process, receiver)
            ready = wait_for_connections([receiver for _, receiver in running.values()])
            for index in [i for i, (_, receiver) in running.items() if receiver in ready]:
                process, receiver = running.pop(index)
                try:
                    kind, value = receiver.recv()
                except EOFError:
                    process.join()
                    raise RuntimeError(f"the seed worker of seed {jobs[index][1]} ended (exit code "
                                       f"{process.exitcode}) before returning its result") from None
                finally:
                    receiver.close()
                process.join()
                if kind == "error":
                    raise value
                results[index] = value
    finally:
        for process, receiver in running.values():
            process.terminate()
            receiver.close()
        for process, _ in running.values():
            process.join()
    return [results[index] for index in range(len(jobs))]


def _seed_result(payload: tuple[bytes, list[dict[str, Any]], dict[str, Any]]) -> SeedResult:
    weights, log_rows, info = payload
    return SeedResult(torch.load(io.BytesIO(weights), weights_only=True), log_rows, info)


def wall_before_resume(seconds_before: list[float], workers: int) -> float:
    """Wall time a resumed run's seeds had trained before the interruption, approximately: `workers` seeds train
    side by side, so each wave of them took its longest seed's time; the waves ran one after another. Added to the
    resumed process's own time, a run interrupted once (or at every session's end) reports about what it would
    have taken uninterrupted, less the partial epochs the interruptions lost."""
    waves = [seconds_before[k:k + workers] for k in range(0, len(seconds_before), max(1, workers))]
    return sum(max(wave) for wave in waves)


def train_run(spec: RunSpec, params: dict[str, Any], prepared_dir: Path, out_dir: Path,
              show_progress: bool = True) -> dict[str, Any]:
    """Train every seed of `spec`: check everything first, then remove the run's old outputs, write new ones last."""
    params = validate_params(params)
    check_run_spec(spec)
    train_params, model_params = params["train"], params["model"]
    with run_lock(params, spec):
        device = pick_device(train_params["device"])
        numerics = Numerics.from_params(train_params, device)  # a precision the device lacks fails here
        data = load_prepared(prepared_dir)
        method_cls = type(build_method(spec, model_params))  # options, encoder and its weights
        check_label_budget(spec, method_cls, data)
        image_size = int(data.arrays["cbis"]["images"].shape[-1])
        check_batch_fits(train_params, image_size, device)
        workers, threads = seed_schedule(train_params, len(spec.seeds), device, image_size)
        fingerprint = run_fingerprint(spec, params, prepared_dir, numerics)
        run_dir = out_dir / spec.name
        # from here on nothing of an earlier training or evaluation of this run is left to look current
        remove_outputs(run_dir, EVALUATION_OUTPUTS + TRAIN_OUTPUTS)

        started = time.perf_counter()
        if workers == 1:
            threads = configure_threads(threads)
            results = [train_seed(spec, seed, params, data, fingerprint, show_progress) for seed in spec.seeds]
        else:
            jobs = [(spec, seed, params, prepared_dir, fingerprint, show_progress, threads, k % workers)
                    for k, seed in enumerate(spec.seeds)]
            with stop_on_sigterm(spec):
                results = [_seed_result(payload) for payload in run_seed_processes(jobs, workers)]

        log_rows, seeds_info, counts = [], {}, {}
        # written once every seed has trained: a diverged seed leaves none
        for seed, result in zip(spec.seeds, results):
            model_path = run_dir / "models" / f"seed_{seed}.pt"
            atomic_torch_save(model_path, result.state_dict)
            log_rows += result.log_rows
            counts = result.info["counts"]
            seeds_info[str(seed)] = {**result.info["seed"], "model_sha256": file_sha256(model_path)}

        atomic_write_csv(run_dir / "train_log.csv", pd.DataFrame(log_rows))
        info = {
            "run": spec.name, "method": spec.method, "row": spec.row, "strong_fraction": spec.strong_fraction,
            **counts, "epochs": int(train_params["epochs"]), "batch_size": int(train_params["batch_size"]),
            "encoder": model_params["encoder"], "encoder_weights": model_params.get("encoder_weights"),
            "encoder_weights_fingerprint": weights_fingerprint(model_params),
            "threads": threads, "seed_workers": workers, "torch": str(torch.__version__),
            "train_seconds": round(sum(seed["train_seconds"] for seed in seeds_info.values()), 2),  # summed over seeds
            # the stage's own time, seeds side by side, plus what an interrupted earlier process had trained
            "train_wall_seconds": round(time.perf_counter() - started + wall_before_resume(
                [seeds_info[str(seed)]["seconds_before_resume"] for seed in spec.seeds], workers), 2),
            "configured": spec.configured(), "model": model_params,
            "train_log_sha256": file_sha256(run_dir / "train_log.csv"),  # the report's loss check reads it
            "seeds": seeds_info,
        }
        atomic_write_json(run_dir / "train_info.json", info)  # last: its presence marks the outputs complete
        remove_checkpoints(params, spec)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_argument(parser)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    args.run = chosen_run(args, parser)
    run_dir = Path(args.out) / args.run
    if re.fullmatch(RUN_NAME_PATTERN, args.run) and not (run_dir / "train_info.json").is_file():
        # first of all: an evaluation whose training is gone (`dvc repro` removes a train stage's outputs before
        # it runs) goes too, even if this training then fails on a params.yaml value: `dvc metrics show` would
        # list it as current. With the training still there, a refused value touches nothing.
        remove_outputs(run_dir, EVALUATION_OUTPUTS)
    params = load_params(args.params)
    spec = run_spec(params, args.run)
    # DVC records the params and code it finds when the stage ends: an edit during training would be recorded as
    # what trained these weights, and the stage would look up to date
    watched = {path: file_sha256(path) for path in [Path(args.params), *loaded_code(spec).values(),
                                                    weights_file(params["model"])] if path and path.is_file()}
    info = train_run(spec, params, Path(args.prepared), Path(args.out))
    changed = changed_while_training(watched)
    if changed:
        remove_outputs(Path(args.out) / args.run, EVALUATION_OUTPUTS + TRAIN_OUTPUTS)
        raise ReportedError(f"run {args.run}: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} changed "
                            "while it trained, so its weights are not what the files now say; its outputs were "
                            "removed: run `dvc repro` again.")
    print(f"{args.run}: trained {len(info['seeds'])} seed(s) x {info['epochs']} epochs x {info['steps_per_epoch']} "
          f"steps on {info['hardware']} ({info['precision']}) in {info['train_seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
