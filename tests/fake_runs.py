"""Fabricated run folders in the on-disk format of the train and evaluate stages, for the report tests.

`fabricate_run` writes runs/<run>/{metrics.json, per_image.csv, train_log.csv, train_info.json,
examples.npz} from chosen per-image Dice values (with the configuration record and output hashes the
report checks), so a test knows every table cell, paired
difference and claim verdict by hand. Metrics are derived from the per-image values exactly as
the evaluator does (mean over images per seed, then mean and std over seeds). The other per-image
metrics follow from the Dice by fixed rules: S-measure 0.4 + 0.5 Dice, the authors' protocol's
mDice 0.9 Dice + 0.05 (at most 0.95) and its S-measure 0.45 + 0.5 Dice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.artifacts import file_sha256
from benchmark.data.prepared import PreparedData, prepared_fingerprint
from benchmark.evaluation.metrics import summarise

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def authors_mdice_of(dice: float) -> float:
    return 0.9 * dice + 0.05


def held_out_rows(data: PreparedData) -> dict[str, pd.DataFrame]:
    """Test rows of both test sets, in the order the evaluator writes them."""
    return {domain: data.rows(domain, "test") for domain in ("cbis", "inbreast")}


def fabricate_run(runs_dir: Path, data: PreparedData, name: str, *, method: str, row: str, strong_fraction: float,
                  uses_weak: bool, dice: dict[str, dict[int, Sequence[float]]], dirty_seeds: Sequence[int] = (),
                  loss_terms: Sequence[str] = ("structure",), epochs: int = 3, with_examples: bool = True,
                  train_seconds: float = 60.0, eval_seconds: float = 5.0) -> Path:
    """One run folder; `dice[dataset][seed]` is the per-image Dice (0..1) of every test image of that set."""
    folder = runs_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    tests = held_out_rows(data)
    seeds = sorted(next(iter(dice.values())))
    rows = []
    for seed in seeds:
        for dataset, frame in tests.items():
            values = np.asarray(dice[dataset][seed], float)
            assert len(values) == len(frame), f"{dataset}: {len(frame)} test images, {len(values)} Dice values"
            for image, value in zip(frame.itertuples(), values):
                rows.append({"seed": seed, "image_id": image.image_id, "dataset": dataset, "dice": value,
                             "smeasure": 0.4 + 0.5 * value, "authors_mdice": authors_mdice_of(value),
                             "authors_smeasure": 0.45 + 0.5 * value, "mask_area": image.mask_area,
                             "box_area": image.box_area, "pred_area": int(round(value * image.mask_area))})
    per_image = pd.DataFrame(rows)
    per_image.to_csv(folder / "per_image.csv", index=False)

    metrics: dict = summarise(per_image)  # the evaluate stage's own summary of its per_image.csv
    metrics.update({"resolution": "prepared (32 px)", "eval_seconds": eval_seconds,
                    "evaluated_models": {str(seed): f"sha-{name}-{seed}" for seed in seeds}})

    log_rows = []
    for seed in seeds:
        for epoch in range(1, epochs + 1):
            terms = {term: (1.0 + seed * 0.1) / (epoch * (k + 1)) for k, term in enumerate(loss_terms)}
            log_rows.append({"seed": seed, "epoch": epoch, "lr": 1e-3 * (1 - (epoch - 1) / epochs) ** 0.9, **terms,
                             "total": sum(terms.values()), "seconds": 1.0})
    pd.DataFrame(log_rows).to_csv(folder / "train_log.csv", index=False)

    n_train = len(data.rows("cbis", "train"))
    n_strong = int(round(strong_fraction * n_train))
    info = {
        "run": name, "method": method, "row": row, "strong_fraction": strong_fraction, "options": {},
        "n_train": n_train, "n_strong": n_strong, "n_strong_used": n_strong,
        "n_weak_used": n_train - n_strong if uses_weak else 0, "uses_strong": strong_fraction > 0,
        "uses_weak": uses_weak, "epochs": epochs, "steps_per_epoch": 4, "batch_size": 4, "encoder": "resnet18",
        "encoder_weights": None, "image_size": 32, "precision": "fp32", "device": "cpu",
        "hardware": "CPU test (2 threads)", "train_seconds": train_seconds * len(seeds),
        "configured": {"method": method, "strong_fraction": float(strong_fraction), "options": {},
                       "seeds": list(seeds)},
        "train_log_sha256": file_sha256(folder / "train_log.csv"),
        "seeds": {str(seed): {"train_seconds": train_seconds, "resumed_from_epoch": 0,
                              "model_sha256": f"sha-{name}-{seed}", "provenance": {
            "git_commit": COMMIT, "git_dirty": seed in dirty_seeds, "started": "2024-01-01T00:00:00+00:00",
            "finished": "2024-01-01T00:01:00+00:00", "packages": {"python": "3.11", "torch": "2.0"},
            "device": "CPU test (2 threads)", "seed": seed,
            "fingerprint": {"data": prepared_fingerprint(data.directory)}}} for seed in seeds},
    }
    (folder / "train_info.json").write_text(json.dumps(info, indent=2))

    if with_examples:
        ids, datasets, maps = [], [], []
        for dataset, frame in tests.items():
            image = frame.iloc[0]
            mask = data.arrays[dataset]["masks"][int(image["index"])]
            ids.append(image["image_id"]), datasets.append(dataset)
            maps.append((np.roll(mask, 1, axis=1) * 230).astype(np.uint8))  # a prediction one pixel to the right
        np.savez_compressed(folder / "examples.npz", image_ids=np.array(ids), datasets=np.array(datasets),
                            probabilities=np.stack(maps))
    outputs = ["per_image.csv"] + (["examples.npz"] if with_examples else [])
    metrics["outputs"] = {output: file_sha256(folder / output) for output in outputs}
    metrics["inputs"] = {"train_info.json": file_sha256(folder / "train_info.json")}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))  # last, as the evaluate stage does
    return folder


def rewrite_train_info(folder: Path, info: dict) -> None:
    """Replace a fabricated run's train_info.json as a re-training would; its hash in metrics.json follows, as a
    re-evaluation would write it."""
    (folder / "train_info.json").write_text(json.dumps(info, indent=2))
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["inputs"]["train_info.json"] = file_sha256(folder / "train_info.json")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


def rewrite_train_log(folder: Path, log: pd.DataFrame) -> None:
    """Replace a fabricated run's train_log.csv as a re-training would: its hash in train_info.json, and that file's
    in metrics.json (as a re-evaluation would), follow."""
    log.to_csv(folder / "train_log.csv", index=False)
    info = json.loads((folder / "train_info.json").read_text())
    info["train_log_sha256"] = file_sha256(folder / "train_log.csv")
    rewrite_train_info(folder, info)
