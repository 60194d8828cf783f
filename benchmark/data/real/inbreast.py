"""INbreast from the user's disk: every image whose XML has a Mass ROI, the cross-domain test set.

Layout: <root>/AllDICOMs/<FileName>_<hex>_MG_<R|L>_<CC|ML>_ANON.dcm, <root>/AllXML/<FileName>.xml (Apple
plist; ROIs with Name and Point_px "(x, y)", x = column) and <root>/INbreast.csv (semicolon-separated).
The XML has no image size: masks take the DICOM's. Mass polygons are filled by pixel centre.
"""
from __future__ import annotations

import csv
import plistlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.data.real.dicomio import read_pixels
from benchmark.data.real.parallel import run_parallel
from benchmark.data.real.preprocess import MaskOutsideCrop, NotAnImage, outside_crop_report, preprocess_pair
from benchmark.data.real.settings import PreprocessSettings, RealDataError, RealSettings

if TYPE_CHECKING:  # workers import this module; pandas (via benchmark.data.prepared) would only slow their start
    from benchmark.data.prepared import DomainArrays

EXPECTED = ("<root>/AllDICOMs/<FileName>_<hex>_MG_<R|L>_<CC|ML>_ANON.dcm, <root>/AllXML/<FileName>.xml "
            "and <root>/INbreast.csv (as distributed by the INbreast authors)")
MIN_OUTLINE_POINTS = 3  # a Mass ROI of fewer points has no area and is dropped (listed in the report)


@dataclass(frozen=True)
class InbreastTask:
    file_name: str
    dicom_path: str
    polygons: tuple[np.ndarray, ...]  # (n, 2) float (x, y) per Mass ROI
    settings: PreprocessSettings


def read_inbreast_csv(path: str | Path) -> dict[str, dict]:
    """INbreast.csv by File Name: laterality, view, ACR (None where the cell is blank padding), Bi-Rads."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    header = [name.strip() for name in rows[0]] if rows else []
    if "File Name" not in header:
        raise RealDataError(f"{path}: not INbreast.csv (no 'File Name' column in the semicolon-separated header).")
    table = {}
    for cells in rows[1:]:
        cell = dict(zip(header, (c.strip() for c in cells)))
        if cell.get("File Name"):
            table[cell["File Name"]] = {
                "laterality": cell.get("Laterality", ""), "view": cell.get("View", ""),
                "acr": cell.get("ACR") or None, "birads": cell.get("Bi-Rads", ""),
            }
    return table


def parse_point(text: str) -> tuple[float, float]:
    """'(x, y)' or '(x, y, z)' -> (x, y); x is the column, y the row. A plist written under a comma-decimal locale
    reads '(1589,30, 1293,24)': the coordinates are then separated by a comma and a space, and each one's comma
    is its decimal point."""
    inner = text.strip().removeprefix("(").removesuffix(")").strip()
    parts = re.split(r",\s+", inner) if re.search(r",\s", inner) else inner.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y = (float(part.strip().replace(",", ".")) for part in parts[:2])
    except ValueError:
        raise ValueError(f"not a point (x, y): {text!r}") from None
    return x, y


def read_rois(xml_path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(Name, points (n, 2) as x, y) for every ROI of the first image in an INbreast XML."""
    with open(xml_path, "rb") as handle:
        document = plistlib.load(handle)
    rois = []
    for image in document.get("Images", [])[:1]:
        for roi in image.get("ROIs", []):
            points = np.array([parse_point(p) for p in roi.get("Point_px", [])], dtype=np.float64).reshape(-1, 2)
            rois.append((str(roi.get("Name", "")).strip(), points))
    return rois


def fill_polygon(mask: np.ndarray, points: np.ndarray) -> None:
    """Set the pixels whose centres lie inside the polygon (even-odd rule); <= 2 points: mark the points."""
    height, width = mask.shape
    if len(points) == 0:
        return
    if len(points) <= 2:
        cols = np.clip(np.rint(points[:, 0]).astype(int), 0, width - 1)
        rows = np.clip(np.rint(points[:, 1]).astype(int), 0, height - 1)
        mask[rows, cols] = 1
        return
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for row in range(max(int(np.ceil(y0.min())), 0), min(int(np.floor(y0.max())), height - 1) + 1):
        crossing = (y0 <= row) != (y1 <= row)  # half-open, so a vertex on the scan line counts once
        xs = np.sort(x0[crossing] + (row - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing]))
        for left, right in zip(xs[0::2], xs[1::2]):
            first, last = max(int(np.ceil(left)), 0), min(int(np.ceil(right)) - 1, width - 1)
            if last >= first:
                mask[row, first:last + 1] = 1


def mass_mask(polygons, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for points in polygons:
        fill_polygon(mask, points)
    return mask


def decode_image(task: InbreastTask) -> dict:
    """Worker job: DICOM + mass polygons -> prepared pair, or the reason it was skipped."""
    try:
        image = read_pixels(task.dicom_path)
        mask = mass_mask(task.polygons, image.shape)
        if not mask.any():
            return {"file_name": task.file_name, "skipped": "every Mass polygon lies outside the image"}
        prepared, prepared_mask, info = preprocess_pair(image, mask, task.settings)
    except MaskOutsideCrop as error:
        return {"file_name": task.file_name, "skipped": str(error), "mask_outside_crop": True}
    except NotAnImage as error:
        return {"file_name": task.file_name, "skipped": f"{task.dicom_path}: {error}"}
    except Exception as error:  # a corrupt DICOM costs this image only, with the reason on record
        return {"file_name": task.file_name, "skipped": f"{task.dicom_path}: unreadable ({type(error).__name__}: {error})"}
    return {"file_name": task.file_name, "image": prepared, "mask": prepared_mask,
            "original_shape": list(image.shape), **info}


def _name_tokens(dicom: Path) -> tuple[str, str]:
    """Laterality and view from '<FileName>_<hex>_MG_R_ML_ANON.dcm' (the file says ML where the CSV says MLO)."""
    parts = dicom.stem.split("_")
    if "MG" in parts and len(parts) > parts.index("MG") + 2:
        side, view = parts[parts.index("MG") + 1], parts[parts.index("MG") + 2]
        return side, "MLO" if view == "ML" else view
    return "", ""


def check_root(root: Path) -> None:
    if not root.is_dir():
        raise RealDataError(f"data.real.inbreast_root = {root}: the folder does not exist. Expected {EXPECTED}.")
    for folder in ("AllDICOMs", "AllXML"):
        if not (root / folder).is_dir():
            raise RealDataError(f"data.real.inbreast_root = {root}: no {folder}/ folder there. Expected {EXPECTED}.")


def load_inbreast(settings: RealSettings) -> tuple[DomainArrays, dict]:
    root = settings.inbreast_root
    check_root(root)
    dicoms: dict[str, Path] = {}
    for path in sorted((root / "AllDICOMs").glob("*.dcm")):
        dicoms.setdefault(path.name.split("_")[0], path)
    xmls = sorted((root / "AllXML").glob("*.xml"))
    if not dicoms or not xmls:
        raise RealDataError(f"data.real.inbreast_root = {root}: {len(dicoms)} DICOMs, {len(xmls)} XMLs. Expected {EXPECTED}.")
    table_path = root / "INbreast.csv"
    table = read_inbreast_csv(table_path) if table_path.is_file() else {}
    tasks, skipped, no_mass, without_area = [], [], 0, []
    for xml in xmls:
        file_name = xml.stem
        try:
            rois = read_rois(xml)
        except Exception as error:
            skipped.append({"domain": "inbreast", "item": file_name, "path": str(xml),
                            "reason": f"unreadable XML ({type(error).__name__}: {error})"})
            continue
        mass_rois = [points for name, points in rois if name.lower() == "mass"]
        # a point or a segment outlines nothing: no mask to learn from or score against
        masses = tuple(points for points in mass_rois if len(points) >= MIN_OUTLINE_POINTS)
        without_area += [{"item": file_name, "path": str(xml), "points": len(points)}
                         for points in mass_rois if len(points) < MIN_OUTLINE_POINTS]
        if not masses:
            no_mass += 1
            names = ", ".join(sorted({name for name, _ in rois})) or "none"
            skipped.append({"domain": "inbreast", "item": file_name, "path": str(xml),
                            "reason": f"no Mass ROI with an area: {len(mass_rois)} of fewer than "
                                      f"{MIN_OUTLINE_POINTS} points" if mass_rois else f"no Mass ROI (ROIs: {names})"})
        elif file_name not in dicoms:
            skipped.append({"domain": "inbreast", "item": file_name, "path": str(xml),
                            "reason": f"no AllDICOMs/{file_name}_*.dcm for this XML"})
        else:
            tasks.append(InbreastTask(file_name, str(dicoms[file_name]), masses, settings.preprocess))
    results = run_parallel(decode_image, tasks, settings.workers, "INbreast")
    kept = [r for r in results if "skipped" not in r]
    by_name = {task.file_name: task for task in tasks}
    skipped += [{"domain": "inbreast", "item": r["file_name"], "path": by_name[r["file_name"]].dicom_path,
                 "reason": r["skipped"]} for r in results if "skipped" in r]
    report = {
        "root": str(root), "csv": str(table_path) if table else None, "dicoms": len(dicoms), "xmls": len(xmls),
        "images": len(kept), "masses": sum(len(by_name[r["file_name"]].polygons) for r in kept),
        "xml_without_mass": no_mass, "dicoms_without_xml": len(set(dicoms) - {x.stem for x in xmls}),
        "mass_rois_without_area": without_area,
        "rescued_masks": sum(r["mask_rescued"] for r in kept),
        "mask_outside_crop": outside_crop_report(results, settings.preprocess, "file_name"),
        "skipped": skipped,
    }
    if not kept:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:5])
        raise RealDataError(f"INbreast at {root} gave zero usable images out of {len(xmls)} XMLs. First reasons: {reasons}")
    return _domain_arrays(kept, by_name, dicoms, table), report


def _domain_arrays(kept, by_name, dicoms, table) -> DomainArrays:
    from benchmark.data.prepared import DomainArrays

    names = [r["file_name"] for r in kept]
    tokens = {name: _name_tokens(dicoms[name]) for name in names}
    meta = {name: table.get(name, {}) for name in names}
    extra = {
        "official_split": ["test"] * len(kept),  # INbreast is only ever the cross-domain test set
        "mask_resized": [False] * len(kept),
        "original_path": [str(dicoms[name]) for name in names],
        "original_shape": ["x".join(map(str, r["original_shape"])) for r in kept],
        "laterality": [meta[n].get("laterality") or tokens[n][0] for n in names],
        "view": [meta[n].get("view") or tokens[n][1] for n in names],
        "acr": [meta[n].get("acr") for n in names],
        "birads": [meta[n].get("birads") for n in names],
        "n_masses": [len(by_name[n].polygons) for n in names],
        "breast_box": [" ".join(map(str, r["breast_box"])) for r in kept],
        "crop_box": [" ".join(map(str, r["crop_box"])) for r in kept],
        "mask_outside_crop": [r["mask_outside_crop"] for r in kept],
        "flipped": [r["flipped"] for r in kept],
        "mask_rescued": [r["mask_rescued"] for r in kept],
    }
    return DomainArrays(
        images=np.stack([r["image"] for r in kept]), masks=np.stack([r["mask"] for r in kept]),
        image_ids=[f"INbreast_{name}" for name in names], source="INbreast", extra=extra,
    )
