"""The `data.real` and `data.preprocess` keys of params.yaml, checked once, before any file is read.

Every error names the key it is about, so a user can fix params.yaml without reading code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from benchmark.cli import ReportedError
from benchmark.data.splits import check_split

CBIS_LAYOUTS = ("auto", "uid", "nbia", "kaggle")
MASK_OUTSIDE_CROP = ("uncropped", "skip")  # what to do with an image whose mask leaves the breast crop


class RealDataError(ReportedError, ValueError):
    """The real datasets cannot be prepared as configured; the message names the key, path or file."""


@dataclass(frozen=True)
class PreprocessSettings:
    image_size: int
    breast_crop: bool = True
    flip_to_left: bool = False
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    mask_outside_crop: str = "uncropped"


@dataclass(frozen=True)
class RealSettings:
    cbis_root: Path
    inbreast_root: Path
    cbis_layout: str
    workers: int
    preprocess: PreprocessSettings
    split: str = "random"  # data.split: an empty train or test CSV is an error only under 'official'


def _mapping(params: dict, key: str) -> dict:
    value = params.get(key) or {}
    if not isinstance(value, dict):
        raise RealDataError(f"data.{key} must be a mapping, got {type(value).__name__}.")
    return value


def _root(real: dict, key: str) -> Path:
    value = real.get(key)
    if not value or not str(value).strip():
        raise RealDataError(f"data.real.{key} is not set: give the folder that holds the dataset on your disk.")
    return Path(os.path.expandvars(str(value).strip())).expanduser()


def _flag(preprocess: dict, key: str, default: bool) -> bool:
    value = preprocess.get(key, default)
    if not isinstance(value, bool):
        raise RealDataError(f"data.preprocess.{key} must be true or false, got {value!r}.")
    return value


def _percentiles(preprocess: dict) -> tuple[float, float]:
    value = preprocess.get("clip_percentiles", [0.5, 99.5])
    if value is None:
        return (0.0, 100.0)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RealDataError(f"data.preprocess.clip_percentiles must be two numbers [low, high], got {value!r}.") from None
    if not 0.0 <= low < high <= 100.0:
        raise RealDataError(f"data.preprocess.clip_percentiles needs 0 <= low < high <= 100, got {value!r}.")
    return (low, high)


def _choice(preprocess: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = preprocess.get(key, allowed[0])
    if value not in allowed:
        raise RealDataError(f"data.preprocess.{key} must be one of {', '.join(allowed)}, got {value!r}.")
    return value


def preprocess_settings(data_params: dict) -> PreprocessSettings:
    size = data_params.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise RealDataError(f"data.image_size must be an integer >= 8, got {size!r}.")
    preprocess = _mapping(data_params, "preprocess")
    return PreprocessSettings(
        image_size=size,
        breast_crop=_flag(preprocess, "breast_crop", True),
        flip_to_left=_flag(preprocess, "flip_to_left", False),
        clip_percentiles=_percentiles(preprocess),
        mask_outside_crop=_choice(preprocess, "mask_outside_crop", MASK_OUTSIDE_CROP),
    )


def real_settings(data_params: dict) -> RealSettings:
    real = _mapping(data_params, "real")
    layout = str(real.get("cbis_layout", "auto")).strip().lower()
    if layout not in CBIS_LAYOUTS:
        raise RealDataError(f"data.real.cbis_layout must be one of {', '.join(CBIS_LAYOUTS)}, got {layout!r}.")
    workers = real.get("workers", 0)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise RealDataError(f"data.real.workers must be an integer >= 0 (0 = all cores), got {workers!r}.")
    return RealSettings(
        cbis_root=_root(real, "cbis_root"),
        inbreast_root=_root(real, "inbreast_root"),
        cbis_layout=layout,
        workers=workers or (os.cpu_count() or 1),
        preprocess=preprocess_settings(data_params),
        split=check_split(data_params.get("split", "random")),
    )
