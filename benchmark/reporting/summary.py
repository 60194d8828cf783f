"""The report's summary: data, network, hardware, time, seeds, the code and software the runs were trained with,
and what the two evaluation protocols measure."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.reporting.results import DATASETS, Protocol, RunResult, commit_of, thresholds
from benchmark.reporting.tables import LOSS_MARK, minutes

LOCK_FILE = Path("requirements.lock")  # the exact environment (README "Quickstart"); the summary compares with it


def _seeds_line(results: list[RunResult]) -> str:
    sets = Counter(tuple(result.seeds) for result in results)
    if len(sets) == 1:
        (seeds, _), = sets.items()
        if len(seeds) == 1:
            return (f"- **Seeds:** one seed ({seeds[0]}) per run: every cell is a single value, no spread over seeds "
                    "is shown; the paired CIs reflect test-image sampling only.")
        return (f"- **Seeds:** {len(seeds)} per run ({', '.join(seeds)}): every cell is mean ± std over seeds "
                f"(std with ddof=1, n = number of seeds).")
    listed = "; ".join(f"{', '.join(seeds)} ({count} runs)" for seeds, count in sorted(sets.items()))
    return f"- **Seeds:** differ between runs: {listed}. Cells are mean ± std (n) over each run's seeds."

def _mixed_precision_line(results: list[RunResult]) -> str:
    """`precision: auto` resolves per machine: runs trained on CPUs with and without native bf16 differ in numerics,
    which the tables would otherwise hide."""
    by_precision: dict[str, list[str]] = {}
    for result in results:
        by_precision.setdefault(str(result.info.get("precision", "unknown")), []).append(result.name)
    listed = "; ".join(f"{precision}: {', '.join(names)}" for precision, names in sorted(by_precision.items()))
    return (f"- **Mixed precision:** the runs were not trained in one precision ({listed}); differences between "
            "runs of different precision mix method and numerics. Re-train on one machine, or set "
            "`train.precision` explicitly, for one protocol.")

def _code_line(results: list[RunResult]) -> str:
    """Which commit(s) trained the runs and whether the working tree was dirty, from every seed's provenance."""
    commits: dict[str, set[str]] = {}
    dirty, unknown, unknown_state, trainings = [], [], [], 0
    for result in results:
        for seed, provenance in zip(result.seeds, result.provenance()):
            trainings += 1
            commit = commit_of(provenance)
            if commit is None:
                unknown.append(f"{result.name} (seed {seed})")
                continue
            commits.setdefault(commit, set()).add(result.name)
            if provenance.get("git_dirty") is None:
                unknown_state.append(f"{result.name} (seed {seed})")
            elif provenance.get("git_dirty"):
                dirty.append(f"{result.name} (seed {seed})")
    if not commits:
        return "- **Code:** unknown (no git provenance in train_info.json)."
    if len(commits) == 1:
        text = f"- **Code:** every training ran at commit `{next(iter(commits))}`"
    else:
        text = "- **Code:** trainings ran at " + ", ".join(
            f"`{commit}` ({len(runs)} runs)" for commit, runs in sorted(commits.items()))
        # a run-by-run repro commits each finished run, so commits differ while the trained code may not
        codes = {str((provenance.get("fingerprint") or {}).get("code"))
                 for result in results for provenance in result.provenance()}
        if "None" not in codes:  # older trainings recorded no code fingerprint: then say nothing of it
            text += (", with the same code in every training (one fingerprint of benchmark/ and methods/)"
                     if len(codes) == 1 else f", with {len(codes)} different fingerprints of benchmark/ and methods/")
    if dirty:
        text += f"; working tree **dirty** in {len(dirty)} of {trainings} trainings: {', '.join(dirty)}"
    else:
        text += "; working tree clean in every training" + (" whose state is known" if unknown_state else "")
    if unknown_state:
        text += f"; working-tree state unknown for {', '.join(unknown_state)}"
    if unknown:
        text += f"; commit unknown for {', '.join(unknown)}"
    return text + "."

def locked_versions(lock: Path) -> dict[str, str]:
    """`name==version` pins of a requirements lock (names normalised as in PEP 503), {} when there is none."""
    if not lock.is_file():
        return {}
    pins = (re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line) for line in lock.read_text().splitlines())
    return {re.sub(r"[-_.]+", "-", pin.group(1)).lower(): pin.group(2) for pin in pins if pin}

def _software_line(results: list[RunResult], lock: Path = LOCK_FILE) -> str | None:
    versions: dict[str, set[str]] = {}
    for result in results:
        for provenance in result.provenance():
            for package, version in (provenance.get("packages") or {}).items():
                versions.setdefault(str(package), set()).add(str(version))
    if not versions:
        return None
    same = [f"{package} {next(iter(v))}" for package, v in sorted(versions.items()) if len(v) == 1]
    differ = [f"{package} ({', '.join(sorted(v))})" for package, v in sorted(versions.items()) if len(v) > 1]
    text = "- **Software:** " + ", ".join(same) + (f"; versions differ between trainings: {', '.join(differ)}"
                                                   if differ else "")
    pins = locked_versions(lock)
    if not pins:
        return text + f"; no `{lock.name}` to compare them with."
    # the recorded versions are importlib.metadata's (torch 2.14.1 for the +cu130 build too)
    recorded = {re.sub(r"[-_.]+", "-", package).lower(): v for package, v in versions.items() if package != "python"}
    off = [f"{package} {', '.join(sorted(v))} (lock {pins.get(package, 'absent')})"
           for package, v in sorted(recorded.items()) if v != {pins.get(package)}]
    if off:
        return text + f"; **not the locked environment**: {', '.join(off)} differ from `{lock.name}`."
    return text + f"; every recorded package version matches `{lock.name}`."

def _split_clause(split: dict[str, Any] | None) -> str:
    """The split in use and how many CBIS test images have a view of the same breast in training."""
    if not split:  # data prepared before the split was recorded
        return ""
    text = (f" Split: {split['kind']}; {split['test_images_with_breast_in_train']} of {split['test_images']} CBIS "
            "test images have a view of the same breast in training")
    if not str(split.get("breast", "")).startswith("patient"):
        text += " (no patient metadata: every image counts as its own breast)"
    return text + "."

def protocol_lines(results: list[RunResult], frames: dict[str, pd.DataFrame], selected: Protocol,
                    other: Protocol) -> list[str]:
    """Both evaluation protocols, which one sits beside the paper's numbers and why, and what the authors'
    per-image min-max normalisation does to an empty prediction (measured on these runs)."""
    threshold = thresholds(results)[0]
    empty_truth = max(int(result.metrics[d].get("n_empty_truth", 0)) for result in results for d in DATASETS)
    pooled = pd.concat([frames[result.name] for result in results], ignore_index=True)
    empty = pooled[(pooled["pred_area"] == 0) & (pooled["mask_area"] > 0)] if "pred_area" in pooled else pooled[:0]
    why = {
        "threshold": f"**{selected.dice_label} is set beside the paper's numbers** (`evaluate.protocol: threshold`): "
                     "the binarised mask a reader would see, and this benchmark's declared headline "
                     "(shared/reference/evaluation.md). The ISBI paper does not say which Dice it reports; the "
                     f"evaluation code its authors' group publishes computes the {other.dice_label} column, which "
                     "`evaluate.protocol: authors` sets beside the paper's numbers instead.",
        "authors": f"**{selected.dice_label} is set beside the paper's numbers** (`evaluate.protocol: authors`): "
                   "the ISBI paper does not say which Dice it reports, and the evaluation code its authors' group "
                   "publishes (SAM2-UNet test.py + eval.py) computes this mDice, so it is the most likely "
                   f"like-for-like number; {other.dice_label} (the binarised mask) is the column before it.",
    }[selected.name]
    lines = [
        f"- **Evaluation:** two protocols, both in every table, in % per image then averaged, at the "
        f"{results[0].metrics['resolution']} resolution on the final-epoch weights. *Dice@{threshold:g}*: "
        f"sigmoid(logit) > {threshold:g}, Dice of the mask; *S_m*: S-measure (alpha 0.5, pysodmetrics) of the "
        "probability map. *mDice (authors' eval)* and *S_m (authors' eval)*: the authors' published protocol, "
        "sigmoid, bilinear resize to the ground truth's size, a second sigmoid, per-image min-max normalisation "
        "to 0-255 uint8, then pysodmetrics' Dice at each of 256 thresholds averaged (FmeasureV2, DICEHandler) "
        f"and the S-measure of the same map. {why} The paired comparisons and claims use "
        f"{selected.dice_label}.",
        "- **Empty predictions under the authors' protocol:** the per-image min-max normalisation discards the "
        "map's calibration: a nearly empty prediction (every probability small, but not all equal) is stretched "
        "to the full 0-255 range, so its least unlikely pixels count as foreground at most thresholds; only an "
        "exactly constant map (e.g. every logit so negative that the second sigmoid gives exactly 0.5 in float32) "
        "comes out all 0 and scores mDice ≈ 0. "
        + (f"Here {len(empty)} of {len(pooled)} (run, seed, image) predictions are empty at {threshold:g} "
           f"(Dice@{threshold:g} = 0) on an image with a mass; their mean mDice (authors' eval) is "
           f"{100 * empty['authors_mdice'].mean():.1f}%." if len(empty) else
           f"Here no prediction is empty at {threshold:g} on an image with a mass."),
        f"- **Empty ground truth:** {empty_truth} test image(s)"
        + (f" (rule: Dice@{threshold:g} = 1 when the prediction is empty too, counted in the mean; mDice (authors' "
           "eval) scores 0 at every threshold, as pysodmetrics counts 0/0 as 0)." if empty_truth else "."),
    ]
    return lines

def summary_lines(params: dict[str, Any], results: list[RunResult], prepare_report: dict[str, Any],
                  claims: list[str], protocol_lines: list[str], scale: str | None = None) -> list[str]:
    domains = prepare_report.get("domains", {})
    source = prepare_report["source"]  # the data the runs were trained on (report.main checked params agree)
    data_line = (
        "the **synthetic stand-in** (procedural CBIS-like and INbreast-like mammograms, benchmark/data/synthetic.py), "
        "not the real datasets: compare orderings, not absolute values, with the paper"
        if source == "synthetic" else "the real **CBIS-DDSM** (intra-domain) and **INbreast** (cross-domain) datasets"
    )
    cbis, inbreast = domains.get("cbis", {}), domains.get("inbreast", {})
    first = results[0].info
    weights = first.get("encoder_weights") or "random initialisation"
    hardware = "; ".join(sorted({str(result.info["hardware"]) for result in results}))
    precision = sorted({str(result.info["precision"]) for result in results if result.info.get("precision")})
    total = sum(result.seconds for result in results)
    trainings = sum(len(result.seeds) for result in results)
    lines = [
        "## Summary",
        "",
        f"- **Data:** {data_line}. CBIS: {cbis.get('train', '?')} train / {cbis.get('test', '?')} test images; "
        f"INbreast: {inbreast.get('test', '?')} test images; prepared at {first.get('image_size', '?')} x "
        f"{first.get('image_size', '?')} px." + _split_clause(prepare_report.get("split")),
        f"- **Network:** U-Net with a {first['encoder']} encoder ({weights}); {first.get('epochs', '?')} epochs x "
        f"{first.get('steps_per_epoch', '?')} steps, batch {first.get('batch_size', '?')}"
        + (f", {precision[0]} precision" if len(precision) == 1 else "")
        + ". The paper: ResNet-34, ImageNet weights, 50 epochs, 352 x 352 px.",
        *([scale] if scale else []),
        f"- **Hardware:** {hardware}. **Total time** of the {len(results)} runs ({trainings} trainings, train + "
        f"evaluate): {minutes(total)}.",
        _seeds_line(results),
        _code_line(results),
    ]
    if len(precision) > 1:
        lines.append(_mixed_precision_line(results))
    flagged = [result.label for result in results if result.loss_not_decreasing]
    if flagged:
        lines.append(f"- **Training loss did not decrease** ({LOSS_MARK} in the tables) in: {', '.join(flagged)}: the "
                     "last epoch's mean total loss is not below the first epoch's in at least one seed.")
    software = _software_line(results)
    if software:
        lines.append(software)
    return lines + [*protocol_lines, *claims, ""]
