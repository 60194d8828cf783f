"""data.split: the image-level random split, the split over breasts, and the same-breast count."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.config import ConfigError
from benchmark.data.prepared import DomainArrays, assign_split_and_rank, write_prepared
from benchmark.data.real.cbis_ddsm import CSV_NAMES, group_by_image, read_mass_csv
from benchmark.data.splits import check_split, same_breast_leaks
from tests.test_real_cbis import DATA


def cbis_manifest(views: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(patient, side, view) per CBIS image, plus two INbreast images without patient metadata."""
    rows = [{"image_id": f"{p}_{s}_{v}", "domain": "cbis", "patient_id": p, "laterality": s} for p, s, v in views]
    rows += [{"image_id": f"INbreast_{k}", "domain": "inbreast", "patient_id": None, "laterality": "L"}
             for k in range(2)]
    return pd.DataFrame(rows)


def brute_force_leaks(manifest: pd.DataFrame) -> int:
    """Test CBIS images whose patient and side also appear among the training images, pair by pair."""
    cbis = manifest[manifest.domain == "cbis"]
    train = [(r.patient_id, r.laterality) for r in cbis.itertuples() if r.split == "train"]
    return sum((r.patient_id, r.laterality) in train for r in cbis.itertuples() if r.split == "test")


def many_breasts(n_patients: int = 150) -> list[tuple[str, str, str]]:
    """Most breasts with CC and MLO, every fifth patient with both sides, every seventh breast one view only."""
    views = []
    for p in range(n_patients):
        for side in ("L", "R") if p % 5 == 0 else ("L" if p % 2 else "R",):
            views += [(f"P_{p:05d}", side, "CC")] + ([] if p % 7 == 3 else [(f"P_{p:05d}", side, "MLO")])
    return views


def test_the_count_on_a_fixture_with_known_pairs():
    manifest = cbis_manifest([
        ("P1", "L", "CC"), ("P1", "L", "MLO"),  # split across: the test CC leaks
        ("P2", "R", "CC"), ("P2", "R", "MLO"),  # both test: no leak
        ("P3", "L", "CC"), ("P3", "L", "MLO"),  # split across: the test MLO leaks
        ("P4", "L", "CC"), ("P4", "R", "CC"),   # two breasts of one patient: not the same breast
        ("P5", "R", "MLO"),                     # a single view, test
    ])
    manifest["split"] = ["test", "train", "test", "test", "train", "test", "test", "train", "test", "test", "test"]
    leaks = same_breast_leaks(manifest)
    assert leaks["test_images_with_breast_in_train"] == 2 == brute_force_leaks(manifest)
    assert leaks["examples"] == ["P1_L_CC", "P3_L_MLO"]
    assert (leaks["test_images"], leaks["test_breasts"]) == (6, 5)
    assert leaks["breast"] == "patient_id + laterality"


def test_the_image_level_random_split_puts_views_of_one_breast_on_both_sides():
    manifest = assign_split_and_rank(cbis_manifest(many_breasts()), 2024, 0.2, "random")
    expected = brute_force_leaks(manifest)
    assert expected > 10  # with ~2 views per breast, about 4 in 5 test images have their twin in training
    assert same_breast_leaks(manifest)["test_images_with_breast_in_train"] == expected


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_random_by_patient_puts_no_breast_on_both_sides(seed):
    views = many_breasts()
    manifest = assign_split_and_rank(cbis_manifest(views), seed, 0.2, "random_by_patient")
    cbis = manifest[manifest.domain == "cbis"]
    sides = cbis.groupby(["patient_id", "laterality"])["split"].nunique()
    assert (sides == 1).all()
    assert brute_force_leaks(manifest) == 0 == same_breast_leaks(manifest)["test_images_with_breast_in_train"]
    n_breasts = len({(p, s) for p, s, _ in views})
    assert cbis[cbis.split == "test"].groupby(["patient_id", "laterality"]).ngroups == round(0.2 * n_breasts)
    assert set(manifest[manifest.domain == "inbreast"].split) == {"test"}
    train = manifest.split == "train"
    assert sorted(manifest.strong_rank[train]) == list(range(train.sum()))
    assert (manifest.strong_rank[~train] == -1).all()


def test_on_the_real_cbis_csvs():
    """The 1592 CBIS-DDSM images by patient and side, as the loader reads them (no pixels needed)."""
    rows = read_mass_csv(DATA / CSV_NAMES["train"], "train") + read_mass_csv(DATA / CSV_NAMES["test"], "test")
    views = [(g[0].patient_id, g[0].laterality[:1], g[0].view) for g in group_by_image(rows).values()]
    assert len(views) == 1592
    paired = pd.DataFrame(views).groupby([0, 1]).size()
    assert (paired >= 2).sum() > 500  # most breasts have a CC and an MLO image
    random = assign_split_and_rank(cbis_manifest(views), 2024, 0.2, "random")
    by_breast = assign_split_and_rank(cbis_manifest(views), 2024, 0.2, "random_by_patient")
    assert same_breast_leaks(random)["test_images_with_breast_in_train"] == brute_force_leaks(random) > 100
    assert same_breast_leaks(by_breast)["test_images_with_breast_in_train"] == 0


def test_without_patient_metadata_both_random_kinds_are_the_same_draw():
    frame = pd.DataFrame({"image_id": [f"synthetic_{k:04d}" for k in range(50)], "domain": "cbis"})
    random = assign_split_and_rank(frame, 7, 0.2, "random")
    by_breast = assign_split_and_rank(frame, 7, 0.2, "random_by_patient")
    pd.testing.assert_frame_equal(random, by_breast)
    assert same_breast_leaks(random)["breast"] == "the image itself (no patient metadata)"


def test_the_split_and_its_count_are_in_the_prepare_report(tmp_path):
    views = many_breasts(20)
    n = len(views)
    rng = np.random.default_rng(0)
    cbis = DomainArrays(rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), np.ones((n, 8, 8), np.uint8),
                        [f"{p}_{s}_{v}" for p, s, v in views], "fixture",
                        {"patient_id": [p for p, _, _ in views], "laterality": [s for _, s, _ in views]})
    inbreast = DomainArrays(np.zeros((2, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8), ["a", "b"], "fixture")
    for kind in ("random", "random_by_patient"):
        manifest = write_prepared(tmp_path / kind, {"cbis": cbis, "inbreast": inbreast}, split_seed=3,
                                  test_fraction=0.2, split=kind)
        split = json.loads((tmp_path / kind / "prepare_report.json").read_text())["split"]
        assert split["kind"] == kind and split["seed"] == 3
        assert split["test_images"] == int(((manifest.domain == "cbis") & (manifest.split == "test")).sum())
        assert split["test_images_with_breast_in_train"] == brute_force_leaks(manifest)
    assert split["test_images_with_breast_in_train"] == 0


def test_an_unknown_split_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"data\.split must be one of random, random_by_patient, official"):
        check_split("by_patient")
