"""CBIS-DDSM inputs as users have them: the NBIA Data Retriever's download folder, damaged description
CSVs, an empty train or test CSV, and masks that leave the breast crop."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.data.real import RealDataError
from benchmark.data.real.cbis_ddsm import CSV_NAMES, load_cbis, read_mass_csv
from tests.test_real_cbis import (
    DATA,
    HEADER,
    Case,
    block,
    settings_for,
    standard_cases,
    widen,
    write_nbia_tree,
    write_uid_tree,
)

MANIFEST = "manifest-1654812109500"  # how the NBIA Data Retriever names the folder of one download


def nbia_download(download: Path, cases: list[Case], manifest: str = MANIFEST) -> Path:
    """<download>/manifest-<n>/CBIS-DDSM/<image folders>, with the two CSVs in the download folder (as the
    README asks)."""
    inner = write_nbia_tree(download / manifest, cases)
    for name in CSV_NAMES.values():
        shutil.move(str(inner / name), str(download / name))
    return download


@pytest.mark.parametrize("level", ["download", "manifest", "CBIS-DDSM"])
def test_every_level_of_an_nbia_download_is_a_root(tmp_path, level):
    cases = standard_cases()
    download = nbia_download(tmp_path / "download", cases)
    root = {"download": download, "manifest": download / MANIFEST,
            "CBIS-DDSM": download / MANIFEST / "CBIS-DDSM"}[level]
    arrays, report = load_cbis(settings_for(root))
    usable = [c for c in cases if not (c.missing or c.corrupt)]
    assert report["layout"] == "nbia" and arrays.image_ids == [c.image_id for c in usable]
    for case, mask in zip(usable, arrays.masks):
        np.testing.assert_array_equal(mask, widen(case.expected), err_msg=case.image_id)


def test_two_downloads_under_one_root_are_an_error_that_lists_both(tmp_path):
    download = nbia_download(tmp_path / "download", standard_cases())
    write_nbia_tree(download / "manifest-1700000000000", standard_cases()[:2])
    with pytest.raises(RealDataError, match=r"data\.real\.cbis_root") as error:
        load_cbis(settings_for(download))
    message = str(error.value)
    assert "2 folders" in message
    assert str(download / MANIFEST / "CBIS-DDSM") in message
    assert str(download / "manifest-1700000000000" / "CBIS-DDSM") in message


# ------------------------------------------------------------------------------------- damaged description CSVs
def record_starts(raw: bytes) -> list[int]:
    """Byte offsets where the records of a real description CSV start (each ends in '.dcm\\n"\\r\\n')."""
    ends = [match.end() for match in re.finditer(rb'"\r\n', raw)]
    return [raw.index(b"\r\n") + 2] + ends[:-1]


def line_of(raw: bytes, offset: int) -> int:
    return raw[:offset].count(b"\n") + 1


def damaged_copy(tmp_path: Path, damage) -> tuple[Path, int]:
    raw = (DATA / CSV_NAMES["train"]).read_bytes()
    starts = record_starts(raw)
    assert len(starts) == 1318
    broken, record = damage(raw, starts)
    path = tmp_path / CSV_NAMES["train"]
    path.write_bytes(broken)
    return path, line_of(raw, starts[record])


def truncated_inside_a_cell(raw, starts):
    return raw[:starts[701] - 8], 700  # the download stopped inside record 701's quoted ROI mask path


def truncated_at_a_row(raw, starts):
    return raw[:starts[900]] + raw[starts[900]:starts[901]].split(b",")[0] + b",3,LEFT\r\n", 900


def cells_lost(raw, starts):
    record = raw[starts[41]:starts[42]]
    return raw[:starts[41]] + record.replace(b",", b"", 3) + raw[starts[42]:], 41


def not_text(raw, starts):
    return raw[:starts[1200] + 20] + b"\xff\xfe\x00" + raw[starts[1200] + 23:], 1200


@pytest.mark.parametrize("damage", [truncated_inside_a_cell, truncated_at_a_row, cells_lost, not_text])
def test_a_damaged_csv_is_an_error_naming_the_file_and_the_line(tmp_path, damage):
    path, line = damaged_copy(tmp_path, damage)
    with pytest.raises(RealDataError) as error:
        read_mass_csv(path, "train")
    message = str(error.value)
    assert message.startswith(f"{path}, line {line}:"), message
    assert "\n" not in message


def test_the_line_numbers_count_the_newline_inside_the_roi_cell(tmp_path):
    raw = (DATA / CSV_NAMES["train"]).read_bytes()
    assert [line_of(raw, offset) for offset in record_starts(raw)[:3]] == [2, 4, 6]


# ------------------------------------------------------------------------------------ an empty train/test CSV
def header_only(root: Path, split: str) -> Path:
    path = root / CSV_NAMES[split]
    path.write_text(",".join(HEADER) + "\r\n")
    return path


def test_a_header_only_csv_is_an_error_under_the_official_split(tmp_path):
    root = write_uid_tree(tmp_path / "cbis", standard_cases())
    path = header_only(root, "test")
    with pytest.raises(RealDataError, match="no mass rows") as error:
        load_cbis(settings_for(root, split="official"))
    assert str(error.value).startswith(str(path)) and "official" in str(error.value)


@pytest.mark.parametrize("split", ["random", "random_by_patient"])
def test_a_header_only_csv_is_a_warning_under_a_random_split(tmp_path, split):
    root = write_uid_tree(tmp_path / "cbis", standard_cases())
    path = header_only(root, "train")
    arrays, report = load_cbis(settings_for(root, split=split))
    assert arrays.image_ids == ["Mass-Test_P_00003_LEFT_CC", "Mass-Test_P_00004_RIGHT_CC"]
    (warning,) = report["warnings"]
    assert warning.startswith(str(path)) and "no mass rows" in warning and split in warning


def test_complete_csvs_give_no_warning(tmp_path):
    _, report = load_cbis(settings_for(write_uid_tree(tmp_path / "cbis", standard_cases()), split="official"))
    assert report["warnings"] == []


# ------------------------------------------------------------------------------ masks outside the breast crop
def cases_with_a_mass_beside_the_breast() -> list[Case]:
    cases = standard_cases()[:2]
    # top right corner of a LEFT breast's image: outside the half-ellipse (see test_real_cbis.mammogram)
    cases[0].masses[0].mask = block(0, 3, 27, 32)
    return cases


@pytest.mark.parametrize("policy", ["uncropped", "skip"])
def test_masks_outside_the_crop_are_counted_listed_and_handled(tmp_path, policy):
    cases = cases_with_a_mass_beside_the_breast()
    root = write_uid_tree(tmp_path / "cbis", cases)
    arrays, report = load_cbis(settings_for(root, breast_crop=True, mask_outside_crop=policy))
    outside = report["mask_outside_crop"]
    assert outside == {"images": 1, "action": policy, "listed": [cases[0].image_id]}
    if policy == "skip":
        assert arrays.image_ids == [cases[1].image_id]
        (skip,) = report["skipped"]
        assert skip["item"] == cases[0].image_id and "outside the breast crop" in skip["reason"]
        return
    assert arrays.image_ids == [c.image_id for c in cases]
    assert arrays.extra["crop_box"][0] == "0 64 0 32"  # kept whole
    assert arrays.extra["crop_box"][1] == arrays.extra["breast_box"][1] != "0 64 0 32"  # cropped as found
    assert arrays.extra["mask_outside_crop"][0] > 0 and arrays.extra["mask_outside_crop"][1] == 0
    np.testing.assert_array_equal(arrays.masks[0], widen(cases[0].expected))  # nothing cut off
