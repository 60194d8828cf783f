"""Shared fixtures: a tiny synthetic configuration and prepared dataset."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmark.data.prepare import synthetic_domains
from benchmark.data.prepared import load_prepared, write_prepared

REPO = Path(__file__).resolve().parents[1]


def real_samples(*required: str, missing: str) -> Path:
    """shared/reference/real-samples beside the repository, or under $MAMMO_SHARED_DIR (itself, or its
    reference/real-samples), holding every `required` path; the test is skipped with `missing` when none does
    (the samples are never copied into the repository)."""
    places = [REPO.parent / "shared" / "reference" / "real-samples"]
    if os.environ.get("MAMMO_SHARED_DIR"):
        shared = Path(os.environ["MAMMO_SHARED_DIR"])
        places += [shared / "reference" / "real-samples", shared]
    for place in places:
        if all((place / path).exists() for path in required):
            return place
    pytest.skip(missing)


def tiny_params(image_size: int = 32, n_cbis: int = 20, n_inbreast: int = 6, extra_cbis_test: int = 0) -> dict:
    """params.yaml with a tiny dataset, a one-epoch schedule and one seed (the real defaults otherwise)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["data"]["image_size"] = image_size
    params["data"]["synthetic"].update(n_cbis=n_cbis, n_inbreast=n_inbreast, extra_cbis_test=extra_cbis_test)
    params["model"]["decoder_channels"] = [16, 16, 8, 8, 8]
    params["train"].update(epochs=1, batch_size=4)
    # tiny epochs last under a second: checkpoint after each, as resume tests need
    params["train"]["checkpoint_every_s"] = 0
    params["seeds"] = [0]  # one seed keeps the end-to-end tests short; tests of several seeds set their own
    params["report"]["scale_study"] = str(REPO / params["report"]["scale_study"])  # from any working directory
    # the two Strong-Only rows are enough to exercise the pipeline; every method has its own tests
    params["runs"] = {name: run for name, run in params["runs"].items()
                      if name in ("strong_only_100", "strong_only_10")}
    return params


def edited_params(params: dict, edits: dict, removed: tuple[str, ...] = ()) -> dict:
    """A copy of params with dotted keys set ({"train.epochs": 0}) and others removed (("train.lr",))."""
    params = copy.deepcopy(params)
    for key in [*edits, *removed]:
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        if key in edits:
            node[last] = edits[key]
        else:
            del node[last]
    return params


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> tuple[dict, Path]:
    params = tiny_params()
    params["train"]["checkpoint_dir"] = str(tmp_path_factory.mktemp("checkpoints"))
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    domains, report = synthetic_domains(params["data"])
    write_prepared(out, domains, split_seed=params["data"]["split_seed"],
                   test_fraction=params["data"]["test_fraction"], report=report)
    return params, out


@pytest.fixture()
def tiny_data(tiny_prepared):
    return load_prepared(tiny_prepared[1])


def make_pipeline_copy(work: Path, params: dict | None = None) -> Path:
    """The pipeline's code, dvc.yaml and a (tiny by default) params.yaml in `work`, committed to a new git repo."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("benchmark", "methods", "measurements", "weights"):
        shutil.copytree(REPO / folder, work / folder, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore", "requirements.lock", "studies/scale/race.json"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, work / name)
    (work / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", work / ".dvc" / "config")
    (work / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=work, check=True, capture_output=True)
    return work
