"""CBIS-DDSM loader: fixtures written in each real on-disk layout (with the real traps), and the real CSVs."""
from __future__ import annotations

import csv
import itertools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmark.data.real import RealDataError
from benchmark.data.real.cbis_ddsm import group_by_image, load_cbis, read_mass_csv
from benchmark.data.real.dicomio import write_dicom
from benchmark.data.real.settings import real_settings

H, W, S = 64, 32, 64  # fixture rows x cols; prepared side. Non-square on purpose: catches row/col swaps.
HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
          "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
          "image file path", "cropped image file path", "ROI mask file path"]
EXACT = {"breast_crop": False, "flip_to_left": False, "clip_percentiles": [0, 100]}
DATA = Path(__file__).resolve().parent / "data" / "cbis_ddsm"
_uids = itertools.count(1)


def widen(mask: np.ndarray) -> np.ndarray:
    """What nearest-neighbour resizing H x W -> S x S does to a fixture array: repeat every column twice."""
    return np.repeat(mask, S // W, axis=1)


def block(y0: int, y1: int, x0: int, x1: int, shape=(H, W)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def mammogram(side: str, seed: int) -> np.ndarray:
    """Bright = dense: a half-ellipse breast on its side's edge, a vertical gradient, a little noise."""
    rows, cols = np.mgrid[0:H, 0:W]
    depth = cols if side == "LEFT" else W - 1 - cols
    breast = (depth / (0.85 * W)) ** 2 + ((rows - H / 2) / (0.48 * H)) ** 2 < 1
    noise = np.random.default_rng(seed).integers(0, 200, (H, W))
    return (2000 + breast * (20000 + 400 * rows) + noise).astype(np.uint16)


def fake_uid() -> str:
    return f"1.3.6.1.4.1.9590.100.1.2.{next(_uids):030d}"


@dataclass
class Mass:
    mask: np.ndarray  # as stored: uint8 0/255, possibly smaller than the image
    swapped: bool = False  # the CSV's crop column names the mask file and its ROI column the crop
    own_folder: bool = False  # mask and crop both 000000.dcm, each in a series folder of its own
    description: str = "ROI mask images"
    paths: dict = field(default_factory=dict)


@dataclass
class Case:
    image_id: str
    split: str
    masses: list[Mass]
    photometric: str = "MONOCHROME2"
    missing: bool = False  # CSV rows whose files are not on disk
    corrupt: bool = False  # the full mammogram is not a readable file
    image_path: str = ""

    @property
    def side(self) -> str:
        return self.image_id.split("_")[3]

    @property
    def display(self) -> np.ndarray:
        return mammogram(self.side, int(self.image_id.split("_")[2]))

    @property
    def expected(self) -> np.ndarray:
        out = np.zeros((H, W), dtype=bool)
        for mass in self.masses:
            factor = H // mass.mask.shape[0]
            out |= np.repeat(np.repeat(mass.mask, factor, 0), factor, 1) > 0
        return out


def standard_cases() -> list[Case]:
    """Every trap at once: swapped CSV columns, two masses on one image, a half-size mask without a
    SeriesDescription, MONOCHROME1 with the mask in its own folder, missing files and a corrupt file."""
    cases = [
        Case("Mass-Training_P_00001_LEFT_CC", "train", [Mass(block(10, 22, 4, 14), swapped=True)]),
        Case("Mass-Training_P_00002_RIGHT_MLO", "train", [Mass(block(8, 16, 18, 26)), Mass(block(40, 50, 12, 20))]),
        Case("Mass-Test_P_00003_LEFT_CC", "test", [Mass(block(10, 20, 4, 10, (H // 2, W // 2)), description="")]),
        Case("Mass-Test_P_00004_RIGHT_CC", "test", [Mass(block(30, 44, 16, 26), own_folder=True)], "MONOCHROME1"),
        Case("Mass-Training_P_00005_LEFT_MLO", "train", [Mass(block(5, 9, 5, 9))], missing=True),
        Case("Mass-Training_P_00006_RIGHT_CC", "train", [Mass(block(5, 9, 5, 9))], corrupt=True),
    ]
    for case in cases:
        case.image_path = f"{case.image_id}/{fake_uid()}/{fake_uid()}/000000.dcm"
        for k, mass in enumerate(case.masses, 1):
            study, series = fake_uid(), fake_uid()
            folder = f"{case.image_id}_{k}/{study}"
            mass.paths["crop"] = f"{folder}/{series}/000000.dcm"
            mass.paths["roi"] = (f"{folder}/{fake_uid()}/000000.dcm" if mass.own_folder
                                 else f"{folder}/{series}/000001.dcm")
    return cases


def crop_pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(18000, 30000, (12, 10)).astype(np.uint16)


def write_csvs(folder: Path, cases: list[Case]) -> None:
    """The real CSV form: CRLF records, the ROI cell ending in a newline inside its quotes."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(folder / f"mass_case_description_{split}_set.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(HEADER)
            for case in (c for c in cases if c.split == split):
                _, patient, number, side, view = case.image_id.split("_")
                for k, mass in enumerate(case.masses, 1):
                    writer.writerow([f"{patient}_{number}", "3", side, view, k, "mass", "NA", "NA", "4", "MALIGNANT",
                                     "3", case.image_path, mass.paths["crop"], mass.paths["roi"] + "\n"])


def mask_and_crop_files(mass: Mass) -> tuple[str, str]:
    """CSV paths of the files that really hold the mask and the crop (the CSV columns may say otherwise)."""
    if mass.swapped:
        return mass.paths["crop"], mass.paths["roi"]
    return mass.paths["roi"], mass.paths["crop"]


def write_uid_tree(root: Path, cases: list[Case]) -> Path:
    write_csvs(root, cases)
    for index, case in enumerate(c for c in cases if not c.missing):
        full = root / case.image_path
        if case.corrupt:
            full.parent.mkdir(parents=True)
            full.write_bytes(b"this is not a DICOM file")
        else:
            stored = case.display if case.photometric == "MONOCHROME2" else 65535 - case.display
            write_dicom(full, stored, series_description="full mammogram images", photometric=case.photometric)
        for k, mass in enumerate(case.masses):
            mask_at, crop_at = mask_and_crop_files(mass)
            write_dicom(root / mask_at, mass.mask, series_description=mass.description)
            write_dicom(root / crop_at, crop_pixels(index * 10 + k), series_description="cropped images")
    return root


def write_nbia_tree(root: Path, cases: list[Case]) -> Path:
    """NBIA Data Retriever folders; ROI folders alternate between two series folders and one folder
    holding 1-1.dcm and 1-2.dcm, with the mask first in one case and second in another."""
    write_csvs(root, cases)
    base = root / "CBIS-DDSM"
    serial = itertools.count(24515)
    for index, case in enumerate(c for c in cases if not c.missing):
        study = f"07-20-2016-DDSM-NA-{next(serial)}"
        full = base / case.image_id / study / f"1.000000-full mammogram images-{next(serial)}" / "1-1.dcm"
        if case.corrupt:
            full.parent.mkdir(parents=True)
            full.write_bytes(b"\x00" * 200)
        else:
            stored = case.display if case.photometric == "MONOCHROME2" else 65535 - case.display
            write_dicom(full, stored, series_description="full mammogram images", photometric=case.photometric)
        for k, mass in enumerate(case.masses):
            folder = base / f"{case.image_id}_{k + 1}" / f"08-29-2017-DDSM-NA-{next(serial)}"
            if (index + k) % 2 == 0:
                mask_at = folder / f"1.000000-ROI mask images-{next(serial)}" / "1-1.dcm"
                crop_at = folder / f"1.000000-cropped images-{next(serial)}" / "1-1.dcm"
            else:
                one = folder / f"1.000000-ROI mask images-{next(serial)}"
                first, second = one / "1-1.dcm", one / "1-2.dcm"
                mask_at, crop_at = (second, first) if index % 2 else (first, second)
            write_dicom(mask_at, mass.mask, series_description=mass.description)
            write_dicom(crop_at, crop_pixels(index * 10 + k), series_description="cropped images")
    return root


def write_kaggle_tree(root: Path, cases: list[Case]) -> Path:
    """Kaggle copy: csv/ (the CSVs + dicom_info.csv) and jpeg/<SeriesUID>/1-NNN.jpg; masks are lossy JPEGs."""
    write_csvs(root / "csv", cases)
    info = []
    serial = itertools.count(101)

    def put(csv_path: str, pixels: np.ndarray | None, description: str) -> None:
        series = csv_path.split("/")[2]
        name = f"1-{next(serial)}.jpg"
        target = root / "jpeg" / series / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if pixels is None:
            target.write_bytes(b"not a jpeg")
        else:
            cv2.imwrite(str(target), pixels, [cv2.IMWRITE_JPEG_QUALITY, 75])
        info.append({"file_path": f"CBIS-DDSM/dicom/{series}/{name[:-4]}.dcm",
                     "image_path": f"CBIS-DDSM/jpeg/{series}/{name}",
                     "SeriesDescription": description, "SeriesInstanceUID": series})

    for index, case in enumerate(c for c in cases if not c.missing):
        put(case.image_path, None if case.corrupt else (case.display >> 8).astype(np.uint8), "full mammogram images")
        for k, mass in enumerate(case.masses):
            mask_at, crop_at = mask_and_crop_files(mass)
            put(mask_at, mass.mask, mass.description)
            put(crop_at, (crop_pixels(index * 10 + k) >> 8).astype(np.uint8), "cropped images")
    with open(root / "csv" / "dicom_info.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(info[0]))
        writer.writeheader()
        writer.writerows(info)
    (root / "inbreast").mkdir()
    return root


def settings_for(root: Path, layout: str = "auto", workers: int = 1, split: str = "random", **preprocess):
    return real_settings({
        "image_size": S, "preprocess": {**EXACT, **preprocess}, "split": split,
        "real": {"cbis_root": str(root), "inbreast_root": str(root / "inbreast"), "cbis_layout": layout,
                 "workers": workers},
    })


WRITERS = {"uid": write_uid_tree, "nbia": write_nbia_tree, "kaggle": write_kaggle_tree}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_every_layout_gives_the_drawn_masks_pixel_for_pixel(tmp_path, layout):
    cases = standard_cases()
    root = WRITERS[layout](tmp_path / "cbis", cases)
    arrays, report = load_cbis(settings_for(root))
    assert report["layout"] == layout
    usable = [c for c in cases if not (c.missing or c.corrupt)]
    assert arrays.image_ids == [c.image_id for c in usable]
    assert arrays.images.shape == arrays.masks.shape == (len(usable), S, S)
    assert arrays.images.dtype == arrays.masks.dtype == np.uint8
    for case, mask in zip(usable, arrays.masks):
        np.testing.assert_array_equal(mask, widen(case.expected), err_msg=case.image_id)
    assert arrays.extra["official_split"] == ["train", "train", "test", "test"]
    assert arrays.extra["mask_resized"] == [False, False, True, False]
    assert arrays.extra["n_masses"] == [1, 2, 1, 1]
    assert all(Path(p).is_file() for p in arrays.extra["original_path"])
    assert {k: report[k] for k in ("csv_rows", "csv_images", "images", "masses", "merged_rows", "resized_masks")} == {
        "csv_rows": 7, "csv_images": 6, "images": 4, "masses": 5, "merged_rows": 1, "resized_masks": 1}
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"Mass-Training_P_00005_LEFT_MLO", "Mass-Training_P_00006_RIGHT_CC"}
    assert "not found" in reasons["Mass-Training_P_00005_LEFT_MLO"]
    assert "unreadable" in reasons["Mass-Training_P_00006_RIGHT_CC"]
    json.dumps(report)


def test_kaggle_masks_really_are_jpeg_noisy(tmp_path):
    root = write_kaggle_tree(tmp_path / "cbis", standard_cases())
    masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in (root / "jpeg").rglob("*.jpg")]
    assert any(m is not None and set(np.unique(m)) - {0, 255} for m in masks)


def test_monochrome1_is_inverted_so_dense_tissue_is_bright(tmp_path):
    cases = standard_cases()
    arrays, _ = load_cbis(settings_for(write_uid_tree(tmp_path / "cbis", cases)))
    case = cases[3]
    assert case.photometric == "MONOCHROME1"
    image = arrays.images[arrays.image_ids.index(case.image_id)].astype(float)
    correlation = np.corrcoef(image.ravel(), widen(case.display).astype(float).ravel())[0, 1]
    assert correlation > 0.9


def test_workers_give_the_same_result_as_one_process(tmp_path):
    root = write_uid_tree(tmp_path / "cbis", standard_cases())
    one, _ = load_cbis(settings_for(root, workers=1))
    two, report = load_cbis(settings_for(root, workers=2))
    assert one.image_ids == two.image_ids
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.masks, two.masks)
    assert len(report["skipped"]) == 2


def test_preprocessing_steps_run_on_real_layouts(tmp_path):
    cases = standard_cases()
    root = write_uid_tree(tmp_path / "cbis", cases)
    arrays, _ = load_cbis(settings_for(root, breast_crop=True, flip_to_left=True, clip_percentiles=[0.5, 99.5]))
    assert arrays.masks.any(axis=(1, 2)).all()
    # Right breasts were mirrored, so every mass mask keeps its area but every breast now touches the left edge.
    assert arrays.extra["flipped"] == [False, True, False, True]
    assert (arrays.images[:, :, :4].mean() > arrays.images[:, :, -4:].mean())


def test_missing_root_names_the_key_the_path_and_the_layouts(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RealDataError) as error:
        load_cbis(settings_for(missing))
    message = str(error.value)
    assert "data.real.cbis_root" in message and str(missing) in message
    assert all(name in message for name in ("uid:", "nbia:", "kaggle:"))


def test_root_without_csvs_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RealDataError, match=r"data\.real\.cbis_root.*mass_case_description_train_set\.csv"):
        load_cbis(settings_for(tmp_path / "empty"))


def test_wrong_explicit_layout_is_rejected(tmp_path):
    root = write_uid_tree(tmp_path / "cbis", standard_cases())
    (root / "csv").mkdir()
    for name in ("train", "test"):
        shutil.copy(root / f"mass_case_description_{name}_set.csv", root / "csv")
    with pytest.raises(RealDataError, match=r"data\.real\.cbis_layout") as error:
        load_cbis(settings_for(root, layout="kaggle"))
    assert "kaggle:" in str(error.value) and "nbia:" not in str(error.value)


def test_zero_usable_images_is_an_error_not_an_empty_success(tmp_path):
    cases = [c for c in standard_cases() if c.corrupt]
    root = write_uid_tree(tmp_path / "cbis", cases)
    with pytest.raises(RealDataError, match="zero usable images"):
        load_cbis(settings_for(root))


def test_a_row_with_only_a_crop_is_skipped_with_its_reason(tmp_path):
    cases = standard_cases()[:1]
    root = write_uid_tree(tmp_path / "cbis", cases + standard_cases()[1:2])
    mask_at, _ = mask_and_crop_files(cases[0].masses[0])
    (root / mask_at).unlink()
    arrays, report = load_cbis(settings_for(root))
    assert arrays.image_ids == ["Mass-Training_P_00002_RIGHT_MLO"]
    (skip,) = report["skipped"]
    assert "no ROI mask" in skip["reason"] and "a crop" in skip["reason"]


# ------------------------------------------------------------------------ the real CBIS-DDSM description CSVs
def test_real_csvs_keep_their_quirks_on_disk():
    raw = (DATA / "mass_case_description_train_set.csv").read_bytes()
    assert raw.count(b'.dcm\n"\r\n') == 1318  # bare LF inside the quoted ROI cell, CRLF after the record
    assert (DATA / "README.md").read_text().count("CC BY 3.0") >= 1


def test_real_csvs_parse_to_the_documented_counts():
    train = read_mass_csv(DATA / "mass_case_description_train_set.csv", "train")
    test = read_mass_csv(DATA / "mass_case_description_test_set.csv", "test")
    assert (len(train), len(test)) == (1318, 378)
    groups_train, groups_test = group_by_image(train), group_by_image(test)
    assert (len(groups_train), len(groups_test)) == (1231, 361)
    assert len(groups_train) + len(groups_test) == 1592
    assert not {r.image_id for r in train} & {r.image_id for r in test}
    assert len({r.image_id for r in train + test}) == 1592  # the first path component names the image
    for row in train + test:
        for path in (row.image_path, row.crop_path, row.roi_path):
            assert path == path.strip() and path.endswith(".dcm")
    own_folder = [r for r in train + test if r.roi_path.endswith("000000.dcm")
                  and r.roi_path.rsplit("/", 1)[0] != r.crop_path.rsplit("/", 1)[0]]
    assert len(own_folder) == 92 + 11
    assert sum(r.shape == "NA" for r in train) == 4
    assert sum(r.margins == "NA" for r in train + test) == 43 + 17
    multi = [g for g in groups_train.values() if len(g) > 1]
    assert sum(len(g) - 1 for g in multi) == 1318 - 1231
    assert all(r.roi_path.split("/")[0].endswith(f"_{r.abnormality_id}") for g in multi for r in g)


def test_a_uid_tree_at_real_csv_paths_loads(tmp_path):
    """Tiny DICOMs at the exact paths of real rows (a single mass, and the four masses of P_00044 RIGHT CC)."""
    with open(DATA / "mass_case_description_train_set.csv", newline="") as handle:
        records = list(csv.reader(handle))
    header, body = records[0], records[1:]
    chosen = [body[0]] + [r for r in body if r[11].startswith("Mass-Training_P_00044_RIGHT_CC/")]
    assert len(chosen) == 5
    root = tmp_path / "cbis"
    root.mkdir()
    for split, rows in (("train", chosen), ("test", [])):
        with open(root / f"mass_case_description_{split}_set.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerows([header] + rows)
    expected = {}
    for index, row in enumerate(chosen):
        image_path, crop_path, roi_path = (cell.strip() for cell in row[11:14])
        if not (root / image_path).exists():
            write_dicom(root / image_path, mammogram("RIGHT", index))
        mask = block(4 + 10 * index, 10 + 10 * index, 3, 9)
        expected[image_path] = expected.get(image_path, 0) | (mask > 0)
        write_dicom(root / roi_path, mask, series_description="ROI mask images")
        if crop_path != roi_path:
            write_dicom(root / crop_path, crop_pixels(index), series_description="cropped images")
    arrays, report = load_cbis(settings_for(root))
    assert (report["images"], report["masses"], report["merged_rows"]) == (2, 5, 3)
    for mask, want in zip(arrays.masks, expected.values()):
        np.testing.assert_array_equal(mask, widen(want))


def test_a_corrupt_crop_does_not_cost_the_image_its_mask(tmp_path):
    cases = standard_cases()
    root = write_uid_tree(tmp_path / "cbis", cases)
    _, crop_at = mask_and_crop_files(cases[0].masses[0])
    (root / crop_at).write_bytes(b"garbage")
    arrays, report = load_cbis(settings_for(root))
    assert cases[0].image_id in arrays.image_ids and report["images"] == 4
    np.testing.assert_array_equal(arrays.masks[0], widen(cases[0].expected))
