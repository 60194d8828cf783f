"""A tuning study of methods' open choices, decided on fresh held-out images only.

    python -m benchmark study studies/fair_comparison/study.yaml [--methods ours dcr] [--report-only]

A study file lists, per method, a configured run of params.yaml and up to a few *variants* (option sets
for that run, the simplest reading first) plus the decision rule, written before any run. For every
method x variant x seed the study trains the run exactly as the pipeline would (`benchmark.training.train.train_run`
on data/prepared with the default params.yaml, the variant's options merged over the run's own) and
scores the final weights on fresh synthetic CBIS-like images from other generator seeds
(`benchmark.tools.heldout.fresh_cbis_sets`): Dice at the evaluate stage's threshold and S-measure. The test
split is never read. Then it applies the rule and writes `report.md` and `results.csv` beside the study
file: per variant the held-out Dice and S_m over seeds (mean ± std), the per-seed paired difference from
the reference variant, the choice, and whether params.yaml follows it.

Resumable: each finished (variant, seed) leaves its per-image scores in
`scores/<method>/<variant>/seed_<s>.csv` beside the study file (small, committed: the study's record, so a
fresh clone continues where the last one stopped), and an interrupted training resumes from its per-epoch
checkpoint under `work/checkpoints`; re-running the command continues where it stopped. `work/` (models,
checkpoints, the rendered fresh images) is a git-ignored scratch folder.

Why not `dvc exp run --queue`: a DVC experiment re-runs the pipeline's evaluate and report stages, which
score on the test split, the one thing a tuning study must not look at; and it would copy the workspace
per variant. The study's trainings are the pipeline's own code, so a chosen variant gives the same
weights in `dvc repro`.
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from benchmark.artifacts import atomic_savez, atomic_write_csv, atomic_write_text, read_json
from benchmark.cli import run_cli
from benchmark.config import ConfigError, load_params, run_spec
from benchmark.evaluation.evaluate import load_run_models, predict_probabilities
from benchmark.evaluation.metrics import dice, smeasure
from benchmark.tools.heldout import fresh_cbis_sets
from benchmark.training.runtime import pick_device
from benchmark.training.train import build_method, train_run

PROTOCOL_COLUMNS = ("epochs", "image_size", "precision", "git_commit")  # recorded with every training's scores


@dataclass(frozen=True)
class Variant:
    method: str
    name: str
    run: str  # the params.yaml run it varies
    options: dict[str, Any]
    ineligible: str | None  # why it cannot be chosen (None: eligible)


@dataclass(frozen=True)
class Study:
    path: Path
    rule: str
    tie_margin: float
    seeds: tuple[int, ...]
    generator_seeds: tuple[int, ...]
    count: int
    variants: tuple[Variant, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def work(self) -> Path:
        return self.folder / "work"

    def scores_path(self, variant: "Variant", seed: int) -> Path:
        return self.folder / "scores" / variant.method / variant.name / f"seed_{seed}.csv"

    def methods(self) -> list[str]:
        return list(dict.fromkeys(v.method for v in self.variants))


def load_study(path: str | Path, params: dict[str, Any]) -> Study:
    """Read and check a study file against params.yaml (runs exist, methods match, options are known)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found.")
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("rule", "tie_margin", "seeds", "heldout", "methods"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}'.")
    variants = []
    for method, entry in raw["methods"].items():
        run = entry.get("run")
        spec = run_spec(params, run)
        if spec.method != method:
            raise ConfigError(f"{path}: methods.{method}.run is {run!r}, a run of method {spec.method!r}.")
        if not entry.get("variants"):
            raise ConfigError(f"{path}: methods.{method}.variants lists no variant.")
        for name, variant in entry["variants"].items():
            options = dict((variant or {}).get("options") or {})
            # unknown options fail here
            build_method(replace(spec, options={**spec.options, **options}), params["model"])
            variants.append(Variant(method, name, run, options, (variant or {}).get("ineligible")))
    heldout = raw["heldout"]
    return Study(path, " ".join(str(raw["rule"]).split()), float(raw["tie_margin"]),
                 tuple(int(s) for s in raw["seeds"]),
                 tuple(int(s) for s in heldout["generator_seeds"]), int(heldout["count"]), tuple(variants))


def variant_params(params: dict[str, Any], variant: Variant, seeds: list[int], checkpoints: Path) -> tuple[dict, str]:
    """params.yaml with one run: the variant's options over its run's own, the given seeds; and that run's name."""
    params = copy.deepcopy(params)
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


def default_schedule(params: dict[str, Any]) -> tuple[int, int]:
    """(epochs, image size): what makes two trainings of a variant the same protocol (see `protocol_line`)."""
    return int(params["train"]["epochs"]), int(params["data"]["image_size"])


def scores_are_current(path: Path, params: dict[str, Any]) -> bool:
    """Whether a (variant, seed) has scores from a training at today's default schedule."""
    if not path.is_file():
        return False
    recorded = pd.read_csv(path, usecols=["epochs", "image_size"], nrows=1)
    return len(recorded) == 1 and tuple(int(v) for v in recorded.iloc[0]) == default_schedule(params)


def run_study(study: Study, params: dict[str, Any], prepared: Path, methods: list[str]) -> None:
    """Train and score every (variant, seed) of the given methods that has no scores at today's default schedule
    (scores from another schedule are replaced: a choice rests on one protocol, the one the pipeline trains)."""
    device = pick_device(params["train"].get("device", "auto"))
    sets = fresh_sets(study, params["data"])
    todo = [(v, [s for s in study.seeds if not scores_are_current(study.scores_path(v, s), params)])
            for v in study.variants if v.method in methods]
    todo = [(variant, seeds) for variant, seeds in todo if seeds]
    outdated = sum(study.scores_path(v, s).is_file() for v, seeds in todo for s in seeds)
    if outdated:
        epochs, size = default_schedule(params)
        tqdm.write(f"{outdated} score file(s) come from trainings at another schedule; re-training them at "
                   f"today's default ({epochs} epochs, {size} px)")
    threshold, batch_size = float(params["evaluate"]["threshold"]), int(params["evaluate"]["batch_size"])
    for variant, seeds in tqdm(todo, desc="study", unit="variant"):
        # a variant's seeds train as one run, as the pipeline trains them (train.seed_workers: side by side at the
        # same threads per seed), so a chosen variant's weights are the ones `dvc repro` gives
        out = study.work / variant.method / variant.name
        run_params, name = variant_params(params, variant, seeds, study.work / "checkpoints")
        spec = run_spec(run_params, name)
        train_run(spec, run_params, prepared, out)
        models = load_run_models(out / name)
        info = read_json(out / name / "train_info.json")  # what trained it, so the report can check it is one protocol
        for seed in seeds:
            method = build_method(spec, params["model"]).to(device)
            method.load_state_dict(torch.load(models[seed], map_location=device, weights_only=True))
            scores = score_model(method, sets, threshold, batch_size, device,
                                 f"{variant.method}/{variant.name}/seed {seed}")
            provenance = info["seeds"][str(seed)]["provenance"]
            scores = scores.assign(epochs=info["epochs"], image_size=info["image_size"], precision=info["precision"],
                                   threads=info["threads"], git_commit=provenance["git_commit"],
                                   git_dirty=provenance["git_dirty"])
            atomic_write_csv(study.scores_path(variant, seed), scores)  # last: marks this (variant, seed) done


def collect(study: Study) -> pd.DataFrame:
    """One row per finished (method, variant, seed): held-out Dice and S_m in %, pooled over the fresh images."""
    rows = []
    for v in study.variants:
        for seed in study.seeds:
            path = study.scores_path(v, seed)
            if path.is_file():
                scores = pd.read_csv(path)
                rows.append({"method": v.method, "variant": v.name, "seed": seed, "n_images": len(scores),
                             "dice": round(100 * scores["dice"].mean(), 3),
                             "smeasure": round(100 * scores["smeasure"].mean(), 3),
                             **{key: scores[key].iloc[0] for key in PROTOCOL_COLUMNS}})
    return pd.DataFrame(rows, columns=["method", "variant", "seed", "n_images", "dice", "smeasure", *PROTOCOL_COLUMNS])


def choose(study: Study, results: pd.DataFrame, method: str) -> tuple[str | None, str]:
    """(chosen variant, why) by the study's rule; None until every eligible variant has every seed."""
    variants = [v for v in study.variants if v.method == method]
    eligible = [v.name for v in variants if v.ineligible is None]
    if not eligible:
        return None, "no eligible variant"
    frame = results[results["method"] == method]
    counts = frame.groupby("variant")["seed"].nunique()
    missing = [name for name in eligible if counts.get(name, 0) < len(study.seeds)]
    if missing:
        return None, f"not decided: {', '.join(missing)} still training"
    score = frame.groupby("variant")["dice"].mean()
    reference, best = eligible[0], max(eligible, key=lambda name: score[name])
    gain = score[best] - score[reference]
    if best != reference and gain > study.tie_margin:
        return best, f"{best} beats the reference {reference} by {gain:+.2f} Dice (> {study.tie_margin})"
    if best != reference:
        return reference, (f"{best} is best by {gain:+.2f} Dice, within the tie margin {study.tie_margin}: "
                           f"the reference {reference} stays")
    return reference, f"the reference {reference} has the highest held-out Dice"


def configured_variant(study: Study, params: dict[str, Any], method: str) -> str | None:
    """The variant whose options params.yaml's run (with the method's defaults) currently has, if any."""
    variants = [v for v in study.variants if v.method == method]
    spec = run_spec(params, variants[0].run)
    current = build_method(spec, params["model"]).options
    for v in variants:
        if all(current.get(key) == value for key, value in v.options.items()):
            return v.name
    return None


def protocol_line(results: pd.DataFrame, params: dict[str, Any]) -> str:
    """Whether every training of the study ran one protocol, and the current params.yaml's."""
    if results.empty:
        return "No training has finished yet."
    used = results[["epochs", "image_size", "precision"]].drop_duplicates()
    commits = ", ".join(sorted({str(c)[:10] for c in results["git_commit"]}))
    text = "; ".join(f"{r.epochs} epochs, {r.image_size} px, {r.precision}" for r in used.itertuples())
    same = len(used) == 1 and (int(used.iloc[0]["epochs"]), int(used.iloc[0]["image_size"])) == default_schedule(params)
    verdict = "one protocol, today's default schedule" if same else \
        "**not one protocol, or not today's default schedule: re-run the study**"
    return f"Trainings: {text} (code at {commits}): {verdict}."


def render_report(study: Study, params: dict[str, Any], results: pd.DataFrame) -> str:
    lines = [f"# Study: {study.folder.name}", "",
             f"Written by `python -m benchmark study {study.path}`; every number below is measured on fresh synthetic "
             f"CBIS-like images (generator seeds {', '.join(map(str, study.generator_seeds))}, {study.count} each; the "
             f"pipeline's data.synthetic.seed is {params['data']['synthetic']['seed']}), never on the test split. "
             f"Training: the pipeline's code and training split, seeds {', '.join(map(str, study.seeds))}; today's "
             f"default params.yaml: {params['train']['epochs']} epochs, {params['data']['image_size']} px, structure "
             f"window {params['train'].get('structure_window', 'scaled')} (what the trainings used: below).", "",
             f"**Rule** (written before the runs): {study.rule}", "",
             protocol_line(results, params),
             "", "Variants per method: " + ", ".join(f"{m} {sum(v.method == m for v in study.variants)}"
                                                   for m in study.methods()) + ".", ""]
    for method in study.methods():
        variants = [v for v in study.variants if v.method == method]
        frame = results[results["method"] == method]
        reference = next((v.name for v in variants if v.ineligible is None), None)
        lines += [f"## {method} (run `{variants[0].run}`)", "",
                  "| variant | options | seeds | held-out Dice | held-out S_m | Dice per seed "
                  "| paired Δ Dice vs reference |",
                  "|---|---|---|---|---|---|---|"]
        ref_frame = frame[frame["variant"] == reference].set_index("seed")
        for v in variants:
            rows = frame[frame["variant"] == v.name].set_index("seed").sort_index()
            options = ", ".join(f"{k}: {val}" for k, val in v.options.items())
            name = v.name + (" (reference)" if v.name == reference else "") + (" (ineligible)" if v.ineligible else "")
            if rows.empty:
                lines.append(f"| {name} | {options} | 0 | - | - | - | - |")
                continue
            dice_, sm = rows["dice"], rows["smeasure"]
            spread = lambda s: f"{s.mean():.2f} ± {s.std(ddof=1):.2f}" if len(s) > 1 else f"{s.mean():.2f}"  # noqa: E731
            shared = rows.index.intersection(ref_frame.index)
            delta = "-"
            if v.name != reference and len(shared):
                d = rows.loc[shared, "dice"] - ref_frame.loc[shared, "dice"]
                delta = f"{d.mean():+.2f}" + (f" ± {d.std(ddof=1) / np.sqrt(len(d)):.2f} (SE, {len(d)} seeds)"
                                              if len(d) > 1 else " (1 seed)")
            lines.append(f"| {name} | {options} | {len(rows)} | {spread(dice_)} | {spread(sm)} | "
                         + " / ".join(f"{x:.2f}" for x in dice_) + f" | {delta} |")
        lines.append("")
        for v in variants:
            if v.ineligible:
                lines.append(f"- {v.name} is ineligible: {' '.join(v.ineligible.split())}.")
        chosen, why = choose(study, results, method)
        current = configured_variant(study, params, method)
        lines.append(f"- **Choice:** {chosen or '-'} ({why}).")
        if chosen is not None:
            follows = "follows it" if current == chosen else \
                f"does NOT follow it (it configures {current or 'none of the variants'})"
            lines.append(f"- params.yaml / the method's defaults {follows}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the study file, e.g. studies/fair_comparison/study.yaml")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods of the study (default: all)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished trainings")
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
        methods = args.methods or study.methods()
        unknown = sorted(set(methods) - set(study.methods()))
        if unknown:
            raise ConfigError(f"--methods: {unknown} not in {args.study} (it has {', '.join(study.methods())}).")
        if not args.report_only:
            if not (Path(args.prepared) / "manifest.csv").is_file():
                raise ConfigError(f"{args.prepared}: no prepared data; run `dvc repro prepare` first.")
            run_study(study, params, Path(args.prepared), methods)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    results = collect(study)
    atomic_write_csv(study.folder / "results.csv", results)
    report = render_report(study, params, results)
    atomic_write_text(study.folder / "report.md", report + "\n")
    print(report)


if __name__ == "__main__":
    sys.exit(run_cli(main))
