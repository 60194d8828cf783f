"""INbreast loader: fixtures in the real layout (DICOM + plist XML + semicolon CSV), and the real XML samples."""
from __future__ import annotations

import json
import plistlib
from pathlib import Path

import numpy as np
import pytest

from benchmark.data.prepared import load_prepared, write_prepared
from benchmark.data.real import RealDataError, load_real_domains
from benchmark.data.real.dicomio import write_dicom
from benchmark.data.real.inbreast import fill_polygon, load_inbreast, read_inbreast_csv, read_rois
from benchmark.data.real.settings import real_settings
from tests.conftest import real_samples

H, W, S = 64, 32, 64  # fixture rows x cols; prepared side (nearest resize doubles every column)
EXACT = {"breast_crop": False, "flip_to_left": False, "clip_percentiles": [0, 100]}
CSV_HEADER = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"


def inbreast_samples() -> Path:
    return real_samples("inbreast/AllXML", missing="INbreast real samples not available (restricted licence: never "
                                                   "copied into the repository)")


def inside_by_ray_casting(points: np.ndarray, shape) -> np.ndarray:
    """Independent reference: pixel centres inside the polygon by the classic crossing-number test."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    inside = np.zeros(shape, dtype=bool)
    xs, ys = points[:, 0], points[:, 1]
    for i in range(len(points)):
        xi, yi, xj, yj = xs[i], ys[i], xs[i - 1], ys[i - 1]
        crosses = (yi > rows) != (yj > rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (xj - xi) * (rows - yi) / (yj - yi) + xi
        inside ^= crosses & (cols < at)
    return inside


def shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def roi(name: str, points: list[tuple[float, float]]) -> dict:
    """One ROI as the INbreast plists write it (Point_px strings "(x, y)", x = column)."""
    return {
        "Area": 0.0, "Center": "(0.000000, 0.000000, 0.000000)", "Dev": 0.0, "IndexInImage": 0, "Max": 0.0,
        "Mean": 0.0, "Min": 0.0, "Name": name, "NumberOfPoints": len(points),
        "Point_mm": ["(0.000000, 0.000000, 0.000000)"] * len(points),
        "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points], "Total": 0.0, "Type": 15 if len(points) > 1 else 19,
    }


RECTANGLE = [(9.5, 4.5), (20.5, 4.5), (20.5, 16.5), (9.5, 16.5)]  # pixel centres rows 5..16, cols 10..20
TRIANGLE = [(3.3, 30.2), (27.8, 35.6), (12.4, 58.9)]
POINT = [(25.2, 10.7)]  # a one-point Mass: no area, dropped and listed in the report


def rectangle_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[5:17, 10:21] = True
    return mask


def write_inbreast_tree(root: Path) -> dict[str, np.ndarray]:
    """Six cases: mass + calcification + cluster; triangle + one-point mass (dropped); calcification only;
    DICOM without XML; XML without DICOM; corrupt DICOM. Returns the expected mask per file name."""
    (root / "AllDICOMs").mkdir(parents=True)
    (root / "AllXML").mkdir()
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        # 14 bits stored in 16: a smooth ramp with some noise, as a picture is (random pixels are refused)
        ramp = np.add.outer(np.linspace(0, 12000, H), np.linspace(0, 3000, W))
        return (ramp + rng.integers(0, 256, (H, W))).astype(np.uint16)

    files = {"22678622": ("R", "CC"), "22678646": ("L", "CC"), "22678670": ("R", "ML"), "22678694": ("L", "ML"),
             "50997461": ("R", "CC")}
    for name, (side, view) in files.items():
        path = root / "AllDICOMs" / f"{name}_{rng.integers(1 << 60):016x}_MG_{side}_{view}_ANON.dcm"
        if name == "50997461":
            path.write_bytes(b"DICM but not really")
        else:
            write_dicom(path, image(), laterality=side)
    xmls = {
        "22678622": [roi("Mass", RECTANGLE), roi("Calcification", [(3.0, 3.0)]),
                     roi("Cluster", [(1.0, 40.0), (30.0, 40.0), (30.0, 60.0)])],
        "22678646": [roi("Mass", TRIANGLE), roi("Mass", POINT)],
        "22678670": [roi("Calcification", [(5.0, 5.0)])],
        "99999999": [roi("Mass", RECTANGLE)],
        "50997461": [roi("Mass", RECTANGLE)],
    }
    for name, rois in xmls.items():
        document = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
        (root / "AllXML" / f"{name}.xml").write_bytes(plistlib.dumps(document))
    rows = ["removed;removed;R;CC;201001;22678622;4;4c", "removed;removed;L;CC;201001;22678646;" + " " * 60 + ";1",
            "removed;removed;R;MLO;201001;22678670;2;2", "removed;removed;L;MLO;201001;22678694;2;1"]
    (root / "INbreast.csv").write_bytes(("\r\n".join([CSV_HEADER] + rows) + "\r\n").encode())
    triangle = inside_by_ray_casting(np.array(TRIANGLE), (H, W))
    return {"INbreast_22678622": rectangle_mask(), "INbreast_22678646": triangle}


def settings_for(root: Path, workers: int = 1):
    return real_settings({"image_size": S, "preprocess": EXACT, "real": {
        "cbis_root": str(root), "inbreast_root": str(root), "cbis_layout": "auto", "workers": workers}})


def test_mass_polygons_are_filled_pixel_for_pixel(tmp_path):
    expected = write_inbreast_tree(tmp_path / "inbreast")
    arrays, report = load_inbreast(settings_for(tmp_path / "inbreast"))
    assert arrays.image_ids == list(expected)
    assert arrays.source == "INbreast" and arrays.images.shape == (2, S, S)
    for mask, want in zip(arrays.masks, expected.values()):
        np.testing.assert_array_equal(mask, np.repeat(want, S // W, axis=1))
    assert arrays.extra["n_masses"] == [1, 1]
    assert arrays.extra["laterality"] == ["R", "L"] and arrays.extra["view"] == ["CC", "CC"]
    assert arrays.extra["acr"] == ["4", None]  # the blank padded ACR cell
    assert arrays.extra["birads"] == ["4c", "1"]


def test_report_lists_every_skipped_file_with_its_reason(tmp_path):
    write_inbreast_tree(tmp_path / "inbreast")
    _, report = load_inbreast(settings_for(tmp_path / "inbreast"))
    assert {k: report[k] for k in ("dicoms", "xmls", "images", "masses", "xml_without_mass", "dicoms_without_xml")} == {
        "dicoms": 5, "xmls": 5, "images": 2, "masses": 2, "xml_without_mass": 1, "dicoms_without_xml": 1}
    assert [(r["item"], r["points"]) for r in report["mass_rois_without_area"]] == [("22678646", 1)]
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert reasons["22678670"] == "no Mass ROI (ROIs: Calcification)"
    assert "no AllDICOMs/99999999_*.dcm" in reasons["99999999"]
    assert "unreadable" in reasons["50997461"]
    json.dumps(report)


def test_view_falls_back_to_the_file_name_and_ml_means_mlo(tmp_path):
    write_inbreast_tree(tmp_path / "inbreast")
    (tmp_path / "inbreast" / "INbreast.csv").unlink()
    xml = tmp_path / "inbreast" / "AllXML" / "22678670.xml"
    xml.write_bytes(plistlib.dumps({"Images": [{"ROIs": [roi("Mass", RECTANGLE)]}]}))
    arrays, report = load_inbreast(settings_for(tmp_path / "inbreast"))
    assert report["csv"] is None
    assert arrays.extra["view"][arrays.image_ids.index("INbreast_22678670")] == "MLO"


def test_fill_polygon_matches_ray_casting_on_a_concave_polygon():
    star = np.array([(16 + r * np.cos(t), 20 + r * np.sin(t)) for t, r in
                     zip(np.linspace(0, 2 * np.pi, 14, endpoint=False), [14.2, 5.1] * 7)])
    mask = np.zeros((40, 32), dtype=np.uint8)
    fill_polygon(mask, star)
    np.testing.assert_array_equal(mask.astype(bool), inside_by_ray_casting(star, mask.shape))


def test_two_points_mark_the_points_and_outside_points_are_clipped():
    mask = np.zeros((10, 10), dtype=np.uint8)
    fill_polygon(mask, np.array([(2.2, 3.9), (40.0, -5.0)]))
    assert set(zip(*np.nonzero(mask))) == {(4, 2), (0, 9)}


def test_missing_or_wrong_root_names_the_key(tmp_path):
    with pytest.raises(RealDataError, match=r"data\.real\.inbreast_root.*does not exist.*AllDICOMs"):
        load_inbreast(settings_for(tmp_path / "nowhere"))
    (tmp_path / "wrong").mkdir()
    with pytest.raises(RealDataError, match=r"data\.real\.inbreast_root = .*wrong: no AllDICOMs/"):
        load_inbreast(settings_for(tmp_path / "wrong"))


def test_no_mass_anywhere_is_an_error(tmp_path):
    write_inbreast_tree(tmp_path / "inbreast")
    for name in ("22678622", "22678646", "99999999", "50997461"):
        (tmp_path / "inbreast" / "AllXML" / f"{name}.xml").unlink()
    with pytest.raises(RealDataError, match="zero usable images"):
        load_inbreast(settings_for(tmp_path / "inbreast"))


def test_load_real_domains_feeds_write_prepared(tmp_path):
    from test_real_cbis import standard_cases, write_uid_tree  # the CBIS fixture, shared on purpose

    write_uid_tree(tmp_path / "cbis", standard_cases())
    write_inbreast_tree(tmp_path / "inbreast")
    data = {"source": "real", "image_size": S, "preprocess": EXACT, "real": {
        "cbis_root": str(tmp_path / "cbis"), "inbreast_root": str(tmp_path / "inbreast"), "workers": 1}}
    domains, report = load_real_domains(data)
    assert (domains["cbis"].source, domains["inbreast"].source) == ("CBIS-DDSM", "INbreast")
    assert report["cbis"]["images"] == 4 and report["inbreast"]["images"] == 2
    assert len(report["skipped"]) == 2 + 3
    manifest = write_prepared(tmp_path / "prepared", domains, split_seed=0, test_fraction=0.25,
                              split="official", report=report)
    cbis = manifest[manifest["domain"] == "cbis"]
    assert list(cbis["split"]) == ["train", "train", "test", "test"]
    assert (manifest.loc[manifest["domain"] == "inbreast", "split"] == "test").all()
    prepared = load_prepared(tmp_path / "prepared")
    np.testing.assert_array_equal(prepared.arrays["inbreast"]["masks"], domains["inbreast"].masks)


def test_load_real_domains_checks_the_inbreast_root_before_decoding_cbis(tmp_path):
    from test_real_cbis import standard_cases, write_uid_tree

    write_uid_tree(tmp_path / "cbis", standard_cases())
    data = {"image_size": S, "real": {"cbis_root": str(tmp_path / "cbis"), "inbreast_root": str(tmp_path / "no")}}
    with pytest.raises(RealDataError, match=r"data\.real\.inbreast_root"):
        load_real_domains(data)


# --------------------------------------------------------------------------------- the real INbreast samples
def test_real_xml_masses_match_the_shoelace_area():
    samples = inbreast_samples()
    masses = 0
    for xml in sorted((samples / "inbreast" / "AllXML").glob("*.xml")):
        for name, points in read_rois(xml):
            if name != "Mass":
                continue
            masses += 1
            mask = np.zeros((4084, 3328), dtype=np.uint8)  # the larger INbreast size; the XML holds none
            fill_polygon(mask, points)
            area = shoelace(points)
            assert mask.sum() > 0
            assert abs(mask.sum() - area) <= 0.01 * area, (xml.name, int(mask.sum()), area)
    assert masses == 5


def test_real_inbreast_csv_parses():
    path = inbreast_samples() / "INbreast.csv"
    if not path.is_file():
        pytest.skip("INbreast.csv sample not available")
    table = read_inbreast_csv(path)
    assert len(table) == 410
    assert sum(row["acr"] is None for row in table.values()) == 1
    assert {row["view"] for row in table.values()} >= {"CC", "MLO", "FB"}
    assert {"4a", "4b", "4c"} <= {row["birads"] for row in table.values()}


def test_comma_decimal_points_read_as_the_same_outline(tmp_path):
    """A plist written under a comma-decimal locale: '(9,500000, 4,500000)' was read as (9, 500000), outside."""
    write_inbreast_tree(tmp_path / "inbreast")
    xml = tmp_path / "inbreast" / "AllXML" / "22678622.xml"
    rectangle = roi("Mass", RECTANGLE)
    rectangle["Point_px"] = [f"({x:.6f}, {y:.6f})".replace(".", ",") for x, y in RECTANGLE]
    xml.write_bytes(plistlib.dumps({"Images": [{"ROIs": [rectangle]}]}))
    (name, points), = read_rois(xml)
    np.testing.assert_array_equal(points, np.array(RECTANGLE))
    arrays, _ = load_inbreast(settings_for(tmp_path / "inbreast"))
    np.testing.assert_array_equal(arrays.masks[0], np.repeat(rectangle_mask(), S // W, axis=1))


@pytest.mark.parametrize("text", ["(1,5,2,5)", "(abc, 3)", "(7)"])
def test_a_point_that_is_no_point_names_its_xml(tmp_path, text):
    write_inbreast_tree(tmp_path / "inbreast")
    xml = tmp_path / "inbreast" / "AllXML" / "22678622.xml"
    broken = roi("Mass", RECTANGLE)
    broken["Point_px"][1] = text
    xml.write_bytes(plistlib.dumps({"Images": [{"ROIs": [broken]}]}))
    _, report = load_inbreast(settings_for(tmp_path / "inbreast"))
    (entry,) = [s for s in report["skipped"] if s["item"] == "22678622"]
    assert entry["path"] == str(xml) and f"not a point (x, y): {text!r}" in entry["reason"]


def test_a_mass_of_two_points_is_no_outline(tmp_path):
    write_inbreast_tree(tmp_path / "inbreast")
    xml = tmp_path / "inbreast" / "AllXML" / "22678622.xml"
    xml.write_bytes(plistlib.dumps({"Images": [{"ROIs": [roi("Mass", [(2.0, 3.0), (20.0, 30.0)])]}]}))
    _, report = load_inbreast(settings_for(tmp_path / "inbreast"))
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert reasons["22678622"] == "no Mass ROI with an area: 1 of fewer than 3 points"


def test_an_all_zero_dicom_is_skipped_with_its_path(tmp_path):
    write_inbreast_tree(tmp_path / "inbreast")
    (path,) = (tmp_path / "inbreast" / "AllDICOMs").glob("22678622_*.dcm")
    write_dicom(path, np.zeros((H, W), np.uint16), laterality="R")
    arrays, report = load_inbreast(settings_for(tmp_path / "inbreast"))
    assert arrays.image_ids == ["INbreast_22678646"]
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert reasons["22678622"] == f"{path}: every pixel is 0: no image"
