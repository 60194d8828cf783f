"""Reading `params.yaml`: the one place every stage gets its configuration from.

Stages never hard-code protocol values; they call `load_params()` and pick the
section they declared as a DVC params dependency, so DVC knows exactly which
edits invalidate which stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A value in params.yaml is missing or wrong; the message names the key."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Run the stages from the repository root (where dvc.yaml is).")
    with path.open() as handle:
        params = yaml.safe_load(handle) or {}
    for section in ("data", "model", "train", "evaluate", "runs"):
        if section not in params:
            raise ConfigError(f"{path}: missing top-level section '{section}'.")
    return params


@dataclass(frozen=True)
class RunSpec:
    """One configured run: a method at a label budget, trained once per seed."""

    name: str
    method: str
    strong_fraction: float
    seeds: tuple[int, ...]
    row: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def strong_percent(self) -> float:
        return round(100.0 * self.strong_fraction, 2)


def run_spec(params: dict[str, Any], name: str) -> RunSpec:
    runs = params["runs"] or {}
    if name not in runs:
        known = ", ".join(sorted(runs)) or "(none)"
        raise ConfigError(f"params.yaml: runs.{name} is not configured. Configured runs: {known}.")
    entry = runs[name] or {}
    for key in ("method", "strong_fraction"):
        if key not in entry:
            raise ConfigError(f"params.yaml: runs.{name}.{key} is required.")
    fraction = float(entry["strong_fraction"])
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"params.yaml: runs.{name}.strong_fraction must be in [0, 1], got {fraction}.")
    if "seed" in entry:
        raise ConfigError(f"params.yaml: runs.{name}.seed is no longer read: list the seeds once in the top-level "
                          "`seeds` (or give this run its own `seeds: [..]`).")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"params.yaml: runs.{name}.options must be a mapping, got {type(options).__name__}.")
    return RunSpec(
        name=name,
        method=str(entry["method"]),
        strong_fraction=fraction,
        seeds=_seeds(entry["seeds"], f"runs.{name}.seeds") if "seeds" in entry else
        _seeds(params.get("seeds", [0]), "seeds"),
        row=str(entry.get("row", entry["method"])),
        options=dict(options),
    )


def _seeds(value: Any, key: str) -> tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in values):
        raise ConfigError(f"params.yaml: {key} must be a non-empty list of integers, got {value!r}.")
    if len(set(values)) != len(values):
        raise ConfigError(f"params.yaml: {key} lists a seed twice: {value!r}.")
    return tuple(values)


def all_runs(params: dict[str, Any]) -> list[RunSpec]:
    return [run_spec(params, name) for name in (params["runs"] or {})]
