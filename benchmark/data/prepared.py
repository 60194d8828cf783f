"""The prepared-dataset format shared by every data source, and the label budget.

`prepare` (synthetic or real) hands `write_prepared` two domains of uint8 images
and binary masks at the training resolution. This module derives the weak
labels (one tight box per connected mask component), draws the train/test split
(`data.split`, see benchmark.data.splits) and the strong-label order once from a seed, and writes:

    <out>/cbis.npz, <out>/inbreast.npz   images, masks, boxes  (N, H, W) uint8
    <out>/manifest.csv                   one row per image (see MANIFEST_COLUMNS)
    <out>/prepare_report.json            counts, the split and its same-breast count, anything skipped

The strong subset at fraction f is every training image whose `strong_rank`
is below round(f * n_train): subsets at different budgets are nested by
construction, and every method sees the same ones.
"""
from __future__ import annotations

import json
import os
import zipfile
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from benchmark.artifacts import file_sha256, read_json, sha256_json, unwritable
from benchmark.cli import DamagedOutputError, MissingOutputError
from benchmark.config import ConfigError
from benchmark.data.splits import breast_keys, check_split, draw_test, same_breast_leaks

DOMAINS = ("cbis", "inbreast")
PREPARED_FILES = (*(f"{name}.npz" for name in DOMAINS), "manifest.csv", "prepare_report.json")  # all it writes
MANIFEST_COLUMNS = [
    "image_id", "domain", "index", "split", "strong_rank", "source",
    "box_x0", "box_y0", "box_x1", "box_y1", "boxes", "n_components", "mask_area", "box_area",
]
# optional manifest column: True for a CBIS image that joins the test split without taking part in the split's draw
# (the synthetic stand-in's extra test images, `data.synthetic.extra_cbis_test`); INbreast rows are test only anyway
TEST_ONLY = "test_only"


@dataclass
class DomainArrays:
    """Images and masks of one domain at the prepared resolution, plus per-image metadata."""

    images: np.ndarray  # (N, H, W) uint8
    masks: np.ndarray  # (N, H, W) uint8 in {0, 1}
    image_ids: list[str]
    source: str
    extra: dict[str, list] = field(default_factory=dict)  # extra manifest columns, one value per image

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise ValueError(f"{self.source}: images must be (N, H, W) uint8, got {self.images.dtype} {self.images.shape}")
        if self.masks.shape != self.images.shape:
            raise ValueError(f"{self.source}: masks {self.masks.shape} do not match images {self.images.shape}")
        if len(self.image_ids) != len(self.images):
            raise ValueError(f"{self.source}: {len(self.image_ids)} ids for {len(self.images)} images")
        self.masks = (self.masks > 0).astype(np.uint8)


def component_boxes(mask: np.ndarray, margin: int = 0) -> list[tuple[int, int, int, int]]:
    """Tight box (x0, y0, x1, y1), end-exclusive, around each 8-connected component, grown by `margin` px."""
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=bool))
    height, width = mask.shape
    boxes = []
    for rows, cols in ndimage.find_objects(labels)[:count]:
        boxes.append((
            max(cols.start - margin, 0), max(rows.start - margin, 0),
            min(cols.stop + margin, width), min(rows.stop + margin, height),
        ))
    return boxes


def box_map(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Filled boxes as a uint8 {0, 1} map: the weak label (its complement is the paper's reversed label)."""
    out = np.zeros(shape, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, x0:x1] = 1
    return out


def _domain_manifest(domain: str, arrays: DomainArrays, box_margin: int) -> tuple[pd.DataFrame, np.ndarray]:
    rows, maps = [], np.zeros_like(arrays.masks)
    for index, mask in enumerate(arrays.masks):
        boxes = component_boxes(mask, box_margin)
        maps[index] = box_map(mask.shape, boxes)
        union = (
            (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
            if boxes else (-1, -1, -1, -1)
        )
        rows.append({
            "image_id": arrays.image_ids[index], "domain": domain, "index": index, "source": arrays.source,
            "box_x0": union[0], "box_y0": union[1], "box_x1": union[2], "box_y1": union[3],
            "boxes": json.dumps([list(map(int, b)) for b in boxes]), "n_components": len(boxes),
            "mask_area": int(mask.sum()), "box_area": int(maps[index].sum()),
        })
    frame = pd.DataFrame(rows)
    for column, values in arrays.extra.items():
        frame[column] = values
    return frame, maps


def assign_split_and_rank(manifest: pd.DataFrame, seed: int, test_fraction: float,
                          split: str = "random") -> pd.DataFrame:
    """Draw the CBIS train/test split (kinds: benchmark.data.splits) and the strong-label order once;
    INbreast is test only, and so is every CBIS row marked TEST_ONLY (it takes no part in the draw)."""
    manifest = manifest.copy()
    rng = np.random.default_rng(seed)
    is_cbis = (manifest["domain"] == "cbis").to_numpy()
    if TEST_ONLY in manifest:
        flagged = manifest[TEST_ONLY]
        manifest[TEST_ONLY] = np.where(flagged.isna(), ~is_cbis, flagged.astype(object) == True)  # noqa: E712
        is_cbis = is_cbis & ~manifest[TEST_ONLY].to_numpy(bool)  # the rows the split is drawn from
    cbis_rows = np.flatnonzero(is_cbis)
    labels = np.full(len(manifest), "test", dtype=object)
    if check_split(split) == "official":
        if "official_split" not in manifest:
            raise ValueError("data.split is 'official' but the data source provides no official_split column")
        labels[cbis_rows] = manifest.loc[is_cbis, "official_split"].to_numpy()
    else:
        # random: every image its own key (the paper's image-level draw); random_by_patient: one per breast
        keys = (breast_keys(manifest.loc[is_cbis]).reset_index(drop=True) if split == "random_by_patient"
                else pd.Series(np.arange(len(cbis_rows))))
        labels[cbis_rows[~draw_test(keys, rng, test_fraction)]] = "train"
        n_test = int((labels[cbis_rows] == "test").sum())
        if not 1 <= n_test < len(cbis_rows):
            raise ConfigError(f"params.yaml: data.test_fraction = {test_fraction:g}: holds out {n_test} of the "
                              f"{len(cbis_rows)} CBIS images ({split} split); the test and the training split each "
                              "need at least one image")
    manifest["split"] = labels
    train_rows = np.flatnonzero(labels == "train")
    rank = np.full(len(manifest), -1, dtype=int)
    rank[rng.permutation(train_rows)] = np.arange(len(train_rows))
    manifest["strong_rank"] = rank
    return manifest


def check_replaceable(out_dir: Path) -> None:
    """Prepare replaces only a folder it wrote: refuse one that holds anything else (runs, code, a user's data)."""
    if out_dir.exists():
        foreign = sorted(path.name for path in out_dir.iterdir() if path.name not in PREPARED_FILES) \
            if out_dir.is_dir() else [out_dir.name]
        if foreign:
            raise ConfigError(f"{out_dir}: holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, "
                              "not only prepared data; prepare writes into a new folder or one it wrote before "
                              "(nothing was changed).")


def _atomic_replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    check_replaceable(out_dir)
    if out_dir.exists():
        for name in PREPARED_FILES:
            (out_dir / name).unlink(missing_ok=True)
        out_dir.rmdir()
    os.replace(tmp_dir, out_dir)


def _write_prepared_files(tmp_dir: Path, domains: dict[str, DomainArrays], split_seed: int, test_fraction: float,
                          box_margin: int, split: str, report: dict | None) -> pd.DataFrame:
    frames = []
    for name in DOMAINS:
        frame, boxes = _domain_manifest(name, domains[name], box_margin)
        frames.append(frame)
        np.savez(tmp_dir / f"{name}.npz", images=domains[name].images, masks=domains[name].masks, boxes=boxes)
    manifest = assign_split_and_rank(pd.concat(frames, ignore_index=True), split_seed, test_fraction, split)
    columns = MANIFEST_COLUMNS + [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
    manifest = manifest[columns]
    manifest.to_csv(tmp_dir / "manifest.csv", index=False)
    summary = {
        name: {
            "images": int((manifest["domain"] == name).sum()),
            "train": int(((manifest["domain"] == name) & (manifest["split"] == "train")).sum()),
            "test": int(((manifest["domain"] == name) & (manifest["split"] == "test")).sum()),
            "image_size": list(domains[name].images.shape[1:]),
            "source": domains[name].source,
        }
        for name in DOMAINS
    }
    split_report = {"kind": split, "seed": split_seed, **same_breast_leaks(manifest)}
    (tmp_dir / "prepare_report.json").write_text(
        json.dumps({"domains": summary, "split": split_report, **(report or {})}, indent=2))
    return manifest


def write_prepared(out_dir: str | Path, domains: dict[str, DomainArrays], *, split_seed: int,
                   test_fraction: float, box_margin: int = 0, split: str = "random",
                   report: dict | None = None) -> pd.DataFrame:
    """Write both domains, the manifest and the report; the folder appears only once complete."""
    out_dir = Path(out_dir)
    missing = [name for name in DOMAINS if name not in domains]
    if missing:
        raise ValueError(f"write_prepared needs both domains; missing: {missing}")
    for name in DOMAINS:
        if len(domains[name].images) == 0:
            raise ValueError(f"prepare produced zero usable images for domain '{name}'; nothing was written.")
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    try:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir(parents=True)
        manifest = _write_prepared_files(tmp_dir, domains, split_seed, test_fraction, box_margin, split, report)
        _atomic_replace_dir(tmp_dir, out_dir)
    except BaseException as error:  # a full disk or an error leaves no half-written folder of tens of MB behind
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(error, OSError):
            raise unwritable(out_dir, error) from None
        raise
    return manifest


@dataclass
class PreparedData:
    manifest: pd.DataFrame
    arrays: dict[str, dict[str, np.ndarray]]  # domain -> {"images", "masks", "boxes"}
    directory: Path | None = None  # the folder it was loaded from

    def rows(self, domain: str, split: str) -> pd.DataFrame:
        frame = self.manifest
        return frame[(frame["domain"] == domain) & (frame["split"] == split)].sort_values("index")

    def strong_and_weak(self, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the CBIS arrays of the strong and weak training images at this budget (nested in f)."""
        train = self.rows("cbis", "train")
        n_strong = int(round(fraction * len(train)))
        is_strong = train["strong_rank"].to_numpy() < n_strong
        index = train["index"].to_numpy()
        return np.sort(index[is_strong]), np.sort(index[~is_strong])


REBUILD = "rebuild it with `dvc repro prepare` (or `python -m benchmark prepare`)"


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MissingOutputError(f"{path}: prepared data not found. Run `dvc repro prepare` first.")
    try:
        manifest = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DamagedOutputError(f"{path}: unreadable ({type(error).__name__}); {REBUILD}.") from None
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise DamagedOutputError(f"{path}: no column {', '.join(missing[:3])}; {REBUILD}.")
    return manifest


def _read_domain(path: Path, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """One domain's arrays, checked against what prepare writes: uint8 (N, H, W) images, masks and boxes of one
    shape, masks and boxes in {0, 1}, N the manifest's row count of the domain and every index inside it."""
    if not path.is_file():
        raise MissingOutputError(f"{path}: missing from the prepared data; {REBUILD}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("images", "masks", "boxes")}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as error:
        raise DamagedOutputError(f"{path}: damaged or not prepared data ({type(error).__name__}); {REBUILD}.") from None
    images = arrays["images"]
    problem = None
    if any(array.dtype != np.uint8 for array in arrays.values()):
        problem = "arrays of " + ", ".join(sorted({str(a.dtype) for a in arrays.values()})) + " (prepare writes uint8)"
    elif images.ndim != 3 or any(array.shape != images.shape for array in arrays.values()):
        problem = f"images {images.shape}, masks {arrays['masks'].shape}, boxes {arrays['boxes'].shape}"
    elif arrays["masks"].max(initial=0) > 1 or arrays["boxes"].max(initial=0) > 1:
        problem = "masks or boxes with values other than 0 and 1"
    if problem:
        raise DamagedOutputError(f"{path}: {problem}; {REBUILD}.")
    if len(images) != len(rows) or (len(rows) and not rows["index"].between(0, len(images) - 1).all()):
        raise DamagedOutputError(f"{path.with_name('manifest.csv')}: {len(rows)} rows of this domain, but {path.name} "
                                 f"holds {len(images)} images (one of them is truncated or from another prepare); "
                                 f"{REBUILD}.")
    return arrays


def prepared_fingerprint(directory: str | Path) -> str:
    """sha256 of every file of a prepared-data folder: what a training records as the data it was trained on."""
    return sha256_json({path.name: file_sha256(path) for path in sorted(Path(directory).iterdir()) if path.is_file()})


def check_trained_on(info: dict[str, Any], directory: str | Path, info_path: Path, current: str | None = None) -> None:
    """A run's seeds must have been trained on the prepared data `directory` holds now: after another split, data
    source or generator setting their numbers on today's test images would mix training and test images.
    `current`: the folder's `prepared_fingerprint`, when the caller checks several runs against it."""
    current = prepared_fingerprint(directory) if current is None else current
    recorded = {str(seed): ((entry.get("provenance") or {}).get("fingerprint") or {}).get("data")
                for seed, entry in (info.get("seeds") or {}).items()}
    other = sorted(seed for seed, value in recorded.items() if value != current)
    if other:
        raise ConfigError(f"{info_path}: seed(s) {', '.join(other)} were trained on other prepared data than "
                          f"{directory} holds now (the data, its split or its source changed since); re-train the "
                          f"run: dvc repro train@{info_path.parent.name}")


def check_prepared_from(directory: str | Path, data_params: dict[str, Any]) -> None:
    """The prepared data in `directory` must be what params.yaml's `data` (`data_params`) prepares now: a tool that
    trains or scores beside the pipeline (a study) would otherwise train on images of another size, split or
    generator than the fresh images it scores on. Compared with what prepare recorded in prepare_report.json."""
    path = Path(directory) / "prepare_report.json"
    report = read_json(path)
    try:
        recorded = {"data.source": report["source"], "data.image_size": report["domains"]["cbis"]["image_size"],
                    "data.split": report["split"]["kind"], "data.split_seed": report["split"]["seed"]}
        generator = report.get("generator") or {}
    except (KeyError, TypeError, AttributeError):
        raise DamagedOutputError(f"{path}: not written by prepare; {REBUILD}.") from None
    size = int(data_params["image_size"])
    expected = {"data.source": data_params["source"], "data.image_size": [size, size],
                "data.split": data_params["split"], "data.split_seed": int(data_params["split_seed"])}
    if data_params["source"] == "synthetic":  # another recorded source differs at data.source first
        for key, value in data_params["synthetic"].items():
            recorded[f"data.synthetic.{key}"], expected[f"data.synthetic.{key}"] = generator.get(key), value
    differing = [key for key in expected if recorded[key] != expected[key]]
    if differing:
        key = differing[0]
        raise ConfigError(f"{path}: prepared with {key} = {json.dumps(recorded[key])}, but params.yaml has "
                          f"{json.dumps(expected[key])}; {REBUILD}.")


def load_prepared(directory: str | Path) -> PreparedData:
    """The prepared data, checked on load: a missing, truncated or edited file is one line naming it."""
    directory = Path(directory)
    manifest = _read_manifest(directory / "manifest.csv")
    arrays = {name: _read_domain(directory / f"{name}.npz", manifest[manifest["domain"] == name])
              for name in DOMAINS}
    return PreparedData(manifest=manifest, arrays=arrays, directory=directory)
