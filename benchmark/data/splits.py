"""The CBIS train/test split kinds (`data.split`), and how many test images share a breast with training.

    random             the paper's 80/20 draw over images: the CC and MLO views of one breast (same mass)
                       can land on both sides
    random_by_patient  the same 80/20 draw over breasts (patient + side): every view of a test breast is a
                       test image
    official           the data source's own split (CBIS-DDSM's train/test description CSVs)

A breast is `patient_id` + `laterality` where the data source gives both (CBIS-DDSM); an image without them
(the synthetic stand-in: every image is an independent draw) is a breast of its own.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.config import ConfigError

SPLITS = ("random", "random_by_patient", "official")
BREAST_COLUMNS = ("patient_id", "laterality")


def check_split(value) -> str:
    if value not in SPLITS:
        raise ConfigError(f"params.yaml: data.split must be one of {', '.join(SPLITS)}, got {value!r}.")
    return value


def _known(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return values.notna() & (text != "") & (text.str.lower() != "nan")


def breast_keys(frame: pd.DataFrame) -> pd.Series:
    """One key per row: 'patient/side' where both are known, else the row's own image id."""
    keys = frame["image_id"].astype(str).radd("image:")
    if all(column in frame for column in BREAST_COLUMNS):
        patient, side = frame["patient_id"], frame["laterality"]
        known = _known(patient) & _known(side)
        keys = keys.where(~known, patient.astype(str).str.strip() + "/" + side.astype(str).str.strip().str.upper())
    return keys


def draw_test(keys: pd.Series, rng: np.random.Generator, test_fraction: float) -> np.ndarray:
    """Boolean per row: in the test set, drawing round(test_fraction * n) of the n distinct keys.

    With one key per row this is exactly the image-level draw, so both kinds share one code path."""
    unique = pd.unique(keys)
    order = rng.permutation(len(unique))
    test_keys = set(unique[order[:int(round(test_fraction * len(unique)))]])
    return keys.isin(test_keys).to_numpy()


def same_breast_leaks(manifest: pd.DataFrame, domain: str = "cbis") -> dict:
    """Test images of `domain` with another view of the same breast in its training set."""
    frame = manifest[manifest["domain"] == domain]
    keys = breast_keys(frame)
    train_keys = set(keys[frame["split"] == "train"])
    is_test = frame["split"] == "test"
    leaked = is_test & keys.isin(train_keys)
    by_patient = bool((~keys.str.startswith("image:")).any())
    return {
        "breast": "patient_id + laterality" if by_patient else "the image itself (no patient metadata)",
        "test_images": int(is_test.sum()),
        "test_breasts": int(keys[is_test].nunique()),
        "test_images_with_breast_in_train": int(leaked.sum()),
        "examples": frame.loc[leaked, "image_id"].astype(str).head(10).tolist(),
    }
