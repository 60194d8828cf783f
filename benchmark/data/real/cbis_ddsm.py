"""CBIS-DDSM mass cases from the user's disk, in any of its three folder layouts.

Reads both mass description CSVs, finds each image's files (TCIA UID folders, NBIA Data Retriever folders
or the Kaggle JPEG copy), tells every ROI mask from its cropped image by pixels and tags, ORs the masks of
rows that share an image, and preprocesses the pairs in worker processes.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from benchmark.data.real.dicomio import read_header, read_pixels
from benchmark.data.real.parallel import run_parallel
from benchmark.data.real.preprocess import MaskOutsideCrop, NotAnImage, outside_crop_report, preprocess_pair
from benchmark.data.real.settings import PreprocessSettings, RealDataError, RealSettings

if TYPE_CHECKING:  # workers import this module; pandas (via benchmark.data.prepared) would only slow their start
    from benchmark.data.prepared import DomainArrays

CSV_NAMES = {"train": "mass_case_description_train_set.csv", "test": "mass_case_description_test_set.csv"}
DICOM_INFO = "dicom_info.csv"
IMAGE_COL, CROP_COL, ROI_COL = "image file path", "cropped image file path", "ROI mask file path"
LAYOUT_HELP = {
    "uid": "<root>/Mass-Training_P_00001_LEFT_CC/<StudyUID>/<SeriesUID>/000000.dcm as in the CSV paths "
           "(TCIA), with the two mass_case_description_*_set.csv files in <root> or <root>/csv",
    "nbia": "<root>/[manifest-<n>/][CBIS-DDSM/]Mass-Training_P_00001_LEFT_CC/<date>-DDSM-NA-<n>/1.000000-full "
            "mammogram images-<n>/1-1.dcm (NBIA Data Retriever; <root> may be the download folder, the "
            "manifest-<n> folder or CBIS-DDSM), with the two mass description CSVs in <root> or below it",
    "kaggle": "<root>/csv/{mass_case_description_train_set.csv, mass_case_description_test_set.csv, "
              "dicom_info.csv} and <root>/jpeg/<SeriesUID>/1-NNN.jpg (Kaggle JPEG copy)",
}
IMAGE_FOLDER_PREFIXES = ("Mass-Training", "Mass-Test", "Calc-Training", "Calc-Test")
PROBE_ROWS = 64  # enough CSV rows to recognise a layout even when part of the download is missing


class Unusable(Exception):
    """This image cannot be used; the message is the reason written to the prepare report."""


@dataclass(frozen=True)
class MassRow:
    split: str
    patient_id: str
    laterality: str
    view: str
    abnormality_id: str
    shape: str
    margins: str
    pathology: str
    image_path: str
    crop_path: str
    roi_path: str

    @property
    def image_id(self) -> str:
        return self.image_path.split("/")[0]


@dataclass(frozen=True)
class Source:
    path: str
    description: str = ""  # SeriesDescription, where the layout tells it without opening the file


@dataclass(frozen=True)
class ImageTask:
    image_id: str
    full: tuple[Source, ...]
    masses: tuple[tuple[str, tuple[Source, ...]], ...]  # (abnormality id, files that may hold its mask)
    settings: PreprocessSettings


def _clean_path(cell: str) -> str:
    return cell.strip().replace("\\", "/").strip("/")


def _csv_problem(path: Path, line: int, what: str) -> RealDataError:
    return RealDataError(f"{path}, line {line}: {what}. The file looks damaged or truncated: download it "
                         "again from the TCIA CBIS-DDSM page.")


def read_mass_csv(path: str | Path, split: str) -> list[MassRow]:
    """Mass rows of one description CSV; every cell is stripped (the ROI cell ends in a quoted newline).

    A garbled or truncated file is an error naming the file and the line of the first bad record."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _csv_problem(path, raw[:error.start].count(b"\n") + 1, f"not UTF-8 text ({error.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
    except csv.Error as error:
        raise _csv_problem(path, reader.line_num, f"unreadable header ({error})") from None
    missing = [c for c in (IMAGE_COL, CROP_COL, ROI_COL, "patient_id", "abnormality type") if c not in header]
    if missing:
        raise RealDataError(f"{path}: not a CBIS-DDSM description CSV; missing columns {missing}.")
    rows = []
    while True:
        start = reader.line_num + 1  # a record spans two lines: the ROI cell holds a newline
        try:
            cells = next(reader, None)
        except csv.Error as error:  # e.g. the file ends inside a quoted cell
            raise _csv_problem(path, start, f"unreadable record ({error})") from None
        if cells is None:
            break
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) < len(header) or any(cell.strip() for cell in cells[len(header):]):
            raise _csv_problem(path, start, f"{len(cells)} cells where the header has {len(header)}")
        cell = dict(zip(header, (c.strip() for c in cells)))
        if cell.get("abnormality type", "").lower() != "mass":
            continue
        empty = [c for c in ("patient_id", IMAGE_COL, CROP_COL, ROI_COL) if not cell[c]]
        if empty or not cell[IMAGE_COL].lower().endswith(".dcm"):
            what = f"empty {', '.join(empty)}" if empty else f"image file path {cell[IMAGE_COL][:60]!r} is not a .dcm path"
            raise _csv_problem(path, start, what)
        rows.append(MassRow(
            split=split, patient_id=cell["patient_id"], laterality=cell.get("left or right breast", ""),
            view=cell.get("image view", ""), abnormality_id=cell.get("abnormality id", ""),
            shape=cell.get("mass shape", ""), margins=cell.get("mass margins", ""),
            pathology=cell.get("pathology", ""), image_path=_clean_path(cell[IMAGE_COL]),
            crop_path=_clean_path(cell[CROP_COL]), roi_path=_clean_path(cell[ROI_COL]),
        ))
    return rows


def group_by_image(rows: list[MassRow]) -> dict[str, list[MassRow]]:
    """Rows keyed by their full-image path, in CSV order: several masses on one image become one mask."""
    groups: dict[str, list[MassRow]] = {}
    for row in rows:
        groups.setdefault(row.image_path, []).append(row)
    return groups


# ----------------------------------------------------------------------------------------- layouts on disk
def _layout_error(root: Path, what: str, layouts=("uid", "nbia", "kaggle")) -> RealDataError:
    expected = "\n".join(f"  {name}: {LAYOUT_HELP[name]}" for name in layouts)
    return RealDataError(f"data.real.cbis_root = {root}: {what}. Expected CBIS-DDSM in this layout:\n{expected}")


def _holds_image_folders(folder: Path) -> bool:
    """Whether `folder` directly holds CBIS-DDSM image folders (Mass-Training_P_00001_LEFT_CC, ...)."""
    try:
        return any(entry.is_dir() and entry.name.startswith(IMAGE_FOLDER_PREFIXES) for entry in folder.iterdir())
    except OSError:
        return False


def resolve_root(root: Path) -> Path:
    """The folder holding the image folders: `root` itself (the CBIS-DDSM folder, or a TCIA UID tree), its
    CBIS-DDSM/ (NBIA's manifest-* folder) or <root>/manifest-*/CBIS-DDSM (NBIA's download folder).
    Two candidates are an error that lists them; none: `root` (the Kaggle layout, or a later error)."""
    candidates = [root, root / "CBIS-DDSM", *sorted(root.glob("manifest-*/CBIS-DDSM"))]
    found = [folder for folder in dict.fromkeys(candidates) if folder.is_dir() and _holds_image_folders(folder)]
    if len(found) > 1:
        listed = "\n".join(f"  {folder}" for folder in found)
        raise RealDataError(f"data.real.cbis_root = {root}: {len(found)} folders hold CBIS-DDSM image folders:\n"
                            f"{listed}\nSet data.real.cbis_root to the one to use (or merge them into one).")
    return found[0] if found else root


def _csv_folders(root: Path, base: Path, layout: str) -> list[Path]:
    """Where the description CSVs may be: every level from the image folder up to `root`, and above `root`
    while it is inside an NBIA download (CBIS-DDSM/ -> manifest-*/ -> download folder), each level also
    with a csv/ subfolder. The README asks for them in the download folder."""
    if layout == "kaggle":
        return [root / "csv"]
    levels = [base, *[parent for parent in base.parents if parent == root or root in parent.parents]]
    top = root
    while top.name == "CBIS-DDSM" or top.name.startswith("manifest-"):
        top = top.parent
        levels.append(top)
    return [folder for level in levels for folder in (level, level / "csv")]


def _find_csvs(root: Path, layout: str) -> dict[str, Path]:
    folders = _csv_folders(root, resolve_root(root), layout)
    for folder in folders:
        found = {split: folder / name for split, name in CSV_NAMES.items()}
        if all(path.is_file() for path in found.values()):
            return found
    raise _layout_error(root, f"no {' and '.join(CSV_NAMES.values())} in {', '.join(map(str, folders))}",
                        [layout] if layout != "auto" else ("uid", "nbia", "kaggle"))


class UidLayout:
    """TCIA folders exactly as the CSV paths spell them."""

    name = "uid"

    def __init__(self, base: Path):
        self.base = base

    def full(self, row: MassRow) -> list[Source]:
        path = self.base / row.image_path
        return [Source(str(path))] if path.is_file() else []

    def roi(self, row: MassRow) -> list[Source]:
        # Crop and mask are often swapped in the CSV, or both named 000000.dcm in two series folders:
        # offer every DICOM in both folders and let the pixels decide.
        folders = {(self.base / p).parent for p in (row.roi_path, row.crop_path)}
        return [Source(str(p)) for f in sorted(folders) if f.is_dir() for p in sorted(f.glob("*.dcm"))]


class NbiaLayout(UidLayout):
    """NBIA Data Retriever folders: only the first CSV path component survives; series folders are renamed."""

    name = "nbia"

    def _under(self, top: str) -> list[Source]:
        folder = self.base / top
        return [Source(str(p)) for p in sorted(folder.rglob("*.dcm"))] if folder.is_dir() else []

    def full(self, row: MassRow) -> list[Source]:
        return self._under(row.image_path.split("/")[0])

    def roi(self, row: MassRow) -> list[Source]:
        tops = dict.fromkeys(p.split("/")[0] for p in (row.roi_path, row.crop_path))
        return [source for top in tops for source in self._under(top)]


class KaggleLayout:
    """Kaggle JPEG copy: files grouped by series UID (CSV path element 3), described in dicom_info.csv."""

    name = "kaggle"

    def __init__(self, root: Path):
        self.jpeg = root / "jpeg"
        self.series: dict[str, list[Source]] = {}
        info = root / "csv" / DICOM_INFO
        with open(info, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "image_path" not in (reader.fieldnames or []):
                raise RealDataError(f"data.real.cbis_root: {info} has no image_path column; is it Kaggle's dicom_info.csv?")
            for record in reader:
                parts = _clean_path(record.get("image_path") or "").split("/")
                if "jpeg" not in parts or len(parts) < parts.index("jpeg") + 3:
                    continue
                uid, name = parts[parts.index("jpeg") + 1], parts[-1]
                description = (record.get("SeriesDescription") or "").strip()
                self.series.setdefault(uid, []).append(Source(str(self.jpeg / uid / name), description))

    def _files(self, uid: str) -> list[Source]:
        listed = [s for s in self.series.get(uid, []) if Path(s.path).is_file()]
        on_disk = sorted((self.jpeg / uid).glob("*.jp*g")) if (self.jpeg / uid).is_dir() else []
        known = {s.path for s in listed}
        return listed + [Source(str(p)) for p in on_disk if str(p) not in known]

    @staticmethod
    def _uid(path: str) -> str:
        parts = path.split("/")
        return parts[2] if len(parts) > 3 else ""

    def full(self, row: MassRow) -> list[Source]:
        return self._files(self._uid(row.image_path))

    def roi(self, row: MassRow) -> list[Source]:
        uids = dict.fromkeys(self._uid(p) for p in (row.roi_path, row.crop_path))
        return [source for uid in uids for source in self._files(uid)]


def detect_layout(root: Path, requested: str, rows: list[MassRow]):
    """The layout whose files exist for the most of the first CSV rows (or the requested one, checked)."""
    probe = rows[:PROBE_ROWS]
    base = resolve_root(root)
    candidates = [UidLayout(base), NbiaLayout(base)]
    if requested in ("auto", "kaggle") and (root / "csv" / DICOM_INFO).is_file() and (root / "jpeg").is_dir():
        candidates.append(KaggleLayout(root))
    scored = [(sum(bool(layout.full(row)) for row in probe), layout) for layout in candidates
              if requested in ("auto", layout.name)]
    hits, best = max(scored, key=lambda pair: pair[0], default=(0, None))
    if not hits:
        names = ("uid", "nbia", "kaggle") if requested == "auto" else (requested,)
        what = (f"none of the first {len(probe)} full-mammogram files named in the CSVs was found"
                + ("" if requested == "auto" else f" in the '{requested}' layout (data.real.cbis_layout)"))
        raise _layout_error(root, what, names)
    return best


# ------------------------------------------------------------------------------------ decoding (in workers)
def _read(source: Source) -> np.ndarray:
    try:
        if source.path.lower().endswith(".dcm"):
            return read_pixels(source.path)
        pixels = cv2.imread(source.path, cv2.IMREAD_GRAYSCALE)
        if pixels is None:
            raise ValueError("OpenCV could not decode it")
        return pixels
    except Exception as error:  # a corrupt file costs this image only, with the reason on record
        raise Unusable(f"{source.path}: unreadable ({type(error).__name__}: {error})") from None


def _describe(source: Source) -> tuple[str, tuple[int, int] | None]:
    """SeriesDescription and size from the DICOM header (JPEG: from dicom_info, size unknown until decoded)."""
    if not source.path.lower().endswith(".dcm"):
        return source.description.lower(), None
    try:
        header = read_header(source.path)
    except Exception as error:
        raise Unusable(f"{source.path}: unreadable header ({type(error).__name__}: {error})") from None
    return header.series_description.lower(), (header.rows, header.cols)


def _size_problem(size: tuple[int, int], full: tuple[int, int]) -> str:
    """Why a file of this size cannot be the mask of this image ('' if it can): masks are full-size,
    or (a few) a smaller copy with the same aspect ratio; crops are small."""
    if size[0] < full[0] / 2 or size[1] < full[1] / 2:
        return f"{size[0]}x{size[1]} is far smaller than the image {full[0]}x{full[1]} (a crop)"
    if abs((size[0] / size[1]) / (full[0] / full[1]) - 1.0) > 0.1:
        return f"{size[0]}x{size[1]} has another aspect ratio than the image {full[0]}x{full[1]}"
    return ""


def _binary_problem(pixels: np.ndarray) -> str:
    top = float(pixels.max())
    if top <= 0:
        return "all black (empty mask)"
    scaled = pixels.astype(np.float32) / top
    grey = float(np.mean((scaled > 0.25) & (scaled < 0.75)))
    # JPEG ringing leaves a few grey pixels along mask edges; a cropped image is mostly grey.
    return f"not binary ({100 * grey:.1f}% grey pixels)" if grey > 0.01 else ""


def _full_image(sources: tuple[Source, ...]) -> tuple[np.ndarray, str]:
    if len(sources) == 1:
        return _read(sources[0]), sources[0].path
    described = [(_describe(s), s) for s in sources]
    named = [s for (description, _), s in described if "full mammogram" in description]
    if len(named) == 1:
        return _read(named[0]), named[0].path
    images = [(_read(s), s.path) for s in sources]
    return max(images, key=lambda pair: pair[0].size)


def _find_mask(candidates: tuple[Source, ...], full: tuple[int, int]) -> tuple[np.ndarray, bool, str]:
    """The candidate that is a full-size binary image, as a bool mask of the image's size; and resized?"""
    notes, described = [], []
    for source in candidates:  # an unreadable crop must not cost the image its (readable) mask
        try:
            described.append((_describe(source), source))
        except Unusable as error:
            notes.append(str(error))
    # Tags only set the order of the tries (a cheap first guess); the pixels decide.
    described.sort(key=lambda item: 0 if "roi mask" in item[0][0] else 2 if "crop" in item[0][0] else 1)
    for (_, size), source in described:
        problem = _size_problem(size, full) if size else ""
        if not problem:
            try:
                pixels = _read(source)
                problem = _size_problem(pixels.shape, full) or _binary_problem(pixels)
            except Unusable as error:
                problem = str(error)
        if problem:
            notes.append(f"{Path(source.path).name}: {problem}")
            continue
        mask = (pixels > float(pixels.max()) / 2).astype(np.uint8)
        resized = mask.shape != full
        if resized:
            mask = cv2.resize(mask, (full[1], full[0]), interpolation=cv2.INTER_NEAREST)
        return mask.astype(bool), resized, source.path
    folders = sorted({str(Path(s.path).parent) for s in candidates})
    raise Unusable(f"no ROI mask among {len(candidates)} files in {folders}: {'; '.join(notes)}")


def decode_image(task: ImageTask) -> dict:
    """Worker job: one full image and all its masses -> prepared pair, or the reason it was skipped."""
    try:
        image, image_path = _full_image(task.full)
        mask = np.zeros(image.shape, dtype=bool)
        resized, mask_paths = 0, []
        for abnormality_id, candidates in task.masses:
            try:
                one, was_resized, path = _find_mask(candidates, image.shape)
            except Unusable as error:
                raise Unusable(f"abnormality id {abnormality_id}: {error}") from None
            mask |= one
            resized += was_resized
            mask_paths.append(path)
        prepared, prepared_mask, info = preprocess_pair(image, mask, task.settings)
    except MaskOutsideCrop as error:
        return {"image_id": task.image_id, "skipped": str(error), "mask_outside_crop": True}
    except NotAnImage as error:
        return {"image_id": task.image_id, "skipped": f"{image_path}: {error}"}
    except Unusable as error:
        return {"image_id": task.image_id, "skipped": str(error)}
    except Exception as error:  # anything unforeseen in one image is recorded, not fatal to the run
        return {"image_id": task.image_id, "skipped": f"{type(error).__name__}: {error}"}
    return {"image_id": task.image_id, "image": prepared, "mask": prepared_mask, "resized_masks": resized,
            "original_path": image_path, "mask_paths": mask_paths, "original_shape": list(image.shape), **info}


# ------------------------------------------------------------------------------------------------- driver
def check_root(root: Path, layout: str) -> None:
    if not root.is_dir():
        raise _layout_error(root, "the folder does not exist", ("uid", "nbia", "kaggle") if layout == "auto" else (layout,))


def load_cbis(settings: RealSettings) -> tuple[DomainArrays, dict]:
    root = settings.cbis_root
    check_root(root, settings.cbis_layout)
    rows, warnings = [], []
    for split, path in _find_csvs(root, settings.cbis_layout).items():
        found = read_mass_csv(path, split)
        if not found and settings.split == "official":
            raise RealDataError(f"{path}: no mass rows (only a header?); data.split: official needs CBIS-DDSM's "
                                "train and test description CSVs, both complete.")
        if not found:
            warnings.append(f"{path}: no mass rows (only a header?); the {split} images are missing, the "
                            f"{settings.split} split draws from the other CSV's images alone.")
        rows += found
    if not rows:
        raise _layout_error(root, "the mass description CSVs hold no mass rows")
    layout = detect_layout(root, settings.cbis_layout, rows)
    groups = group_by_image(rows)
    tasks, skipped, metadata = [], [], {}
    for image_path, group in groups.items():
        image_id = group[0].image_id
        full = tuple(layout.full(group[0]))
        masses = tuple((row.abnormality_id, tuple(layout.roi(row))) for row in group)
        lacking = [abn for abn, sources in masses if not sources]
        if not full or lacking:
            what = "full mammogram" if not full else f"ROI files of abnormality id {', '.join(lacking)}"
            skipped.append({"domain": "cbis", "item": image_id, "path": image_path,
                            "reason": f"{what} not found in the {layout.name} layout"})
            continue
        tasks.append(ImageTask(image_id, full, masses, settings.preprocess))
        metadata[image_id] = group
    results = run_parallel(decode_image, tasks, settings.workers, "CBIS-DDSM")
    kept = [r for r in results if "skipped" not in r]
    skipped += [{"domain": "cbis", "item": r["image_id"], "path": metadata[r["image_id"]][0].image_path,
                 "reason": r["skipped"]} for r in results if "skipped" in r]
    report = {
        "layout": layout.name, "root": str(root), "csv_rows": len(rows), "csv_images": len(groups),
        "images": len(kept), "masses": sum(len(metadata[r["image_id"]]) for r in kept),
        "merged_rows": sum(len(metadata[r["image_id"]]) - 1 for r in kept),
        "resized_masks": sum(r["resized_masks"] for r in kept),
        "rescued_masks": sum(r["mask_rescued"] for r in kept),
        "mask_outside_crop": outside_crop_report(results, settings.preprocess, "image_id"),
        "warnings": warnings, "skipped": skipped,
    }
    if not kept:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:5])
        raise RealDataError(f"CBIS-DDSM at {root} ({layout.name} layout) gave zero usable images "
                            f"out of {len(groups)}. First reasons: {reasons}")
    return _domain_arrays(kept, metadata), report


def _domain_arrays(kept: list[dict], metadata: dict[str, list[MassRow]]) -> DomainArrays:
    from benchmark.data.prepared import DomainArrays

    def column(get):
        return [get(r, metadata[r["image_id"]]) for r in kept]

    extra = {
        "official_split": column(lambda r, g: g[0].split),
        "mask_resized": column(lambda r, g: r["resized_masks"] > 0),
        "original_path": column(lambda r, g: r["original_path"]),
        "original_shape": column(lambda r, g: "x".join(map(str, r["original_shape"]))),
        "patient_id": column(lambda r, g: g[0].patient_id),
        "laterality": column(lambda r, g: g[0].laterality[:1].upper()),  # L / R, as INbreast spells it
        "view": column(lambda r, g: g[0].view),
        "n_masses": column(lambda r, g: len(g)),
        "pathology": column(lambda r, g: "|".join(dict.fromkeys(row.pathology for row in g))),
        "breast_box": column(lambda r, g: " ".join(map(str, r["breast_box"]))),
        "crop_box": column(lambda r, g: " ".join(map(str, r["crop_box"]))),
        "mask_outside_crop": column(lambda r, g: r["mask_outside_crop"]),
        "flipped": column(lambda r, g: r["flipped"]),
        "mask_rescued": column(lambda r, g: r["mask_rescued"]),
    }
    return DomainArrays(
        images=np.stack([r["image"] for r in kept]), masks=np.stack([r["mask"] for r in kept]),
        image_ids=[r["image_id"] for r in kept], source="CBIS-DDSM", extra=extra,
    )
