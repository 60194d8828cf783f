"""End to end: the real DVC pipeline on a tiny configuration, in a temporary copy of the repository.

Also follows README "Add a method" literally: one new file under methods/ and one entry in
params.yaml, nothing else, and the new row appears in reports/tables.md.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_params

NEW_METHOD = textwrap.dedent('''
    """Box-Only (example): a U-Net trained on the filled boxes of the weak images. Written by a test."""
    from benchmark.losses import mask_loss
    from benchmark.networks import build_unet
    from methods import register
    from methods.base import SegmentationMethod


    @register
    class BoxOnly(SegmentationMethod):
        display_name = "Box-Only"
        uses_strong = False
        uses_weak = True
        default_options = {"loss": "bce_dice"}

        def build(self):
            self.net = build_unet(self.model_params)

        def training_step(self, batch):
            return mask_loss(self.net(batch.images), batch.boxes, self.options["loss"])

        def predict(self, images):
            return self.net(images)
''')


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("benchmark", "methods"):
        shutil.copytree(REPO / folder, work / folder, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, work / name)
    (work / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", work / ".dvc" / "config")
    params = tiny_params()
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], work)
    return work


def test_dvc_repro_end_to_end(pipeline_copy: Path):
    work = pipeline_copy
    # Add a method as README says: one file, one params entry.
    (work / "methods" / "box_only.py").write_text(NEW_METHOD)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["runs"]["box_only_0"] = {"method": "box_only", "row": "Box-Only", "strong_fraction": 0.0, "seed": 0}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["dvc", "repro"], work)
    tables = (work / "reports" / "tables.md").read_text()
    assert "synthetic stand-in" in tables
    assert "| Strong-Only | 100% | 0% |" in tables and "| Strong-Only | 10% | 0% |" in tables
    assert "| Box-Only | 0% | 100% |" in tables, "the new method's row is reported"
    metrics = json.loads((work / "runs" / "strong_only_100" / "metrics.json").read_text())
    assert 0 <= metrics["cbis"]["dice"] <= 100 and metrics["inbreast"]["n_images"] == 6
    assert (work / "reports" / "figures" / "data_preview.png").stat().st_size > 1000

    # Nothing changed: nothing runs again.
    assert "changed" not in run(["dvc", "status"], work)
    second = run(["dvc", "repro"], work)
    assert "Running stage" not in second

    # Editing one method's file invalidates only that method's runs (and the report after them).
    with open(work / "methods" / "strong_only.py", "a") as handle:
        handle.write("\n# edited\n")
    status = run(["dvc", "status"], work)
    assert "train@strong_only_100" in status and "train@strong_only_10" in status
    assert "train@box_only_0" not in status and "prepare" not in status.split("train@")[0]
