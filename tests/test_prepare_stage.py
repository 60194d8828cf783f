"""The prepare stage on both sources writes the same prepared format (real: on small format fixtures)."""
import json

import pandas as pd
import pytest
import yaml

from benchmark.config import ConfigError
from benchmark.data.prepare import main as prepare_main
from benchmark.data.prepared import load_prepared
from tests.conftest import tiny_params
from tests.test_real_cbis import EXACT, S, standard_cases, write_uid_tree
from tests.test_real_inbreast import write_inbreast_tree


def run_prepare(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    prepare_main(["--params", str(path), "--out", str(tmp_path / "prepared"),
                  "--preview", str(tmp_path / "preview.png")])
    return load_prepared(tmp_path / "prepared")


@pytest.mark.parametrize("split", ["random", "random_by_patient", "official"])
def test_real_source_through_the_stage(tmp_path, split):
    cbis_root = write_uid_tree(tmp_path / "cbis", standard_cases())
    write_inbreast_tree(tmp_path / "inbreast")
    params = tiny_params(image_size=S)
    params["data"].update(source="real", split=split, preprocess={**params["data"]["preprocess"], **EXACT})
    params["data"]["real"].update(cbis_root=str(cbis_root), inbreast_root=str(tmp_path / "inbreast"), workers=1)
    data = run_prepare(tmp_path, params)
    manifest = data.manifest
    cbis = manifest[manifest.domain == "cbis"]
    assert set(manifest[manifest.domain == "inbreast"].split) == {"test"}
    assert {"official_split", "mask_resized", "original_path"} <= set(manifest.columns)
    if split == "official":
        pd.testing.assert_series_equal(cbis.split, cbis.official_split, check_names=False)
    report = json.loads((tmp_path / "prepared" / "prepare_report.json").read_text())
    assert report["split"]["kind"] == split and report["split"]["breast"] == "patient_id + laterality"
    assert report["split"]["test_images"] == (cbis.split == "test").sum()
    assert (tmp_path / "preview.png").stat().st_size > 1000
    assert data.arrays["cbis"]["images"].shape[1:] == (S, S)


def test_unknown_source_is_a_config_error(tmp_path):
    params = tiny_params()
    params["data"]["source"] = "kaggle"
    with pytest.raises(ConfigError, match=r"data.source = \"kaggle\": must be one of synthetic, real"):
        run_prepare(tmp_path, params)


def test_an_unknown_split_fails_before_any_data_is_read(tmp_path):
    params = tiny_params()
    params["data"].update(source="real", split="patient")
    params["data"]["real"].update(cbis_root=str(tmp_path / "nowhere"), inbreast_root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r'data\.split = "patient": must be one of random, random_by_patient, '
                                          r'official'):
        run_prepare(tmp_path, params)
    assert not (tmp_path / "prepared").exists()


def test_same_inputs_give_byte_identical_prepared_files(tmp_path):
    """Everything downstream depends on data/prepared: re-running the stage must not invalidate it."""
    params = tiny_params()
    outputs = []
    for attempt in ("first", "second"):
        (tmp_path / attempt).mkdir()
        run_prepare(tmp_path / attempt, params)
        outputs.append({path.name: path.read_bytes() for path in sorted((tmp_path / attempt / "prepared").iterdir())})
    assert outputs[0].keys() == outputs[1].keys() and outputs[0] == outputs[1]


def test_extra_test_images_join_the_test_split_and_change_no_training_image(tmp_path):
    """data.synthetic.extra_cbis_test grows the CBIS-like test split (the paper's 318 test images) while the drawn
    images keep their pixels, their split and their strong-label order: every training stays bit-identical."""
    (tmp_path / "without").mkdir()
    (tmp_path / "with").mkdir()
    without = run_prepare(tmp_path / "without", tiny_params(n_cbis=20, n_inbreast=6))
    grown = run_prepare(tmp_path / "with", tiny_params(n_cbis=20, n_inbreast=9, extra_cbis_test=7))
    old, new = without.manifest.set_index("image_id"), grown.manifest.set_index("image_id")
    drawn = old.index[old["domain"] == "cbis"]
    assert (new.loc[drawn, ["split", "strong_rank"]] == old.loc[drawn, ["split", "strong_rank"]]).all().all()
    extra = new.index[(new["domain"] == "cbis") & ~new.index.isin(drawn)]
    assert len(extra) == 7 and (new.loc[extra, "split"] == "test").all() and (new.loc[extra, "strong_rank"] == -1).all()
    assert new.loc[extra, "test_only"].all() and not new.loc[drawn, "test_only"].any()
    counts = new.groupby(["domain", "split"]).size().to_dict()
    assert counts == {("cbis", "test"): 4 + 7, ("cbis", "train"): 16, ("inbreast", "test"): 9}
    for domain, n in (("cbis", 20), ("inbreast", 6)):
        for key in ("images", "masks", "boxes"):
            assert (grown.arrays[domain][key][:n] == without.arrays[domain][key]).all()
