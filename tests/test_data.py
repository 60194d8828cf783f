"""Prepared format: persisted split, nested strong subsets, boxes, atomic output."""
import numpy as np
import pandas as pd
import pytest

from benchmark.data.prepared import DomainArrays, assign_split_and_rank, load_prepared, write_prepared


def test_split_is_persisted_and_disjoint(tiny_data, tiny_prepared):
    manifest = tiny_data.manifest
    assert set(manifest[manifest.domain == "inbreast"].split) == {"test"}
    cbis = manifest[manifest.domain == "cbis"]
    assert (cbis.split == "test").sum() == round(0.2 * len(cbis))
    assert set(manifest.image_id[manifest.split == "train"]).isdisjoint(manifest.image_id[manifest.split == "test"])
    # same seed, same split and strong order; another seed, another
    again = assign_split_and_rank(manifest.drop(columns=["split", "strong_rank"]), 2024, 0.2)
    pd.testing.assert_series_equal(again["split"], manifest["split"], check_names=False)
    assert np.array_equal(again["strong_rank"], manifest["strong_rank"])
    other = assign_split_and_rank(manifest.drop(columns=["split", "strong_rank"]), 1, 0.2)
    assert not np.array_equal(other["strong_rank"], manifest["strong_rank"])


def test_strong_subsets_are_nested(tiny_data):
    previous = set()
    for fraction in (0.0, 0.075, 0.1, 0.2, 0.5, 1.0):
        strong, weak = tiny_data.strong_and_weak(fraction)
        n_train = (tiny_data.manifest.split == "train").sum()
        assert len(strong) == round(fraction * n_train) and len(strong) + len(weak) == n_train
        assert previous <= set(strong), f"strong set at {fraction} must contain the smaller budgets' sets"
        previous = set(strong)
    test_index = tiny_data.rows("cbis", "test")["index"]
    assert previous.isdisjoint(test_index)


def test_manifest_boxes_match_arrays(tiny_data):
    for row in tiny_data.manifest.itertuples():
        arrays = tiny_data.arrays[row.domain]
        assert arrays["boxes"][row.index].sum() == row.box_area
        assert arrays["masks"][row.index].sum() == row.mask_area
        ys, xs = np.nonzero(arrays["boxes"][row.index])
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (row.box_x0, row.box_y0, row.box_x1, row.box_y1)


def test_zero_images_is_an_error_and_writes_nothing(tmp_path):
    empty = DomainArrays(np.zeros((0, 8, 8), np.uint8), np.zeros((0, 8, 8), np.uint8), [], "x")
    one = DomainArrays(np.zeros((1, 8, 8), np.uint8), np.ones((1, 8, 8), np.uint8), ["a"], "x")
    with pytest.raises(ValueError, match="zero usable images"):
        write_prepared(tmp_path / "out", {"cbis": one, "inbreast": empty}, split_seed=0, test_fraction=0.2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="dvc repro prepare"):
        load_prepared(tmp_path / "out")
