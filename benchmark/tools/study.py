"""A study of methods on fresh held-out images only: tune their open choices, or race them across conditions.

    python -m benchmark study studies/<name>/study.yaml [--methods ours dcr] [--report-only] [--allow-dirty]

A study file lists entries (`methods:`), each a configured run of params.yaml with one or more *variants*
(option sets over the run's own, and optional `settings:`, params.yaml `train` overrides of that variant alone;
the first is the reference, the reading closest to the method's source, quoted in the entry's `source:`), the
seeds, the fresh held-out images and the tuning rule
(benchmark/tools/study_rule.py), all written before any run. Optional `settings:` are params.yaml
overrides for every training (e.g. `train.precision: fp32`, so machines with and without bf16 give one
protocol), and optional `conditions:` name sets of overrides (e.g. `data.image_size`) under which every
variant trains, unless the variant lists the `conditions:` it runs in. A condition that changes `data`
prepares its own data under work/ with the prepare stage's code; one that does not uses --prepared.

For every condition x variant x seed the study trains the run exactly as the pipeline would
(`benchmark.training.train.train_run`) and scores the final weights on fresh synthetic CBIS-like images of
other generator seeds at that condition's size (`benchmark.tools.heldout.fresh_cbis_sets`): Dice at the
evaluate stage's threshold and S-measure. The test split is never read. Then it applies the rule per
entry and condition (training the extra seeds where the rule asks for them), and writes `report.md` and
`results.csv` beside the study file. With `ranking:` it also ranks the entries per condition, gives
Kendall's tau between two conditions' rankings and the paper's Table-1 claims per condition
(benchmark/tools/study_ranking.py), and writes the same as data to `race.json` (the pipeline's report quotes
the scale study's, `report.scale_study`). With `pooled: {reference: a, candidate: b}` one decision serves every entry
that has both variants (e.g. a setting all hybrid methods share): the rule judges, per seed, the candidate's
gain averaged over those entries, and the extra seeds, when it asks for them, train for every one of them.

One protocol: every training of a study must come from one commit with a clean tree (benchmark/,
methods/ and the configuration, as the trainer's provenance records them). The command refuses to
train from a dirty tree (--allow-dirty trains anyway, and the report says the study is not one
protocol) or at another commit than the study's earlier score files (check that commit out, e.g. in a
`git worktree`, to continue). Scores from another schedule than a condition's are re-trained.

Resumable: each finished (condition, variant, seed) leaves its per-image scores in
`scores/[<condition>/]<entry>/<variant>/seed_<s>.csv` beside the study file (small, committed: the study's
record, so a fresh clone continues where the last one stopped); an interrupted training resumes from its
checkpoint under `work/checkpoints`. `work/` (models, checkpoints, prepared data, fresh images) is a
git-ignored scratch folder.

Why not `dvc exp run --queue`: a DVC experiment re-runs the pipeline's evaluate and report stages, which
score on the test split, the one thing a study must not look at.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from benchmark.artifacts import atomic_savez, atomic_write_csv, atomic_write_text, read_json
from benchmark.cli import run_cli
from benchmark.config import ConfigError, load_params, run_spec, validate_params
from benchmark.data.prepare import prepare
from benchmark.data.prepared import check_prepared_from
from benchmark.evaluation.evaluate import load_run_models, predict_probabilities
from benchmark.evaluation.metrics import dice, smeasure
from benchmark.tools import study_ranking
from benchmark.tools.heldout import fresh_cbis_sets
from benchmark.tools.study_rule import EXTEND, Rule, Verdict, choose, judge
from benchmark.training.runtime import git_state, pick_device
from benchmark.training.train import build_method, train_run
from methods import available_methods

DEFAULT_CONDITION = "default"  # the one condition of a study without `conditions:` (params.yaml as it is)
RACE_FILE = "race.json"  # the ranked race as data, beside report.md; reports/tables.md quotes the scale study's
PROTOCOL_COLUMNS = ("epochs", "image_size", "precision", "git_commit", "git_dirty")  # with every score file


@dataclass(frozen=True)
class Variant:
    entry: str  # the study entry: a method name, or a run name in a ranking study
    name: str
    run: str  # the params.yaml run it varies
    options: dict[str, Any]
    ineligible: str | None  # why it cannot be chosen (None: eligible)
    conditions: tuple[str, ...]  # the conditions it trains under
    settings: dict[str, Any] = field(default_factory=dict)  # params.yaml `train` overrides of this variant


@dataclass(frozen=True)
class Study:
    path: Path
    rule: Rule
    seeds: tuple[int, ...]
    extra_seeds: tuple[int, ...]
    generator_seeds: tuple[int, ...]
    count: int
    settings: dict[str, Any]
    conditions: dict[str, dict[str, Any]]
    variants: tuple[Variant, ...]
    sources: dict[str, str]  # entry -> the source's words its reference reading follows
    ranking_reference: str | None  # the entry every other is compared with per condition (`ranking:`)
    pooled: tuple[str, str] | None = None  # (reference, candidate) variants decided once for every entry

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def work(self) -> Path:
        return self.folder / "work"

    @property
    def named_conditions(self) -> bool:
        return list(self.conditions) != [DEFAULT_CONDITION]

    def scores_path(self, condition: str, variant: Variant, seed: int) -> Path:
        scores = self.folder / "scores" / (condition if self.named_conditions else "")
        return scores / variant.entry / variant.name / f"seed_{seed}.csv"

    def entries(self) -> list[str]:
        return list(dict.fromkeys(v.entry for v in self.variants))

    def variants_of(self, entry: str, condition: str) -> list[Variant]:
        return [v for v in self.variants if v.entry == entry and condition in v.conditions]


def deep_merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        merged[key] = deep_merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged


def load_study(path: str | Path, params: dict[str, Any]) -> Study:
    """Read and check a study file against params.yaml (runs exist, methods match, options and overrides valid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found.")
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("rule", "seeds", "heldout", "methods"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}'.")
    if "tie_margin" in raw:
        raise ConfigError(f"{path}: tie_margin belongs to the retired rule; state the rule as replace_se, min_gain "
                          "and extend_se (benchmark/tools/study_rule.py).")
    conditions = raw.get("conditions") or {DEFAULT_CONDITION: {}}
    settings = raw.get("settings") or {}
    for name, overrides in conditions.items():  # every condition must give a valid params.yaml
        condition_params(params, settings, overrides or {}, f"{path}: conditions.{name}")
    registered = available_methods()
    variants, sources = [], {}
    for entry, spec_raw in raw["methods"].items():
        run = spec_raw.get("run")
        spec = run_spec(params, run)
        if entry in registered and spec.method != entry:
            raise ConfigError(f"{path}: methods.{entry}.run is {run!r}, a run of method {spec.method!r}.")
        if not spec_raw.get("variants"):
            raise ConfigError(f"{path}: methods.{entry}.variants lists no variant.")
        sources[entry] = " ".join(str(spec_raw.get("source", "")).split())
        for name, variant in spec_raw["variants"].items():
            variant = variant or {}
            options = dict(variant.get("options") or {})
            # unknown options fail here
            build_method(replace(spec, options={**spec.options, **options}), params["model"])
            where = tuple(variant.get("conditions") or conditions)
            unknown = sorted(set(where) - set(conditions))
            if unknown:
                raise ConfigError(f"{path}: methods.{entry}.variants.{name}.conditions: {unknown[0]!r} is not one of "
                                  f"{', '.join(conditions)}.")
            overrides = variant_settings(variant.get("settings"), f"{path}: methods.{entry}.variants.{name}.settings")
            for condition in where:  # a setting must give a valid params.yaml wherever the variant trains
                condition_params(params, settings, deep_merged(conditions[condition] or {}, overrides),
                                 f"{path}: methods.{entry}.variants.{name} under conditions.{condition}")
            variants.append(Variant(entry, name, run, options, variant.get("ineligible"), where, overrides))
    ranking = (raw.get("ranking") or {}).get("reference")
    if ranking is not None and ranking not in raw["methods"]:
        raise ConfigError(f"{path}: ranking.reference {ranking!r} is not an entry of methods.")
    pooled = None
    if raw.get("pooled"):
        pooled = (str(raw["pooled"].get("reference")), str(raw["pooled"].get("candidate")))
        if not any({v.name for v in variants if v.entry == e} >= set(pooled) for e in raw["methods"]):
            raise ConfigError(f"{path}: pooled: no entry has both variants {pooled[0]!r} and {pooled[1]!r}.")
    heldout = raw["heldout"]
    return Study(path, Rule.from_study(raw["rule"], str(path)), tuple(int(s) for s in raw["seeds"]),
                 tuple(int(s) for s in raw.get("extra_seeds") or ()), tuple(int(s) for s in heldout["generator_seeds"]),
                 int(heldout["count"]), settings, {k: v or {} for k, v in conditions.items()}, tuple(variants),
                 sources, ranking, pooled)


SCHEDULE_KEYS = ("epochs", "batch_size", "steps_per_epoch")  # a variant that changed one would race another schedule


def variant_settings(raw: Any, source: str) -> dict[str, Any]:
    """A variant's own params.yaml overrides: `train` keys only, and none that sets the schedule (data and the
    schedule are a condition's, shared by every variant it trains)."""
    if not raw:
        return {}
    if not isinstance(raw, dict) or set(raw) != {"train"} or not isinstance(raw["train"], dict):
        raise ConfigError(f"{source}: must be {{train: {{key: value}}}}: a variant overrides training keys only "
                          "(data and other sections belong to the study's conditions).")
    fixed = sorted(set(raw["train"]) & set(SCHEDULE_KEYS))
    if fixed:
        raise ConfigError(f"{source}: train.{fixed[0]} sets the schedule, which every variant of a condition shares; "
                          "vary it as a condition.")
    return {"train": dict(raw["train"])}


def condition_params(params: dict[str, Any], settings: dict[str, Any], overrides: dict[str, Any],
                     source: str) -> dict[str, Any]:
    """params.yaml with the study's settings and one condition's overrides, validated like params.yaml."""
    return validate_params(deep_merged(deep_merged(params, settings), overrides), source)


def params_for(study: Study, params: dict[str, Any], condition: str) -> dict[str, Any]:
    return condition_params(params, study.settings, study.conditions[condition],
                            f"{study.path}: conditions.{condition}")


def variant_params(params: dict[str, Any], variant: Variant, seeds: list[int], checkpoints: Path) -> tuple[dict, str]:
    """params.yaml with one run: the variant's options over its run's own, the given seeds; and that run's name."""
    params = deep_merged(params, variant.settings)
    entry = dict(params["runs"][variant.run])
    entry["options"] = {**(entry.get("options") or {}), **variant.options}
    entry["seeds"] = list(seeds)
    name = f"{variant.run}__{variant.name}"
    params["runs"] = {name: entry}
    params["train"]["checkpoint_dir"] = str(checkpoints)
    return params, name


def score_model(method, sets: dict[int, tuple[np.ndarray, np.ndarray]], threshold: float, batch_size: int,
                device: torch.device, desc: str) -> pd.DataFrame:
    rows = []
    for generator_seed, (images, masks) in sets.items():
        probabilities = predict_probabilities(method, images, device, batch_size, f"{desc}/fresh {generator_seed}")
        rows += [{"generator_seed": generator_seed, "image": k, "dice": dice(p > threshold, m),
                  "smeasure": smeasure(p, m)} for k, (p, m) in enumerate(zip(probabilities, masks))]
    return pd.DataFrame(rows)


def fresh_sets(study: Study, data_params: dict[str, Any]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The fresh images, rendered once and kept in work/ (they depend only on the generator settings)."""
    seeds = "_".join(map(str, study.generator_seeds))
    cache = study.work / f"fresh_{seeds}_{study.count}_{data_params['image_size']}.npz"
    if cache.is_file():
        stored = np.load(cache)
        return {s: (stored[f"images_{s}"], stored[f"masks_{s}"]) for s in study.generator_seeds}
    sets = fresh_cbis_sets(data_params, list(study.generator_seeds), study.count)
    atomic_savez(cache, **{f"images_{s}": v[0] for s, v in sets.items()},
                 **{f"masks_{s}": v[1] for s, v in sets.items()})
    return sets


def prepared_for(study: Study, params: dict[str, Any], condition_data: dict[str, Any], pipeline: Path) -> Path:
    """The pipeline's prepared data when a condition keeps params.yaml's `data`, else its own under work/."""
    if condition_data == params["data"]:
        if not (pipeline / "manifest.csv").is_file():
            raise ConfigError(f"{pipeline}: no prepared data; run `dvc repro prepare` first.")
        check_prepared_from(pipeline, params["data"])  # e.g. params.yaml's size changed, prepare not re-run
        return pipeline
    key = hashlib.sha256(json.dumps(condition_data, sort_keys=True).encode()).hexdigest()[:12]
    out = study.work / "prepared" / key
    if not (out / "manifest.csv").is_file():
        prepare(condition_data, out, study.work / "prepared" / f"{key}_preview.png")
    return out


def schedule(params: dict[str, Any]) -> tuple[int, int]:
    """(epochs, image size): what makes two trainings of a variant the same schedule."""
    return int(params["train"]["epochs"]), int(params["data"]["image_size"])


def scores_are_current(path: Path, params: dict[str, Any]) -> bool:
    """Whether a (condition, variant, seed) has scores from a training at its condition's schedule."""
    if not path.is_file():
        return False
    recorded = pd.read_csv(path, usecols=["epochs", "image_size"], nrows=1)
    return len(recorded) == 1 and tuple(int(v) for v in recorded.iloc[0]) == schedule(params)


def recorded_commits(study: Study) -> set[str]:
    return {str(pd.read_csv(path, usecols=["git_commit"], nrows=1)["git_commit"].iloc[0])
            for path in (study.folder / "scores").rglob("seed_*.csv")}


def check_one_commit(study: Study, allow_dirty: bool) -> None:
    """Train only from a clean tree, at the commit of the study's earlier scores (one protocol)."""
    state = git_state()
    if state["git_dirty"] and not allow_dirty:
        raise ConfigError("benchmark/, methods/ or the configuration have uncommitted changes: a study trains from a "
                          "clean tree at one commit (commit first, or --allow-dirty for a trial the report will "
                          "mark as not one protocol).")
    earlier = recorded_commits(study) - {state["git_commit"]}
    if earlier and not allow_dirty:
        shown = ", ".join(sorted(c[:10] for c in earlier))
        raise ConfigError(f"{study.folder / 'scores'}: scores from commit {shown}, "
                          f"this checkout is {str(state['git_commit'])[:10]}: continue the study at that commit "
                          "(e.g. `git worktree add ../study <commit>`), or remove its scores to start over.")


def train_and_score(study: Study, condition: str, params: dict[str, Any], prepared: Path, variant: Variant,
                    seeds: list[int], sets: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Train a variant's seeds as one run, as the pipeline trains them (side by side at the same threads per
    seed), then score each seed's final weights on the fresh images; the score file is written last."""
    device = pick_device(params["train"].get("device", "auto"))
    out = study.work / condition / variant.entry / variant.name
    run_params, name = variant_params(params, variant, seeds, study.work / "checkpoints" / condition)
    spec = run_spec(run_params, name)
    train_run(spec, run_params, prepared, out)
    models = load_run_models(out / name)
    info = read_json(out / name / "train_info.json")  # what trained it, so the report can check it is one protocol
    threshold, batch_size = float(params["evaluate"]["threshold"]), int(params["evaluate"]["batch_size"])
    for seed in seeds:
        method = build_method(spec, params["model"]).to(device)
        method.load_state_dict(torch.load(models[seed], map_location=device, weights_only=True))
        scores = score_model(method, sets, threshold, batch_size, device,
                             f"{condition}/{variant.entry}/{variant.name}/seed {seed}")
        provenance = info["seeds"][str(seed)]["provenance"]
        scores = scores.assign(epochs=info["epochs"], image_size=info["image_size"], precision=info["precision"],
                               threads=info["threads"], git_commit=provenance["git_commit"],
                               git_dirty=provenance["git_dirty"])
        atomic_write_csv(study.scores_path(condition, variant, seed), scores)


def pending(study: Study, condition: str, params: dict[str, Any], entries: list[str],
            results: pd.DataFrame) -> list[tuple[Variant, list[int]]]:
    """What is left to train in a condition: the study's seeds, then the extra seeds the rule asked for."""
    todo = []
    for entry in entries:
        for variant in study.variants_of(entry, condition):
            wanted = list(study.seeds) + (list(study.extra_seeds) if variant.name in extended(study, results, entry,
                                                                                               condition) else [])
            missing = [s for s in wanted if not scores_are_current(study.scores_path(condition, variant, s), params)]
            if missing:
                todo.append((variant, missing))
    return todo


def run_study(study: Study, params: dict[str, Any], prepared: Path, entries: list[str],
              allow_dirty: bool = False) -> None:
    """Train and score every (condition, variant, seed) of the given entries without current scores; then the
    extra seeds of any variant the rule leaves between its bounds (scores of another schedule are replaced)."""
    check_one_commit(study, allow_dirty)
    for condition in study.conditions:
        cparams = params_for(study, params, condition)
        for _round in ("seeds", "extra seeds"):
            todo = pending(study, condition, cparams, entries, collect(study))
            if not todo:
                continue
            outdated = sum(study.scores_path(condition, v, s).is_file() for v, seeds in todo for s in seeds)
            if outdated:
                epochs, size = schedule(cparams)
                tqdm.write(f"{condition}: {outdated} score file(s) come from trainings at another schedule; "
                           f"re-training them at {epochs} epochs, {size} px")
            cprepared = prepared_for(study, params, cparams["data"], prepared)
            sets = fresh_sets(study, cparams["data"])
            for variant, seeds in tqdm(todo, desc=f"study {condition}", unit="variant"):
                train_and_score(study, condition, cparams, cprepared, variant, seeds, sets)


def read_scores(study: Study, condition: str, variant: Variant) -> dict[int, pd.DataFrame]:
    seeds = [*study.seeds, *study.extra_seeds]
    paths = {seed: study.scores_path(condition, variant, seed) for seed in seeds}
    return {seed: pd.read_csv(path) for seed, path in paths.items() if path.is_file()}


def collect(study: Study) -> pd.DataFrame:
    """One row per finished (condition, entry, variant, seed): held-out Dice and S_m in %, pooled over the images."""
    rows = []
    for condition in study.conditions:
        for v in study.variants:
            if condition not in v.conditions:
                continue
            for seed, scores in read_scores(study, condition, v).items():
                rows.append({"condition": condition, "entry": v.entry, "variant": v.name, "seed": seed,
                             "n_images": len(scores), "dice": round(100 * scores["dice"].mean(), 3),
                             "smeasure": round(100 * scores["smeasure"].mean(), 3),
                             **{key: scores[key].iloc[0] for key in PROTOCOL_COLUMNS}})
    return pd.DataFrame(rows, columns=["condition", "entry", "variant", "seed", "n_images", "dice", "smeasure",
                                       *PROTOCOL_COLUMNS])


def reference_of(study: Study, entry: str, condition: str) -> str | None:
    return next((v.name for v in study.variants_of(entry, condition) if v.ineligible is None), None)


def verdicts(study: Study, results: pd.DataFrame, entry: str, condition: str) -> dict[str, Verdict]:
    """The rule's verdict on every eligible variant against the reference, from the seeds both have."""
    frame = results[(results["entry"] == entry) & (results["condition"] == condition)]
    reference = reference_of(study, entry, condition)
    ref = frame[frame["variant"] == reference].set_index("seed")["dice"]
    found = {}
    for v in study.variants_of(entry, condition):
        if v.ineligible is None and v.name != reference:
            mine = frame[frame["variant"] == v.name].set_index("seed")["dice"]
            shared = sorted(set(ref.index) & set(mine.index))
            found[v.name] = judge((mine[shared] - ref[shared]).tolist(), study.rule, len(study.seeds),
                                  len(study.extra_seeds))
    return found


def pooled_entries(study: Study, condition: str) -> list[str]:
    """The entries the pooled decision covers in a condition: those with both of its variants."""
    if study.pooled is None:
        return []
    return [e for e in study.entries() if {v.name for v in study.variants_of(e, condition)} >= set(study.pooled)]


def pooled_gains(study: Study, results: pd.DataFrame, condition: str) -> pd.Series:
    """Per seed that every pooled entry has: the candidate's held-out gain over the reference, averaged over them."""
    reference, candidate = study.pooled or ("", "")
    frame = results[results["condition"] == condition]
    gains = []
    for entry in pooled_entries(study, condition):
        rows = frame[frame["entry"] == entry]
        dice = {name: rows[rows["variant"] == name].set_index("seed")["dice"] for name in (reference, candidate)}
        gains.append((dice[candidate] - dice[reference]).rename(entry))
    return pd.concat(gains, axis=1).dropna().mean(axis=1) if gains else pd.Series(dtype=float)


def pooled_verdict(study: Study, results: pd.DataFrame, condition: str) -> Verdict:
    return judge(pooled_gains(study, results, condition).tolist(), study.rule, len(study.seeds),
                 len(study.extra_seeds))


def extended(study: Study, results: pd.DataFrame, entry: str, condition: str) -> set[str]:
    """Variants (and the reference) that train the extra seeds: the rule found a gain between its bounds."""
    if entry in pooled_entries(study, condition):  # one decision: every pooled entry trains the extra seeds alike
        verdict = pooled_verdict(study, results, condition)
        return set(study.pooled or ()) if verdict.state == EXTEND or verdict.seeds > len(study.seeds) else set()
    between = {name for name, v in verdicts(study, results, entry, condition).items() if v.state == EXTEND
               or v.seeds > len(study.seeds)}
    return between | ({reference_of(study, entry, condition)} if between else set())


def decide(study: Study, results: pd.DataFrame, entry: str, condition: str) -> tuple[str | None, str]:
    """(chosen variant, why) by the study's rule; None until decided."""
    if entry in pooled_entries(study, condition):
        reference, candidate = study.pooled or ("", "")
        chosen, why = choose(reference, {candidate: pooled_verdict(study, results, condition)})
        return chosen, f"pooled over {len(pooled_entries(study, condition))} entries: {why}"
    reference = reference_of(study, entry, condition)
    if reference is None:
        return None, "no eligible variant"
    return choose(reference, verdicts(study, results, entry, condition))


def pooled_lines(study: Study, results: pd.DataFrame) -> list[str]:
    """The one decision the pooled variants get, per condition, with the per-seed gains it rests on."""
    reference, candidate = study.pooled or ("", "")
    lines = [f"## Pooled decision: {candidate} against {reference}", "",
             f"One choice for every entry that has both variants: per seed, {candidate}'s held-out Dice gain over "
             f"{reference}, averaged over those entries, judged by the rule. The entries' own verdicts below are "
             "evidence, not the decision.", ""]
    for condition in study.conditions:
        gains = pooled_gains(study, results, condition)
        chosen, why = choose(reference, {candidate: pooled_verdict(study, results, condition)})
        label = f"{condition}: " if study.named_conditions else ""
        per_seed = ", ".join(f"seed {seed}: {gain:+.2f}" for seed, gain in gains.items()) or "none yet"
        lines.append(f"- {label}{len(pooled_entries(study, condition))} entries; pooled gain per seed: {per_seed}. "
                     f"**Choice:** {chosen or '-'} ({why}).")
    return lines + [""]


def configured_variant(study: Study, params: dict[str, Any], entry: str) -> str | None:
    """The variant whose options (over the method's defaults) and settings params.yaml's run currently has, if any."""
    variants = [v for v in study.variants if v.entry == entry]
    current = build_method(run_spec(params, variants[0].run), params["model"]).options
    for v in variants:
        if all(current.get(key) == value for key, value in v.options.items()) and \
                all(params["train"].get(key) == value for key, value in v.settings.get("train", {}).items()):
            return v.name
    return None


def protocol_line(study: Study, results: pd.DataFrame, params: dict[str, Any]) -> str:
    """Whether every training ran one protocol: one commit, a clean tree, each condition's schedule."""
    if results.empty:
        return "No training has finished yet."
    problems, used = [], []
    commits = sorted({str(c) for c in results["git_commit"]})
    if len(commits) > 1:
        problems.append(f"trainings at {len(commits)} commits ({', '.join(c[:10] for c in commits)})")
    if not results["git_dirty"].astype(str).isin(["False", "false"]).all():
        problems.append("some trainings from a tree with uncommitted changes")
    for condition, frame in results.groupby("condition", sort=False):
        runs = frame[["epochs", "image_size", "precision"]].drop_duplicates()
        used.append(f"{condition}: " + "; ".join(f"{r.epochs} epochs, {r.image_size} px, {r.precision}"
                                                 for r in runs.itertuples()))
        if len(runs) > 1 or (int(runs.iloc[0]["epochs"]), int(runs.iloc[0]["image_size"])) != \
                schedule(params_for(study, params, condition)):
            problems.append(f"{condition} not at one schedule, or not today's")
    where = f"code at {commits[0][:10]}" if len(commits) == 1 else "several commits"
    verdict = "one protocol (one commit, clean tree, each condition at today's schedule)" if not problems else \
        "**not one protocol: " + "; ".join(problems) + ": re-run the study**"
    return f"Trainings: {' | '.join(used)} ({where}): {verdict}."


def spread(values: pd.Series) -> str:
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def tuning_lines(study: Study, params: dict[str, Any], results: pd.DataFrame, entry: str, condition: str) -> list[str]:
    variants = study.variants_of(entry, condition)
    frame = results[(results["entry"] == entry) & (results["condition"] == condition)]
    reference = reference_of(study, entry, condition)
    title = f"## {entry} (run `{variants[0].run}`)" + (f", {condition}" if study.named_conditions else "")
    lines = [title, ""]
    if study.sources.get(entry):
        lines += [f"Source (the reference follows it): {study.sources[entry]}", ""]
    lines += ["| variant | options | seeds | held-out Dice | held-out S_m | Dice per seed "
              "| paired Δ Dice vs reference (± SE): rule |", "|---|---|---|---|---|---|---|"]
    judged = verdicts(study, results, entry, condition)
    for v in variants:
        rows = frame[frame["variant"] == v.name].set_index("seed").sort_index()
        options = ", ".join([f"{k}: {val}" for k, val in v.options.items()]
                            + [f"train.{k}: {val}" for k, val in v.settings.get("train", {}).items()])
        name = v.name + (" (reference)" if v.name == reference else "") + (" (ineligible)" if v.ineligible else "")
        if rows.empty:
            lines.append(f"| {name} | {options} | 0 | - | - | - | - |")
            continue
        delta = judged[v.name].describe() if v.name in judged else "-"
        lines.append(f"| {name} | {options} | {len(rows)} | {spread(rows['dice'])} | {spread(rows['smeasure'])} | "
                     + " / ".join(f"{x:.2f}" for x in rows["dice"]) + f" | {delta} |")
    lines.append("")
    for v in variants:
        if v.ineligible:
            lines.append(f"- {v.name} is ineligible: {' '.join(v.ineligible.split())}.")
    chosen, why = decide(study, results, entry, condition)
    lines.append(f"- **Choice:** {chosen or '-'} ({why}).")
    if chosen is not None and condition == DEFAULT_CONDITION:
        current = configured_variant(study, params, entry)
        follows = "follows it" if current == chosen else \
            f"does NOT follow it (it configures {current or 'none of the variants'})"
        lines.append(f"- params.yaml / the method's defaults {follows}.")
    return lines + [""]


def image_matrix(study: Study, condition: str, variant: Variant) -> np.ndarray | None:
    """(seeds, images) held-out Dice of the study's seeds, None until every one has scores."""
    scores = read_scores(study, condition, variant)
    if any(seed not in scores for seed in study.seeds):
        return None
    return np.stack([scores[seed].sort_values(["generator_seed", "image"])["dice"].to_numpy()
                     for seed in study.seeds])


def ranked_variant(study: Study, results: pd.DataFrame, entry: str, condition: str,
                   configured: str | None) -> str | None:
    """The reading an entry races in a condition: where it trains several, the one the rule chose there (the
    configured one until the rule has decided); otherwise its only one."""
    here = [v.name for v in study.variants_of(entry, condition)]
    if len(here) > 1:
        chosen, _why = decide(study, results, entry, condition)
        if chosen is not None:
            return chosen
    return configured if configured in here else (here[0] if len(here) == 1 else None)


def build_race(study: Study, params: dict[str, Any], results: pd.DataFrame) -> dict[str, Any]:
    """The race across conditions as data (written beside the report as race.json, which the pipeline's report
    quotes): per condition each entry's ranked reading with its held-out Dice, Kendall's tau between consecutive
    conditions, and the reference entry minus every other entry per condition."""
    entries = {}
    for name in study.entries():
        spec = run_spec(params, next(v.run for v in study.variants if v.entry == name))
        entries[name] = study_ranking.Entry(name, spec.row, round(100 * spec.strong_fraction, 2))
    configured = {entry: configured_variant(study, params, entry) for entry in study.entries()}  # builds each once
    matrices: dict[str, dict[str, np.ndarray]] = {}
    readings: dict[str, dict[str, str]] = {}  # condition -> entry -> the reading ranked there
    for condition in study.conditions:
        matrices[condition], readings[condition] = {}, {}
        for entry in study.entries():
            name = ranked_variant(study, results, entry, condition, configured[entry])
            variant = next((v for v in study.variants_of(entry, condition) if v.name == name), None)
            matrix = image_matrix(study, condition, variant) if variant is not None else None
            if matrix is not None:
                matrices[condition][entry] = matrix
                readings[condition][entry] = name
    names = list(study.conditions)
    data: dict[str, Any] = {
        "study": study.folder.name,
        "entries": {name: {"label": entry.label, "configured": configured[name]} for name, entry in entries.items()},
        "conditions": {c: {"overrides": study.conditions[c], "ranking": [
            {"entry": name, "reading": readings[c][name], "dice": mean, "std": std, "seeds": n}
            for name, mean, std, n in study_ranking.ranking(matrices[c])]} for c in names},
        "tau": [], "reference": study.ranking_reference, "claims": []}
    for first, second in zip(names, names[1:]):
        try:
            tau, low, high, n = study_ranking.kendall_tau(matrices[first], matrices[second])
            data["tau"].append({"first": first, "second": second, "tau": tau, "low": low,
                                "high": high, "entries": n, "resamples": study_ranking.RESAMPLES})
        except ValueError as error:
            data["tau"].append({"first": first, "second": second, "missing": str(error)})
    reference = study.ranking_reference
    if reference is not None:
        found = {c: {claim.other.name: claim for claim in
                     study_ranking.claims(entries[reference], matrices[c], entries)} for c in names}
        for entry in study.entries():
            if entry == reference or not any(entry in found[c] for c in names):
                continue
            judged = {c: found[c][entry] for c in names if entry in found[c]}
            data["claims"].append({
                "entry": entry, "paper": next(iter(judged.values())).paper,
                "conditions": {c: {"difference": claim.mean, "low": claim.low,
                                   "high": claim.high, "verdict": claim.verdict}
                               for c, claim in judged.items()},
                "changes": (len({claim.verdict for claim in judged.values()}) > 1  # null until every condition
                            if len(judged) == len(names) else None)})                # has judged it
    return data


def ranking_lines(race: dict[str, Any]) -> list[str]:
    """Per condition the ranking of each entry's reading there, Kendall's tau between conditions, the claims."""
    names, entries = list(race["conditions"]), race["entries"]
    lines = ["## Ranking per condition", "",
             "Each entry's reading in that condition: its configured one (params.yaml), or, where the study races "
             "several readings of it there, the one the rule chose (named in the cell); held-out Dice (%) over the "
             "study's seeds (mean ± std; a seed's Dice is its mean over every fresh image); rank in brackets.", "",
             "| entry | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    placed = {c: {row["entry"]: (k + 1, row) for k, row in enumerate(race["conditions"][c]["ranking"])}
              for c in names}
    for entry, described in entries.items():
        cells = []
        for condition in names:
            if entry in placed[condition]:
                rank, row = placed[condition][entry]
                named = f" {row['reading']}" if row["reading"] != described["configured"] else ""
                cells.append(f"{row['dice']:.2f} ± {row['std']:.2f} (#{rank}){named}")
            else:
                cells.append("-")
        lines.append(f"| {described['label']} | " + " | ".join(cells) + " |")
    lines.append("")
    for tau in race["tau"]:
        if "missing" in tau:
            lines.append(f"- Kendall's tau between {tau['first']} and {tau['second']}: not yet ({tau['missing']}).")
        else:
            lines.append(f"- **Kendall's tau** between the {tau['first']} and {tau['second']} rankings: "
                         f"{tau['tau']:.2f} (95% interval {tau['low']:.2f} to {tau['high']:.2f}, {tau['resamples']} "
                         f"two-stage bootstrap resamples of seeds and images, {tau['entries']} entries).")
    reference = race["reference"]
    if reference is not None:
        lines += ["", f"## The paper's Table-1 claims per condition: {entries[reference]['label']} minus every other "
                  "entry", "", "Held-out Dice difference (points), two-stage bootstrap 95% CI (seeds, then the shared "
                  "fresh images); *paper*: the same difference in the paper's Table 1 (CBIS Dice); the verdict as "
                  "in reports/tables.md.", "",
                  "| other | paper | " + " | ".join(names) + " | changes with the condition |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        for claim in race["claims"]:
            judged = claim["conditions"]
            cells = [f"{c['difference']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] {c['verdict'] or ''}".strip()
                     if (c := judged.get(condition)) else "-" for condition in names]
            change = {True: "yes", False: "no", None: "-"}[claim["changes"]]
            paper = "-" if claim["paper"] is None else f"{claim['paper']:+.2f}"
            lines.append(f"| {entries[claim['entry']]['label']} | {paper} | " + " | ".join(cells) + f" | {change} |")
    return lines + [""]


def render_report(study: Study, params: dict[str, Any], results: pd.DataFrame,
                  race: dict[str, Any] | None = None) -> str:
    """The study's report.md; `race` is build_race's, computed here where a study ranks and none is given."""
    conditions = "; ".join(f"{name}: {json.dumps(overrides, sort_keys=True)}" for name, overrides
                           in study.conditions.items()) if study.named_conditions else "params.yaml as it is"
    lines = [f"# Study: {study.folder.name}", "",
             f"Written by `python -m benchmark study {study.path}`; every number below is measured on fresh synthetic "
             f"CBIS-like images (generator seeds {', '.join(map(str, study.generator_seeds))}, {study.count} each; the "
             f"pipeline's data.synthetic.seed is {params['data']['synthetic']['seed']}), never on the test split. "
             f"Training: the pipeline's code and training split, seeds {', '.join(map(str, study.seeds))}"
             + (f" (extra seeds {', '.join(map(str, study.extra_seeds))} where the rule asks)" if study.extra_seeds
                else "") + f"; today's default params.yaml: {params['train']['epochs']} epochs, "
             f"{params['data']['image_size']} px. Settings for every training: "
             f"{json.dumps(study.settings, sort_keys=True) if study.settings else 'none'}. Conditions: {conditions}.",
             "", f"**Rule** (written before the runs): {study.rule.text(len(study.seeds), len(study.extra_seeds))}", "",
             protocol_line(study, results, params), ""]
    if study.ranking_reference is not None:
        lines += ranking_lines(race if race is not None else build_race(study, params, results))
    if study.pooled is not None:
        lines += pooled_lines(study, results)
    for condition in study.conditions:
        for entry in study.entries():
            if len(study.variants_of(entry, condition)) > 1:
                lines += tuning_lines(study, params, results, entry, condition)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the study file, e.g. studies/fair_comparison/study.yaml")
    parser.add_argument("--methods", nargs="+", default=None, help="only these entries of the study (default: all)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished trainings")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="train from uncommitted changes or another commit "
                             "(the report then says: not one protocol)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: params.yaml train.num_threads); 1 on a busy machine, "
                             "where 2 threads per process stall each other")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.threads is not None:
            params["train"]["num_threads"] = args.threads
        if params["data"].get("source", "synthetic") != "synthetic":
            raise ConfigError("benchmark.tools.study decides on fresh synthetic images: "
                              "data.source must be 'synthetic'.")
        study = load_study(args.study, params)
        entries = args.methods or study.entries()
        unknown = sorted(set(entries) - set(study.entries()))
        if unknown:
            raise ConfigError(f"--methods: {unknown} not in {args.study} (it has {', '.join(study.entries())}).")
        if not args.report_only:
            run_study(study, params, Path(args.prepared), entries, args.allow_dirty)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    results = collect(study)
    atomic_write_csv(study.folder / "results.csv", results)
    race = build_race(study, params, results) if study.ranking_reference is not None else None
    if race is not None:
        atomic_write_text(study.folder / RACE_FILE, json.dumps(race, indent=1) + "\n")
    report = render_report(study, params, results, race)
    atomic_write_text(study.folder / "report.md", report + "\n")
    print(report)


if __name__ == "__main__":
    sys.exit(run_cli(main))
