"""Device choice, seeding and a description of the hardware a run used."""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible to PyTorch; use 'auto' or 'cpu'.")
    return torch.device(requested)


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
