"""Writing stage outputs so that a killed stage never leaves a file that looks finished, and naming them.

Every output is written to `<name>.tmp` beside its final path and renamed in one step. A stage that
starts removes the outputs it is about to rewrite, and those downstream of them in the same run folder,
so that a failed or killed stage leaves nothing under runs/<run>/ that looks like a result.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from benchmark.cli import DamagedOutputError, MissingOutputError, UnwritableOutputError

# what each stage writes into runs/<run>/ (directories end with "/"), the file marking completion first,
# the order in which a starting stage removes them
TRAIN_OUTPUTS = ("train_info.json", "train_log.csv", "models/")
EVALUATION_OUTPUTS = ("metrics.json", "per_image.csv", "examples.npz")


def remove_outputs(run_dir: str | Path, names: tuple[str, ...]) -> None:
    """Delete these outputs of a run folder (missing ones are fine)."""
    for name in names:
        path = Path(run_dir) / name.rstrip("/")
        try:
            if name.endswith("/"):
                if path.exists():
                    shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as error:
            raise UnwritableOutputError(f"{path}: could not be removed ({error.strerror or error}); the stage "
                                        "changed nothing. Make the folder writable, then run it again.") from None


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def written(path: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """Write `path` through a temporary file (yielded), renamed into place at the end. Whatever goes wrong on the
    way, the temporary file goes; an OSError (a full disk, a read-only folder) becomes one line naming the file."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else _tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise unwritable(path, error) from None
        raise


def unwritable(path: str | Path, error: OSError) -> UnwritableOutputError:
    """The one-line error for an output that could not be written, its temporary already gone."""
    return UnwritableOutputError(f"{path}: could not be written ({error.strerror or error}); nothing was left "
                                 "half-written. Make room or make the folder writable, then run the stage again.")


def atomic_write_text(path: str | Path, text: str) -> None:
    with written(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def atomic_torch_save(path: str | Path, payload: Any) -> None:
    # serialised in memory first: torch's own file writer reports a full disk as "enforce fail at
    # inline_container.cc", an ordinary write reports it as the OSError it is
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with written(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def atomic_savez(path: str | Path, **arrays: Any) -> None:
    """Compressed .npz under a temporary name (np.savez adds '.npz' to names without it, hence the suffix)."""
    path = Path(path)
    with written(path, path.with_name(path.stem + ".tmp.npz")) as tmp:
        np.savez_compressed(tmp, **arrays)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingOutputError(f"{path}: missing. Run the stage that writes it (`dvc repro`).")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedOutputError(f"{path}: not valid JSON ({error}); re-run the stage that writes it "
                                 "(`dvc repro`).") from None


def sha256_json(payload: Any) -> str:
    """sha256 of a JSON-serialisable payload, independent of key order."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
