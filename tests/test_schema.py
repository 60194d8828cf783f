"""The params.yaml schema (benchmark/config.py): every key, both sides of every bound, one line per violation.

Each case edits the repository's params.yaml, writes it to a file and reads it with `load_params`, as
every stage does first; a refused value must give a ConfigError of one line per violation that names
the file, the key, the value and what is allowed.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from benchmark.config import ConfigError, RunSpec, load_params
from benchmark.training.train import train_run
from tests.conftest import REPO, edited_params

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
SECTIONS = ("data", "model", "train", "evaluate", "report", "launch")
SEED_MAX = 2**32 - 1  # numpy's global seeding takes 32-bit seeds


def leaves(tree: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += leaves(value, f"{prefix}{key}.")
        else:
            found.append(prefix + key)
    return found


LEAVES = leaves({key: PARAMS[key] for key in SECTIONS}) + ["seeds"]


def value_at(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def edited(edits: dict, removed: tuple[str, ...] = ()) -> dict:
    return edited_params(PARAMS, edits, removed)


def load(tmp_path, params: dict) -> dict:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(path)


def refused(tmp_path, params: dict) -> list[str]:
    """The lines of the ConfigError, each checked to start with the file's name."""
    with pytest.raises(ConfigError) as error:
        load(tmp_path, params)
    lines = str(error.value).splitlines()
    assert lines and all(line.startswith(f"{tmp_path / 'params.yaml'}: ") for line in lines), lines
    return [line.split(": ", 1)[1] for line in lines]


def test_both_profiles_are_valid():
    for path in (REPO / "params.yaml", REPO / "profiles" / "paper.yaml"):
        assert set(load_params(path)) == {*SECTIONS, "seeds", "runs"}


@pytest.mark.parametrize("key", LEAVES)
def test_every_key_is_required(key, tmp_path):
    assert refused(tmp_path, edited({}, removed=(key,))) == [f"{key}: missing; it must be " +
                                                            refused_description(key, tmp_path)]


def refused_description(key: str, tmp_path) -> str:
    """What the schema says `key` must be, read from the error for a value of the wrong type."""
    (line,) = refused(tmp_path, edited({key: {"x": 1}}))
    return line.split(": must be ", 1)[1]


@pytest.mark.parametrize("key", LEAVES)
def test_every_key_refuses_a_value_of_the_wrong_type(key, tmp_path):
    (line,) = refused(tmp_path, edited({key: {"x": 1}}))
    assert line.startswith(f'{key} = {{"x": 1}}: must be ')
    allowed = line.split(": must be ", 1)[1]
    assert allowed and not allowed.startswith("a valid"), "the schema's own words, not pydantic's"


NUMERIC = [key for key in LEAVES if type(value_at(PARAMS, key)) in (int, float)]


@pytest.mark.parametrize("key", NUMERIC)
def test_numbers_refuse_booleans_and_text(key, tmp_path):
    """`strong_fraction: true` used to be 1.0, `"abc"` a ValueError naming no key."""
    for value, shown in ((True, "true"), ("abc", '"abc"')):
        (line,) = refused(tmp_path, edited({key: value}))
        assert line.startswith(f"{key} = {shown}: must be ")


@pytest.mark.parametrize("where", ["", *SECTIONS, "data.synthetic", "data.real", "data.preprocess", "runs.ours_10",
                                   "launch.local", "launch.slurm"])
def test_an_unknown_key_is_refused_with_the_keys_allowed_there(where, tmp_path):
    params = edited({})
    node = value_at(params, where) if where else params
    node["epoch"] = 3
    (line,) = refused(tmp_path, params)
    section = value_at(PARAMS, where) if where else PARAMS
    head, allowed = line.split(" takes: ", 1)
    assert head == f"{where + '.' if where else ''}epoch: unknown key; {where or 'the top level'}"
    assert allowed.endswith(" (a new key is declared in benchmark/config.py)")
    assert set(allowed.removesuffix(" (a new key is declared in benchmark/config.py)").split(", ")) == set(section) \
        - ({"epoch"} if where else set()) | ({"row", "seeds", "options"} if where == "runs.ours_10" else set())


FLAGS = ["data.preprocess.breast_crop", "data.preprocess.flip_to_left", "train.hflip", "train.vflip",
         "train.channels_last", "train.compile"]
# key: (allowed values, refused values); each bound appears with a value on either side of it
BOUNDS = {
    "data.source": (["synthetic", "real"], ["kaggle", "Synthetic"]),
    "data.image_size": ([32, 64, 352], [0, 1, -5, 31, 48, 100]),
    "data.split": (["random", "random_by_patient"], ["by_patient"]),
    "data.split_seed": ([0, SEED_MAX], [-1, SEED_MAX + 1]),
    "data.test_fraction": ([0.002, 0.5, 0.998], [0, 1, -0.1, 1.5]),
    "data.box_margin": ([0, 5], [-1, 1.5]),
    "data.real.cbis_root": (["~/x", "$DATA/CBIS"], [""]),
    "data.real.inbreast_root": (["~/y"], [""]),
    "data.real.cbis_layout": (["auto", "uid", "nbia", "kaggle"], ["dicom"]),
    "data.real.workers": ([0, 4], [-1]),
    "data.preprocess.mask_outside_crop": (["uncropped", "skip"], ["keep", True]),
    "data.preprocess.clip_percentiles": ([[0, 100], [0.5, 99.5], None], [[-1, 100], [0, 101], [50, 50], [60, 40],
                                                                          [10], [1, 2, 3]]),
    "data.synthetic.seed": ([0, SEED_MAX], [-1, SEED_MAX + 1]),
    "data.synthetic.n_cbis": ([5, 1000], [1, 0]),
    "data.synthetic.n_inbreast": ([1], [0]),
    "data.synthetic.extra_cbis_test": ([0, 218], [-1, 1.5]),
    "data.synthetic.supersample": ([1, 3], [0]),
    "data.synthetic.density_contrast": ([0, 3.5], [-0.1]),
    "data.synthetic.density_bias": ([-5, 0, 5], []),
    "data.synthetic.pectoral_probability": ([0, 1], [-0.01, 1.01]),
    "data.synthetic.spiculated_probability": ([0, 1], [-0.01, 1.01]),
    "data.synthetic.mass_area_min": ([0.0001, 0.03], [0, -0.01]),
    "data.synthetic.mass_area_max": ([0.005, 0.999], [1, 0]),
    "data.synthetic.edge_blur_min": ([0, 0.2], [-0.01]),
    "data.synthetic.edge_blur_max": ([0.08, 1.0], [-0.01]),
    "data.synthetic.mass_contrast_median": ([0.001], [0, -1]),
    "data.synthetic.film_grain": ([0], [-0.01]),
    "data.synthetic.photon_count": ([0.5, 400], [0]),
    "model.architecture": (["unet"], ["fpn"]),
    "model.encoder": (["resnet34"], [""]),
    "model.encoder_weights": ([None, "imagenet", "weights/resnet34.pth"], [""]),
    "model.decoder_channels": ([[1, 1, 1, 1, 1], [256, 128, 64, 32, 16]], [[0, 1, 1, 1, 1], [1, 1, 1, 1], [1] * 6]),
    "train.epochs": ([1, 50], [0, -1]),
    "train.batch_size": ([1, 8], [0]),
    "train.optimizer": (["adam"], ["sgd"]),
    "train.lr": ([1e-12, 1.0e6], [0, -1e-3]),
    "train.poly_power": ([0, 0.9], [-0.1]),
    "train.steps_per_epoch": (["all_train", "method"], ["all"]),
    "train.strong_share": ([0, 1, 0.5, "natural"], [-0.01, 1.5, "half", True]),
    "train.structure_window": (["scaled", 3, 31], ["auto", 1, 4, 2.5, True]),
    "train.divergence_factor": ([1.01, 100], [1, 0.5]),
    "train.device": (["auto", "cpu", "cuda", "cuda:0", "cuda:12"], ["gpu", "cuda:-1", "cuda:", "CPU", "cuda:x"]),
    "train.num_threads": ([0, 16], [-1]),
    "train.seed_workers": (["auto", 1, 3], [0, -1, "all", True, 1.5]),
    "train.precision": (["auto", "fp32", "bf16"], ["fp16"]),
    "train.deterministic": (["auto", True, False], ["yes", 1, None]),
    "train.checkpoint_dir": (["ck", "/tmp/ck"], [""]),
    "train.checkpoint_every_s": ([0, 0.5, 120], [-1, "often", True, None]),
    "evaluate.threshold": ([0.01, 0.99], [0, 1, 2.0]),
    "evaluate.batch_size": ([1], [0]),
    "evaluate.figure_examples": ([1, 3], [0]),
    "evaluate.figure_seed": ([0, SEED_MAX], [-1, SEED_MAX + 1]),
    "evaluate.protocol": (["threshold", "authors"], ["mdice", ""]),
    "seeds": ([[0], [SEED_MAX], [0, 1, 2]], [[-1], [SEED_MAX + 1], [], [0, 0], [1.5], [True]]),
    "runs.ours_10.method": (["strong_only"], ["nope", ""]),
    "runs.ours_10.strong_fraction": ([0, 0.075, 1], [-0.01, 1.01, True, "abc", None]),
    "runs.ours_10.row": (["Ours (again)"], [""]),
    "runs.ours_10.seeds": ([[3], [0, 1]], [[-1], [], [0, 0]]),
    "runs.ours_10.options": ([{}, {"spatial_prompt": False}], [None, [1]]),
    "report.reference_row": (["Ours"], [""]),
    "report.reference_strong": ([0, 100], [-1, 101]),
    "report.figure_seed": ([0], [-1]),
    "report.bootstrap_resamples": ([100, 10000], [99, 0]),
    "report.scale_study": ([None, "studies/scale/race.json"], ["", 3]),
    "launch.executor": (["local", "slurm"], ["pbs", ""]),
    "launch.logs": (["logs/launch"], [""]),
    "launch.max_requeues": ([0, 3], [-1]),
    "launch.poll_seconds": ([0.5, 10], [0, -1]),
    "launch.local.gpus": ([[], [0, 1]], [[-1], [0, 0], [1.5]]),
    "launch.local.per_gpu": ([1, 8], [0]),
    "launch.local.time_limit_min": ([1], [0]),
    "launch.slurm.partition": ([None, "gpu"], [""]),
    "launch.slurm.account": ([None, "lab"], [""]),
    "launch.slurm.gpus_per_job": ([0, 1], [-1]),
    "launch.slurm.cpus_per_job": ([1], [0]),
    "launch.slurm.mem_gb": ([None, 0.5, 64], [0, -1]),
    "launch.slurm.time_limit_min": ([1, 240], [0]),
    "launch.slurm.max_parallel": ([1], [0]),
    "launch.slurm.extra_sbatch": ([[], ["--qos=normal", "--exclusive", "#SBATCH --constraint=a100"]],
                                  [["qos=normal"], ["-q normal"], [""], [1]]),
    "launch.slurm.setup": ([[], ["module load cuda/12.4"]], [[""], [1]]),
    **{flag: ([True, False], ["true", 1]) for flag in FLAGS},
}
COMPANIONS = {  # edits that keep a rule between keys satisfied while one of them is at its bound
    "data.synthetic.n_cbis": {"data.test_fraction": 0.5},
    "data.synthetic.mass_area_min": {"data.synthetic.mass_area_max": 0.5},
    "data.synthetic.mass_area_max": {"data.synthetic.mass_area_min": 0.001},
    "data.synthetic.edge_blur_max": {"data.synthetic.edge_blur_min": 0.08},
}
CASES = [(key, value, True) for key, (good, _) in BOUNDS.items() for value in good] + \
        [(key, value, False) for key, (_, bad) in BOUNDS.items() for value in bad]


@pytest.mark.parametrize("key, value, allowed", CASES, ids=[f"{k}={json.dumps(v)}" for k, v, _ in CASES])
def test_both_sides_of_every_bound(key, value, allowed, tmp_path):
    params = edited({**COMPANIONS.get(key, {}), key: value})
    if allowed:
        assert value_at(load(tmp_path, params), key) == value
        return
    (line,) = refused(tmp_path, params)
    whole = f"{key} = {json.dumps(value)}: must be "
    element = re.match(rf"{re.escape(key)}\[(\d+)\] = (.+?): {re.escape(key)} must be ", line)
    assert line.startswith(whole) or (element and json.dumps(value[int(element[1])]) == element[2]), line


def test_every_key_has_a_bounds_case():
    run_keys = [f"runs.ours_10.{key}" for key in ("method", "strong_fraction", "row", "seeds", "options")]
    assert sorted(set(LEAVES) | set(run_keys)) == sorted(BOUNDS)


@pytest.mark.parametrize("edits, expected", [
    ({"data.test_fraction": 0.0005},
     "data.test_fraction = 0.0005: holds out 0 of the 500 CBIS-like images (synthetic.n_cbis); the test and the "
     "training split each need at least one image"),
    ({"data.test_fraction": 0.999}, "data.test_fraction = 0.999: holds out 500 of the 500 CBIS-like images"),
    ({"data.synthetic.mass_area_min": 0.05, "data.synthetic.mass_area_max": 0.01},
     "data.synthetic.mass_area_max = 0.01: must be >= mass_area_min (0.05)"),
    ({"data.synthetic.edge_blur_min": 0.3, "data.synthetic.edge_blur_max": 0.2},
     "data.synthetic.edge_blur_max = 0.2: must be >= edge_blur_min (0.3)"),
    ({"data.split": "official"}, "data.split = official: only the real CBIS-DDSM has an official split; use random"),
    ({"runs.a/b": {"method": "ours", "strong_fraction": 0.1}},
     "runs.a/b: the name \"a/b\" is not allowed; must be a run name of letters, digits, '_', '.', '-'"),
    ({"runs._x": {"method": "ours", "strong_fraction": 0.1}}, "runs._x: the name \"_x\" is not allowed"),
    ({"runs.ours_10.seeds": [0, 0]}, "runs.ours_10.seeds = [0, 0]: must be a non-empty list of distinct integers in "
                                     f"[0, {SEED_MAX}] (lists 0 more than once)"),
])
def test_rules_between_keys(edits, expected, tmp_path):
    (line,) = refused(tmp_path, edited(edits))
    assert line.startswith(expected), line


def test_the_official_split_and_a_dotted_run_name_are_fine_where_they_apply(tmp_path):
    params = load(tmp_path, edited({"data.source": "real", "data.split": "official",
                                    "runs.b-2_x": {"method": "ours", "strong_fraction": 0.1}}))
    assert params["data"]["split"] == "official"


def test_every_violation_is_its_own_line(tmp_path):
    lines = refused(tmp_path, edited({"train.epochs": 0, "train.batch_size": 0, "evaluate.threshold": 2.0,
                                      "runs.ours_10.strong_fraction": "abc"}))
    assert lines == ["train.epochs = 0: must be an integer >= 1", "train.batch_size = 0: must be an integer >= 1",
                     "evaluate.threshold = 2.0: must be a number in (0, 1)",
                     'runs.ours_10.strong_fraction = "abc": must be a number in [0, 1]']


def test_a_missing_section_lists_its_keys(tmp_path):
    params = edited({})
    del params["evaluate"]
    assert refused(tmp_path, params) == [
        "evaluate: missing; it must be a section with the keys threshold, batch_size, figure_examples, figure_seed, "
        "protocol"]


def test_yaml_numbers_are_read_as_dvc_reads_them(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-4 and 1.0e6 as text; DVC and YAML 1.2 read numbers."""
    text = (REPO / "params.yaml").read_text().replace("lr: 1.0e-3 ", "lr: 1e-4 ")
    assert "lr: 1e-4 " in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml")["train"]["lr"] == 1e-4
    (tmp_path / "params.yaml").write_text(text.replace("lr: 1e-4 ", 'lr: "1e-4" '))
    with pytest.raises(ConfigError, match=r'train.lr = "1e-4": must be a number > 0 \(quoted, so YAML reads it as '
                                          r'text\)$'):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_one_line_with_its_position(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError) as error:
        load_params(tmp_path / "params.yaml")
    assert str(error.value).startswith(f"{tmp_path / 'params.yaml'}: not valid YAML (line ")
    assert "\n" not in str(error.value)


def test_a_run_built_in_code_is_checked_like_a_params_entry(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    spec = RunSpec(name="t", method="strong_only", strong_fraction=1.5, seeds=(0,), row="Strong-Only")
    with pytest.raises(ConfigError, match=r"^params.yaml: runs.t.strong_fraction = 1.5: must be a number in \[0, 1\]$"):
        train_run(spec, params, prepared, tmp_path, show_progress=False)
    assert not (tmp_path / "t").exists()


def test_validation_needs_no_torch():
    """prepare and report check params.yaml too; finding the method files must not import the methods."""
    code = ("import sys; from benchmark.config import load_params; load_params('params.yaml'); "
            "assert 'torch' not in sys.modules and 'methods' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
