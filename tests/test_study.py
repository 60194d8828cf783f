"""benchmark.tools.study: trains conditions x variants x seeds, scores on fresh images only, applies the rule."""
import copy
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark.config import ConfigError
from benchmark.reporting.scale_evidence import ScaleEvidenceError, read_race, scale_line
from benchmark.tools import study as study_tool
from benchmark.tools import study_ranking
from benchmark.tools.study import (
    check_one_commit,
    collect,
    configured_variant,
    decide,
    load_study,
    render_report,
    run_study,
)
from benchmark.tools.study_rule import EXTEND, KEEP, REPLACE, WAITING, Rule, choose, judge
from tests.conftest import REPO

RULE = {"replace_se": 2.0, "min_gain": 0.5, "extend_se": 1.0}


def write_study(tmp_path, methods, seeds=(0, 1), extra_seeds=(), rule=RULE, **more):
    path = tmp_path / "study" / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"rule": rule, "seeds": list(seeds), "extra_seeds": list(extra_seeds),
                                    "heldout": {"generator_seeds": [8], "count": 3}, "methods": methods, **more},
                                   sort_keys=False))
    return path


def test_tiny_study_trains_scores_resumes_and_reports(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    params["runs"]["strong_weak_10"] = {"method": "strong_weak", "row": "Strong-Weak", "strong_fraction": 0.25}
    path = write_study(tmp_path, {"strong_weak": {"run": "strong_weak_10", "source": "the source's words",
                                                  "variants": {
        "plain": {"options": {"neck_layers": 0}}, "neck": {"options": {"neck_layers": 1}},
        "broken": {"options": {"neck_layers": 2}, "ineligible": "for the test"}}}})
    study = load_study(path, params)
    run_study(study, params, prepared, ["strong_weak"], allow_dirty=True)
    results = collect(study)
    assert len(results) == 6 and set(results["n_images"]) == {3}
    assert results["dice"].between(0, 100).all() and results["smeasure"].between(0, 100).all()
    done = study.folder / "scores" / "strong_weak" / "neck" / "seed_1.csv"
    scores = pd.read_csv(done)
    assert set(scores["generator_seed"]) == {8} and len(scores) == 3, "fresh images only, never the test split"
    stamp = done.stat().st_mtime_ns
    run_study(study, params, prepared, ["strong_weak"], allow_dirty=True)  # everything done: nothing re-trained
    assert done.stat().st_mtime_ns == stamp
    longer = copy.deepcopy(params)
    longer["train"]["epochs"] += 1  # a new default schedule: every score is from another protocol
    assert "not one protocol" in render_report(study, longer, results)
    run_study(study, longer, prepared, ["strong_weak"], allow_dirty=True)
    assert set(collect(study)["epochs"]) == {longer["train"]["epochs"]}, "re-trained at the new schedule"
    report = render_report(study, longer, collect(study))
    assert "not at one schedule" not in report
    assert "broken (ineligible)" in report and "plain (reference)" in report and "**Choice:**" in report
    assert "Source (the reference follows it): the source's words" in report
    assert configured_variant(study, params, "strong_weak") == "neck", "the method's default neck_layers is 1"


def test_a_condition_trains_on_its_own_data_and_a_variant_only_where_it_is_listed(tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    path = write_study(tmp_path, {"strong_only_10": {"run": "strong_only_10", "variants": {"plain": {}}},
                                  "strong_only_100": {"run": "strong_only_100", "variants": {
                                      "plain": {}, "bigger": {"options": {}, "conditions": ["large"]}}}},
                       seeds=(0,), conditions={"small": {}, "large": {"data": {"image_size": 64}}},
                       settings={"train": {"precision": "fp32"}}, ranking={"reference": "strong_only_100"})
    study = load_study(path, params)
    run_study(study, params, prepared, study.entries(), allow_dirty=True)
    results = collect(study)
    assert sorted(map(tuple, results[["condition", "entry", "variant"]].to_numpy())) == [
        ("large", "strong_only_10", "plain"), ("large", "strong_only_100", "bigger"),
        ("large", "strong_only_100", "plain"), ("small", "strong_only_10", "plain"),
        ("small", "strong_only_100", "plain")]
    assert dict(zip(results["condition"], results["image_size"])) == {"small": 32, "large": 64}
    assert set(results["precision"]) == {"fp32"}
    assert (study.folder / "scores" / "large" / "strong_only_100" / "bigger" / "seed_0.csv").is_file()
    assert len(list((study.work / "prepared").glob("*/manifest.csv"))) == 1, "only the 64 px condition prepares"
    report = render_report(study, params, results)
    assert "## Ranking per condition" in report and "| Strong-Only 10% |" in report
    assert "## The paper's Table-1 claims per condition" in report and "not judged (one seed)" in report


@pytest.mark.parametrize("key, value, named", [
    ("image_size", 64, "data.image_size = [32, 32], but params.yaml has [64, 64]"),
    ("split_seed", 1, "data.split_seed = "),
    ("synthetic", {"mass_contrast_median": 0.3}, "data.synthetic.mass_contrast_median = 0.21, but params.yaml has 0.3"),
])
def test_the_pipeline_data_is_reused_only_if_params_yaml_prepares_it_now(tiny_prepared, tmp_path, key, value, named):
    params, prepared = tiny_prepared
    study = load_study(write_study(tmp_path, {"strong_only_10": {"run": "strong_only_10", "variants": {"a": {}}}}),
                       params)
    assert study_tool.prepared_for(study, params, params["data"], prepared) == prepared
    changed = copy.deepcopy(params)  # e.g. params.yaml moved to another size and `dvc repro prepare` was not run
    changed["data"][key] = {**changed["data"][key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=re.escape(f"{prepared / 'prepare_report.json'}: prepared with {named}")):
        study_tool.prepared_for(study, changed, changed["data"], prepared)


@pytest.mark.parametrize("differences, seeds_done, state", [
    ([2.0, 2.1, 1.9], 3, REPLACE),  # +2.0, SE 0.06: far beyond both bars
    ([0.4, 0.45, 0.35], 3, KEEP),  # many SE, but not above 0.5 Dice points
    ([6.0, -2.5, 6.0], 3, EXTEND),  # like the fairness study's Strong-Weak: +3.17 ± 2.83 SE, about 1.1 SE
    ([1.0, -1.0, 0.5], 3, KEEP),  # +0.17 ± 0.6 SE: below 1 SE, the reference stays at once
    ([6.0, -2.5, 6.0, 1.0], 4, EXTEND),  # the extra seeds are on their way
    ([6.0, -2.5, 6.0, -2.0, 0.1], 5, KEEP),  # decided at five: +1.52 ± 1.88 SE
    ([6.0, 3.0, 6.0, 2.0, 4.1], 5, REPLACE),  # +4.22 ± 0.80 SE
    ([3.0, 2.0], 2, WAITING),
])
def test_the_rule_replaces_only_beyond_two_standard_errors_and_extends_between_one_and_two(
        differences, seeds_done, state):
    assert judge(differences, Rule(), seeds=3, extra_seeds=2).state == state


def test_choose_waits_for_extensions_and_picks_the_largest_passing_gain():
    rule = Rule()
    assert choose("ref", {"a": judge([6.0, -2.5, 6.0], rule, 3, 2)})[0] is None
    chosen, why = choose("ref", {"a": judge([2.0, 2.1, 1.9], rule, 3, 2), "b": judge([3.0, 3.1, 2.9], rule, 3, 2)})
    assert chosen == "b" and "beats the reference ref" in why
    assert choose("ref", {"a": judge([0.2, 0.1, 0.3], rule, 3, 2)})[0] == "ref"


def test_a_study_file_may_not_loosen_the_rule_nor_use_the_retired_tie_margin(tiny_prepared, tmp_path):
    params = tiny_prepared[0]
    methods = {"strong_only": {"run": "strong_only_10", "variants": {"x": {}}}}
    with pytest.raises(ConfigError, match="may not be looser"):
        load_study(write_study(tmp_path, methods, rule={"replace_se": 1.0, "min_gain": 0.5, "extend_se": 1.0}), params)
    path = write_study(tmp_path, methods)
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "tie_margin": 1.0}))
    with pytest.raises(ConfigError, match="tie_margin belongs to the retired rule"):
        load_study(path, params)


def fake_results(scores, entry="ours", condition="default"):
    return pd.DataFrame([{"condition": condition, "entry": entry, "variant": v, "seed": s, "n_images": 10, "dice": d,
                          "smeasure": d} for v, per_seed in scores.items() for s, d in enumerate(per_seed)])


@pytest.fixture()
def three_variant_study(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    path = write_study(tmp_path, {"ours": {"run": "ours_10", "variants": {
        "a": {"options": {"prompt_levels": "fd"}, "ineligible": "degenerate"},
        "b": {"options": {"prompt_levels": "all"}}, "c": {"options": {"fd_levels": "all"}}}}},
        seeds=(0, 1, 2), extra_seeds=(3, 4))
    return load_study(path, params)


def test_decide_never_picks_an_ineligible_variant_and_asks_for_extra_seeds(three_variant_study):
    study = three_variant_study
    results = fake_results({"a": [90, 90, 90], "b": [40, 41, 42], "c": [42.5, 43, 44.5]})
    assert decide(study, results, "ours", "default")[0] == "c", "+2.33 ± 0.33 SE over b; a is ineligible"
    results = fake_results({"a": [90, 90, 90], "b": [40, 41, 42], "c": [46, 39, 47]})
    chosen, why = decide(study, results, "ours", "default")
    assert chosen is None and "training the extra seeds" in why, "+3.00 ± 2.52 SE: between the bounds"
    assert study_tool.extended(study, results, "ours", "default") == {"b", "c"}
    partial = results[~((results["variant"] == "c") & (results["seed"] == 2))]
    assert decide(study, partial, "ours", "default")[0] is None, "no decision before every seed has scores"


def test_training_refuses_a_dirty_tree_and_another_commit(three_variant_study, monkeypatch):
    study = three_variant_study
    monkeypatch.setattr(study_tool, "git_state", lambda: {"git_commit": "a" * 40, "git_dirty": True})
    with pytest.raises(ConfigError, match="uncommitted changes"):
        check_one_commit(study, allow_dirty=False)
    check_one_commit(study, allow_dirty=True)
    monkeypatch.setattr(study_tool, "git_state", lambda: {"git_commit": "a" * 40, "git_dirty": False})
    earlier = study.folder / "scores" / "ours" / "b" / "seed_0.csv"
    earlier.parent.mkdir(parents=True)
    pd.DataFrame({"git_commit": ["b" * 40]}).to_csv(earlier, index=False)
    with pytest.raises(ConfigError, match="scores from commit bbbbbbbbbb"):
        check_one_commit(study, allow_dirty=False)


def test_the_protocol_line_fails_on_two_commits_or_a_dirty_tree(three_variant_study):
    study, params = three_variant_study, yaml.safe_load((REPO / "params.yaml").read_text())
    results = fake_results({"b": [40, 41, 42]}).assign(epochs=params["train"]["epochs"],
                                                       image_size=params["data"]["image_size"], precision="fp32",
                                                       git_commit="a" * 40, git_dirty=False)
    assert "one protocol (one commit" in study_tool.protocol_line(study, results, params)
    two = results.assign(git_commit=["a" * 40, "b" * 40, "a" * 40])
    assert "trainings at 2 commits" in study_tool.protocol_line(study, two, params)
    dirty = results.assign(git_dirty=[False, True, False])
    assert "uncommitted changes" in study_tool.protocol_line(study, dirty, params)


def test_the_ranking_reads_in_percent_as_its_table_says():
    """The scale report's first row read "0.39 ± 0.01" under a header of Dice in %."""
    matrices = {"a": np.array([[0.38, 0.40], [0.40, 0.42]]), "b": np.array([[0.50, 0.50], [0.50, 0.50]])}
    (first, mean_b, _, _), (second, mean_a, std_a, n) = study_ranking.ranking(matrices)
    assert (first, second, n) == ("b", "a", 2)
    assert mean_b == pytest.approx(50.0) and mean_a == pytest.approx(40.0) and std_a == pytest.approx(np.sqrt(2))


def test_kendall_tau_and_its_interval_follow_the_rankings():
    rng = np.random.default_rng(0)
    first = {f"e{k}": 0.1 * k + 0.01 * rng.standard_normal((3, 50)) for k in range(5)}
    same = {name: matrix + 0.2 for name, matrix in first.items()}
    reversed_ = {f"e{k}": -0.1 * k + 0.01 * rng.standard_normal((3, 50)) for k in range(5)}
    tau, low, high, n = study_ranking.kendall_tau(first, same, resamples=200)
    assert n == 5 and tau == pytest.approx(1.0) and low == pytest.approx(1.0)
    tau, low, high, _ = study_ranking.kendall_tau(first, reversed_, resamples=200)
    assert tau == pytest.approx(-1.0) and high == pytest.approx(-1.0)
    noisy = {name: 0.5 + 0.3 * rng.standard_normal((3, 50)) for name in first}
    tau, low, high, _ = study_ranking.kendall_tau(first, noisy, resamples=200)
    assert low < tau < high and low < 0 < high, "no real order in the second: the interval spans 0"


HYBRIDS = ("vanilla_hybrid_10", "strong_weak_10", "ours_10")


@pytest.fixture()
def pooled_study(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = {run: {"run": run, "variants": {"half": {"settings": {"train": {"strong_share": 0.5}}},
                                              "natural": {"settings": {"train": {"strong_share": "natural"}}}}}
               for run in HYBRIDS}
    path = write_study(tmp_path, methods, seeds=(0, 1, 2), extra_seeds=(3, 4),
                       pooled={"reference": "half", "candidate": "natural"})
    return load_study(path, params), params


def pooled_results(gains_by_entry):
    """Reference Dice 40 at every seed; the candidate 40 + the entry's gain at that seed."""
    frames = [fake_results({"half": [40.0] * len(gains), "natural": [40.0 + g for g in gains]}, entry=entry)
              for entry, gains in gains_by_entry.items()]
    return pd.concat(frames, ignore_index=True)


def test_a_variant_sets_training_keys_and_the_run_it_trains_has_them(pooled_study, tmp_path):
    study, params = pooled_study
    natural = next(v for v in study.variants if v.entry == "ours_10" and v.name == "natural")
    run_params, name = study_tool.variant_params(params, natural, [0], tmp_path / "ck")
    assert run_params["train"]["strong_share"] == "natural" and name == "ours_10__natural"
    assert params["train"]["strong_share"] == 0.5, "params.yaml itself is not changed"
    assert configured_variant(study, params, "ours_10") == "half", "today's params.yaml configures half"


@pytest.mark.parametrize("settings, message", [
    ({"data": {"image_size": 192}}, "a variant overrides training keys only"),
    ({"train": {"epochs": 3}}, "train.epochs sets the schedule"),
    ({"train": {"strong_share": 2}}, "train.strong_share = 2: must be a number in")])
def test_a_variant_setting_outside_its_bounds_is_refused(tmp_path, settings, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    path = write_study(tmp_path, {"ours": {"run": "ours_10", "variants": {"a": {}, "b": {"settings": settings}}}})
    with pytest.raises(ConfigError, match=message):
        load_study(path, params)


def test_one_pooled_decision_serves_every_entry(pooled_study):
    study, _ = pooled_study
    # each entry alone: +1.0 ± 1.0 SE (keep); pooled per seed the noise averages out: +1.0 ± 0.0 -> replace
    results = pooled_results({"vanilla_hybrid_10": [0.0, 2.0, 1.0], "strong_weak_10": [2.0, 0.0, 1.0],
                              "ours_10": [1.0, 1.0, 1.0]})
    for entry in HYBRIDS:
        chosen, why = decide(study, results, entry, "default")
        assert chosen == "natural" and why.startswith("pooled over 3 entries: natural beats the reference half")
    # pooled +1.33 ± 1.01 SE, between 1 and 2 SE: every entry trains the extra seeds, none decides yet
    results = pooled_results({"vanilla_hybrid_10": [3.0, -0.5, 1.5], "strong_weak_10": [3.0, -0.5, 1.5],
                              "ours_10": [3.0, -0.5, 1.5]})
    assert all(study_tool.extended(study, results, e, "default") == {"half", "natural"} for e in HYBRIDS)
    assert all(decide(study, results, e, "default")[0] is None for e in HYBRIDS)
    text = "\n".join(study_tool.pooled_lines(study, results))
    assert "seed 0: +3.00, seed 1: -0.50, seed 2: +1.50" in text and "**Choice:** -" in text


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*/study.yaml")), ids=lambda p: p.parent.name)
def test_every_study_file_loads_under_the_rule_and_its_variants_decide_the_same_options(path):
    """Every study of the repository states the rule (no looser), loads against today's params.yaml, and the
    variants of one entry set the same option keys: a key one variant leaves out would take the method's default
    of the day, so the reading it races could change under it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    study = load_study(path, params)
    rule = (study.rule.replace_se, study.rule.min_gain, study.rule.extend_se)
    assert all(value >= floor for value, floor in zip(rule, (2.0, 0.5, 1.0))), f"{path}: rule {rule} is looser"
    for entry in study.entries():
        keys = {tuple(sorted(v.options)) for v in study.variants if v.entry == entry}
        assert len(keys) == 1, f"{path}: the variants of {entry} set different options: {keys}"


def write_fake_scores(study, condition, entry, variant, per_seed_dice, n_images=20, commit="a" * 40):
    for seed, value in enumerate(per_seed_dice):
        path = study.scores_path(condition, next(v for v in study.variants if v.entry == entry and v.name == variant),
                                 seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        spread = 0.001 * (np.arange(n_images) - (n_images - 1) / 2)  # image effects that average to zero
        pd.DataFrame({"generator_seed": 8, "image": range(n_images), "dice": value / 100 + spread,
                      "smeasure": 0.5, "epochs": 12, "image_size": 96, "precision": "fp32", "threads": 1,
                      "git_commit": commit, "git_dirty": False}).to_csv(path, index=False)


def test_the_ranking_races_the_reading_the_rule_chose_in_each_condition(tmp_path):
    """Where a study races two readings of an entry in one condition (the scale study's literal and adapted Ours
    at 192 px), that condition's ranking and claims use the rule's choice; where it races one (adapted at 96 px),
    that one. The cell names the reading where it is not the configured one (Ours configures the literal)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = {"strong_only_100": {"run": "strong_only_100", "variants": {"configured": {}}},
               "strong_only_10": {"run": "strong_only_10", "variants": {"configured": {}}},
               "ours_10": {"run": "ours_10", "variants": {
                   "literal": {"options": {"fd_levels": "deepest", "prompt_levels": "fd"}, "conditions": ["big"]},
                   "adapted": {"options": {"fd_levels": "deepest", "prompt_levels": "all"}}}}}
    study = load_study(write_study(tmp_path, methods, seeds=(0, 1, 2), conditions={"small": {}, "big": {}},
                                   ranking={"reference": "ours_10"}), params)
    for condition in ("small", "big"):
        write_fake_scores(study, condition, "strong_only_100", "configured", [50, 51, 52])
        write_fake_scores(study, condition, "strong_only_10", "configured", [30, 31, 32])
        write_fake_scores(study, condition, "ours_10", "adapted", [40, 41, 42])
    write_fake_scores(study, "big", "ours_10", "literal", [60, 62, 61])  # adapted -20 on every seed: it stays
    report = render_report(study, params, collect(study))
    ours = next(line for line in report.splitlines() if line.startswith("| Ours 10% |"))
    small, big = ours.split("|")[2:4]
    assert "41.00" in small and "(#2) adapted" in small
    assert "61.00" in big and "(#1)" in big and "adapted" not in big and "literal" not in big
    strong = next(line for line in report.splitlines() if line.startswith("| Strong-Only 100% |") and "[" in line)
    assert "+10.00" in strong.split("|")[4], "the big condition's claim compares the chosen reading"


def test_the_race_is_written_as_data_and_the_pipeline_report_quotes_it(tmp_path):
    """build_race gives the report's ranking, tau and claims as data (race.json); the pipeline's summary line
    (benchmark.reporting.scale_evidence) quotes each size's ranking, tau, the claims whose verdict changes with
    the size, and which size the report's own runs are at."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = {name: {"run": name, "variants": {"configured": {}}}
               for name in ("strong_only_100", "strong_only_10", "self_correcting_10")}
    methods["ours_10"] = {"run": "ours_10", "variants": {"adapted": {"options": {"prompt_levels": "all"}}}}
    study = load_study(write_study(tmp_path, methods, seeds=(0, 1, 2), ranking={"reference": "ours_10"},
                                   conditions={"small": {"data": {"image_size": 96}},
                                               "big": {"data": {"image_size": 192}}}), params)
    for condition, ours in (("small", [40, 41, 42]), ("big", [56, 57, 58])):
        write_fake_scores(study, condition, "strong_only_100", "configured", [50, 51, 52])
        write_fake_scores(study, condition, "strong_only_10", "configured", [30, 31, 32])
        write_fake_scores(study, condition, "self_correcting_10", "configured", [45, 46, 47])
        write_fake_scores(study, condition, "ours_10", "adapted", ours)
    results = collect(study)
    race = study_tool.build_race(study, params, results)
    assert [row["entry"] for row in race["conditions"]["small"]["ranking"]] == [
        "strong_only_100", "self_correcting_10", "ours_10", "strong_only_10"]
    assert race["conditions"]["big"]["ranking"][0] == {"entry": "ours_10", "reading": "adapted",
                                                       "dice": pytest.approx(57.0), "std": pytest.approx(1.0),
                                                       "seeds": 3}
    assert render_report(study, params, results, race) == render_report(study, params, results)
    line = scale_line(race, "synthetic", 96)
    assert "*small*: Strong-Only 100% 51.0 > Self-Correcting 10% 46.0 > Ours 10% 41.0 > Strong-Only 10% 31.0" in line
    assert "*big*: Ours 10% 57.0 > Strong-Only 100% 51.0" in line
    assert "Kendall's tau between the sizes' rankings: 0.33 (95% interval" in line
    assert ("2 of 3 change verdict with the size: Ours 10% vs Strong-Only 100% agrees at small / disagrees at big; "
            "Ours 10% vs Self-Correcting 10% disagrees at small / agrees at big") in line
    assert "This report's runs are at 96 px (small)." in line
    assert "a size the study did not race" in scale_line(race, "synthetic", 352)
    assert "not the real data of these runs" in scale_line(race, "real", 352)


def test_a_missing_or_foreign_race_file_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ScaleEvidenceError, match=r"report.scale_study = .*absent.json: no such file"):
        read_race(tmp_path / "absent.json")
    (tmp_path / "other.json").write_text('{"entries": {}}')
    with pytest.raises(ScaleEvidenceError, match=r"other.json: not a study's race.json \(no conditions, tau, claims"):
        read_race(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ScaleEvidenceError, match=r"broken.json: not a study's race.json"):
        read_race(tmp_path / "broken.json")


def test_the_committed_scale_race_is_the_one_dvc_and_params_name():
    """The report stage lists the race file the summary quotes as a dep, and it is in the repository."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    assert params["report"]["scale_study"] in deps
    assert read_race(REPO / params["report"]["scale_study"])["reference"] == "ours_10"
