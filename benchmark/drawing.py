"""Headless matplotlib and the one way a figure is written: atomically, with PNG bytes that depend only on the inputs.

Shared by the data preview (benchmark/data/preview.py, prepare stage) and the report's figures
(benchmark/reporting/figures.py), so neither layer imports the other to draw.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmark.artifacts import written  # noqa: E402

MASK_COLOUR, BOX_COLOUR = "#1f77ff", "#ffcc00"
PREDICTION_COLOUR = "#ff2020"


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> None:
    """Save via a temporary name so a killed stage never leaves a half-written PNG under the final name.

    No "Software" entry in the PNG metadata, so the bytes do not change with the matplotlib version
    and two renders of the same inputs are identical (matplotlib writes no date into PNGs).
    """
    path = Path(path)
    try:
        with written(path, path.with_name(path.stem + ".tmp" + path.suffix)) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
