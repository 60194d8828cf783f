"""benchmark.tools.study: trains variants x seeds, scores on fresh images only, applies the written rule."""
import copy

import pandas as pd
import pytest
import yaml

from benchmark.config import ConfigError
from benchmark.tools.study import choose, collect, configured_variant, load_study, render_report, run_study
from tests.conftest import REPO


def write_study(tmp_path, methods, seeds=(0, 1), tie_margin=1.0):
    path = tmp_path / "study" / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"rule": "best held-out Dice; ties to the first", "tie_margin": tie_margin,
                                    "seeds": list(seeds), "heldout": {"generator_seeds": [8], "count": 3},
                                    "methods": methods}, sort_keys=False))
    return path


def test_tiny_study_trains_scores_resumes_and_reports(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    params["runs"]["strong_weak_10"] = {"method": "strong_weak", "row": "Strong-Weak", "strong_fraction": 0.25}
    path = write_study(tmp_path, {"strong_weak": {"run": "strong_weak_10", "variants": {
        "plain": {"options": {"neck_layers": 0}}, "neck": {"options": {"neck_layers": 1}},
        "broken": {"options": {"neck_layers": 2}, "ineligible": "for the test"}}}})
    study = load_study(path, params)
    run_study(study, params, prepared, ["strong_weak"])
    results = collect(study)
    assert len(results) == 6 and set(results["n_images"]) == {3}
    assert results["dice"].between(0, 100).all() and results["smeasure"].between(0, 100).all()
    done = study.folder / "scores" / "strong_weak" / "neck" / "seed_1.csv"
    scores = pd.read_csv(done)
    assert set(scores["generator_seed"]) == {8} and len(scores) == 3, "fresh images only, never the test split"
    stamp = done.stat().st_mtime_ns
    run_study(study, params, prepared, ["strong_weak"])  # everything done: nothing re-trained
    assert done.stat().st_mtime_ns == stamp
    longer = copy.deepcopy(params)
    longer["train"]["epochs"] += 1  # a new default schedule: every score is from another protocol
    assert "not one protocol, or not today's default schedule" in render_report(study, longer, results)
    run_study(study, longer, prepared, ["strong_weak"])
    assert set(collect(study)["epochs"]) == {longer["train"]["epochs"]}, "re-trained at the new schedule"
    assert "re-run the study" not in render_report(study, longer, collect(study))
    chosen, _ = choose(study, results, "strong_weak")
    assert chosen in ("plain", "neck")
    report = render_report(study, params, results)
    assert "broken (ineligible)" in report and "plain (reference)" in report and "**Choice:**" in report
    assert configured_variant(study, params, "strong_weak") == "neck", "the method's default neck_layers is 1"


def fake_results(scores):
    return pd.DataFrame([{"method": "m", "variant": v, "seed": s, "n_images": 10, "dice": d, "smeasure": d}
                         for v, per_seed in scores.items() for s, d in enumerate(per_seed)])


@pytest.fixture()
def three_variant_study(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    path = write_study(tmp_path, {"ours": {"run": "ours_10", "variants": {
        "a": {"options": {"prompt_levels": "fd"}, "ineligible": "degenerate"},
        "b": {"options": {"prompt_levels": "all"}}, "c": {"options": {"fd_levels": "all"}}}}}, seeds=(0, 1, 2))
    return load_study(path, params)


def test_rule_needs_more_than_the_tie_margin_and_never_picks_an_ineligible_variant(three_variant_study):
    study = three_variant_study
    results = fake_results({"a": [90, 90, 90], "b": [40, 41, 42], "c": [41, 42, 43]}).assign(method="ours")
    assert choose(study, results, "ours")[0] == "b", "c's +1.0 is not more than the margin; a is ineligible"
    results = fake_results({"a": [90, 90, 90], "b": [40, 41, 42], "c": [42, 42, 43]}).assign(method="ours")
    assert choose(study, results, "ours")[0] == "c"
    partial = results[~((results["variant"] == "c") & (results["seed"] == 2))]
    assert choose(study, partial, "ours")[0] is None, "no decision before every eligible variant has every seed"


def test_study_file_errors_name_the_key(tiny_prepared, tmp_path):
    params = tiny_prepared[0]
    with pytest.raises(ConfigError, match="options"):
        load_study(write_study(tmp_path, {"strong_only": {"run": "strong_only_10", "variants": {
            "x": {"options": {"no_such_option": 1}}}}}), params)
    with pytest.raises(ConfigError, match="a run of method"):
        load_study(write_study(tmp_path, {"dcr": {"run": "strong_only_10", "variants": {"x": {}}}}), params)
