"""What a run needs from its machine: device, threads, seeds, numerics, and its provenance record."""
from __future__ import annotations

import os
import platform
import random
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np
import torch

from benchmark.config import ConfigError


def pick_device(requested: str = "auto") -> torch.device:
    """`train.device` (auto | cpu | cuda | cuda:N) as a torch device that exists on this machine."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", str(requested)):
        raise ConfigError(f"params.yaml: train.device = {requested!r}: must be auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"params.yaml: train.device = {requested!r}: no CUDA device is visible to PyTorch on this "
                          "machine; use auto or cpu")
    device = torch.device(requested)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"params.yaml: train.device = {requested!r}: this machine has {count} CUDA device(s) "
                          f"(cuda:0 to cuda:{count - 1}); use one of them, cuda or auto")
    return device


def configure_threads(num_threads: int) -> int:
    if num_threads and num_threads > 0:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU {cpu_name()} ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"


# -- numerics: precision, memory format, determinism ------------------------------------------------
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, ~10-25x slower
    than fp32 (measured on an AVX2-only AMD EPYC: 21 s against ~0.5 s per default training step)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own capability checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(requested: str, device: torch.device) -> str:
    """'auto' is bf16 where the hardware has it (a CUDA device that supports it, a CPU with AVX512-BF16/AMX)
    and fp32 elsewhere; an explicit 'bf16' on a CPU without it uses oneDNN's emulation (slow)."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {requested!r}.")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision is bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                         "use 'auto' or 'fp32'.")
    return requested


def autocast(device: torch.device, precision: str):
    """The forward-pass context of a training step: bf16 autocast, or a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def configure_determinism(requested: bool | str, device: torch.device) -> bool:
    """'auto' is deterministic on CPU (free there) and fast on CUDA (cudnn autotuning, non-deterministic
    atomics); true forces deterministic kernels on CUDA too, at some speed cost."""
    deterministic = device.type == "cpu" if requested == "auto" else bool(requested)
    if device.type == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return deterministic


# -- provenance ---------------------------------------------------------------------------------------
PROVENANCE_PACKAGES = ("torch", "torchvision", "segmentation-models-pytorch", "numpy", "pandas", "scipy",
                       "pysodmetrics", "dvc")
# what decides the results; run outputs (runs/, reports/) are not part of "dirty"
SOURCE_PATHS = ("benchmark", "methods", "params.yaml", "dvc.yaml", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit the code was run at and whether benchmark/, methods/ or the configuration had local edits."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", *SOURCE_PATHS) if commit else None
    return {"git_commit": commit or "unknown (not a git checkout)",
            "git_dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
