"""The evaluate stage scores every seed under both protocols; the authors' numbers are eval.py's own."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from py_sod_metrics import DICEHandler, FmeasureV2, Smeasure

from benchmark.artifacts import read_json
from benchmark.config import RunSpec
from benchmark.data.prepared import load_prepared
from benchmark.evaluation.evaluate import evaluate_run
from benchmark.evaluation.metrics import authors_prediction_map
from benchmark.training.sampling import normalise
from benchmark.training.train import build_method, train_run


@pytest.fixture(scope="module")
def evaluated(tiny_prepared, tmp_path_factory):
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    params["seeds"] = [0, 1]
    params["runs"]["strong_only_50"] = {"method": "strong_only", "row": "Strong-Only", "strong_fraction": 0.5}
    runs_dir = tmp_path_factory.mktemp("runs")
    spec = RunSpec(name="strong_only_50", method="strong_only", strong_fraction=0.5, seeds=(0, 1), row="Strong-Only")
    train_run(spec, params, prepared, runs_dir, show_progress=False)
    metrics = evaluate_run("strong_only_50", params, prepared, runs_dir)
    return params, prepared, runs_dir, metrics


def test_per_image_authors_scores_are_their_scripts_on_the_models_logits(evaluated):
    params, prepared, runs_dir, metrics = evaluated
    per_image = pd.read_csv(runs_dir / "strong_only_50" / "per_image.csv", dtype={"image_id": str})
    assert {"dice", "smeasure", "authors_mdice", "authors_smeasure"} <= set(per_image.columns)
    data = load_prepared(prepared)
    rows = data.rows("cbis", "test")
    images, masks = data.arrays["cbis"]["images"][rows["index"]], data.arrays["cbis"]["masks"][rows["index"]]
    for seed in (0, 1):
        method = build_method(RunSpec("strong_only_50", "strong_only", 0.5, (0, 1), "Strong-Only"), params["model"])
        method.load_state_dict(torch.load(runs_dir / "strong_only_50" / "models" / f"seed_{seed}.pt",
                                          weights_only=True))
        method.eval()
        with torch.no_grad():
            logits = method.predict(normalise(torch.as_tensor(images[:, None]))).float()[:, 0].numpy()
        # eval.py over the whole test set: one FmeasureV2 and one Smeasure stepped through every image
        fmeasure = FmeasureV2(metric_handlers={"dice": DICEHandler(with_adaptive=True, with_dynamic=True)})
        structure = Smeasure()
        for logit, truth in zip(logits, masks):
            prediction = authors_prediction_map(logit, truth.shape)
            fmeasure.step(pred=prediction, gt=truth.astype(np.uint8) * 255)
            structure.step(pred=prediction, gt=truth.astype(np.uint8) * 255)
        ours = per_image[(per_image["seed"] == seed) & (per_image["dataset"] == "cbis")]
        assert ours["authors_mdice"].mean() == pytest.approx(fmeasure.get_results()["dice"]["dynamic"].mean(),
                                                             abs=1e-9)
        assert ours["authors_smeasure"].mean() == pytest.approx(structure.get_results()["sm"], abs=1e-9)
        expected = 100 * fmeasure.get_results()["dice"]["dynamic"].mean()
        assert metrics["per_seed"][str(seed)]["cbis"]["authors_mdice"] == pytest.approx(expected, abs=1e-3)


def test_metrics_summarise_both_protocols_over_seeds(evaluated):
    _, _, runs_dir, metrics = evaluated
    assert metrics == read_json(runs_dir / "strong_only_50" / "metrics.json")
    for dataset in ("cbis", "inbreast"):
        for key in ("dice", "smeasure", "authors_mdice", "authors_smeasure"):
            per_seed = [metrics["per_seed"][seed][dataset][key] for seed in ("0", "1")]
            assert metrics[dataset][key] == pytest.approx(np.mean(per_seed), abs=1e-3)
            assert metrics[dataset][f"{key}_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-3)
