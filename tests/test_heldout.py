"""benchmark.tools.heldout: fresh synthetic images re-score trained runs; the pipeline's own generator seed is
refused."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from benchmark.config import ConfigError, run_spec
from benchmark.data.synthetic import generate_domain
from benchmark.evaluation.evaluate import evaluate_run, predict_probabilities
from benchmark.evaluation.metrics import dice
from benchmark.tools import heldout
from benchmark.training.train import build_method, train_run


@pytest.fixture(scope="module")
def trained(tiny_prepared, tmp_path_factory):
    params, prepared = tiny_prepared
    runs_dir = tmp_path_factory.mktemp("runs")
    train_run(run_spec(params, "strong_only_100"), params, prepared, runs_dir, show_progress=False)
    evaluate_run("strong_only_100", params, prepared, runs_dir)
    params_file = runs_dir.parent / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return params, runs_dir, params_file


def test_fresh_sets_are_new_images_of_the_same_generator(tiny_prepared):
    params = tiny_prepared[0]
    sets = heldout.fresh_cbis_sets(params["data"], [101, 102], count=4)
    assert sorted(sets) == [101, 102]
    images, masks = sets[101]
    assert images.shape == (4, 32, 32) and images.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    assert not np.array_equal(images, sets[102][0])
    own = generate_domain("cbis", 4, 32, params["data"]["synthetic"]["seed"], params["data"]["synthetic"])
    assert not any(np.array_equal(a, b) for a in images for b in own.images)
    with pytest.raises(ConfigError, match="data.synthetic.seed"):
        heldout.fresh_cbis_sets(params["data"], [params["data"]["synthetic"]["seed"]], count=4)


def test_scores_are_the_evaluate_stage_dice_on_the_fresh_images(trained, tmp_path, capsys):
    params, runs_dir, params_file = trained
    csv = tmp_path / "scores.csv"
    heldout.main(["strong_only_100", "--generator-seeds", "101", "102", "--count", "5", "--params", str(params_file),
                  "--runs-dir", str(runs_dir), "--csv", str(csv)])
    scores = pd.read_csv(csv)
    assert len(scores) == 10 and set(scores["generator_seed"]) == {101, 102}
    # recompute one image's Dice independently of the tool's batching
    method = build_method(run_spec(params, "strong_only_100"), params["model"])
    method.load_state_dict(torch.load(runs_dir / "strong_only_100" / "models" / "seed_0.pt", weights_only=True))
    images, masks = heldout.fresh_cbis_sets(params["data"], [102], count=5)[102]
    probability = predict_probabilities(method, images[3:4], torch.device("cpu"), 1)[0]
    expected = dice(probability > params["evaluate"]["threshold"], masks[3])
    got = scores[(scores["generator_seed"] == 102) & (scores["image"] == 3)]["dice"].item()
    assert got == pytest.approx(expected)
    table = capsys.readouterr().out
    assert "| strong_only_100 | 0 |" in table and "fresh (seed 101)" in table
    pooled = 100 * scores["dice"].mean()
    assert f"{pooled:.2f} ±" in table


def test_refuses_real_data_and_unevaluated_runs(trained, tmp_path):
    params, runs_dir, _ = trained
    real = copy.deepcopy(params)
    real["data"]["source"] = "real"
    real_file = tmp_path / "real.yaml"
    real_file.write_text(yaml.safe_dump(real))
    with pytest.raises(ConfigError, match="data.source"):
        heldout.main(["--params", str(real_file), "--runs-dir", str(runs_dir)])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(FileNotFoundError, match="strong_only_10 is not evaluated"):
        heldout.main(["strong_only_10", "--params", str(params_file), "--runs-dir", str(runs_dir)])


def test_refuses_runs_trained_at_another_size_than_it_would_render(trained, tmp_path):
    params, runs_dir, _ = trained
    larger = copy.deepcopy(params)
    larger["data"]["image_size"] = 64  # the models trained at 32 px: their masses would be twice as large here
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(larger))
    with pytest.raises(ConfigError, match=r"train_info.json: the run was trained at 32 px, but params.yaml "
                                          r"data.image_size is 64"):
        heldout.main(["strong_only_100", "--count", "2", "--params", str(params_file), "--runs-dir", str(runs_dir)])
