"""The prepare stage's look at its own output: examples of both domains with the mask outline and the weak box.

Drawn here, in the data layer, so preparing data never imports the report.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.prepared import PreparedData
from benchmark.drawing import BOX_COLOUR, MASK_COLOUR, plt, save_figure


def data_preview(data: PreparedData, path: str | Path, per_domain: int = 4, seed: int = 0) -> None:
    """Examples of both domains: the image, then the mass (mask outline in blue, box in yellow)."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, 2 * per_domain, figsize=(2.0 * 2 * per_domain, 4.4))
    names = {"cbis": "CBIS-like" if "synthetic" in str(data.manifest["source"].iloc[0]) else "CBIS-DDSM",
             "inbreast": "INbreast-like" if "synthetic" in str(data.manifest["source"].iloc[-1]) else "INbreast"}
    for row, domain in enumerate(("cbis", "inbreast")):
        arrays = data.arrays[domain]
        manifest = data.manifest[data.manifest["domain"] == domain]
        chosen = rng.choice(len(arrays["images"]), size=min(per_domain, len(arrays["images"])), replace=False)
        for column, index in enumerate(chosen):
            image, mask, boxes = arrays["images"][index], arrays["masks"][index], arrays["boxes"][index]
            whole, zoom = axes[row, 2 * column], axes[row, 2 * column + 1]
            for ax in (whole, zoom):
                ax.imshow(image, cmap="gray", vmin=0, vmax=255)
                ax.contour(mask, levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
                ax.contour(boxes, levels=[0.5], colors=BOX_COLOUR, linewidths=0.8, linestyles="--")
                ax.set_xticks([]), ax.set_yticks([])
            ys, xs = np.nonzero(boxes)
            if len(ys):
                pad = max(4, int(0.6 * max(np.ptp(ys), np.ptp(xs))))
                zoom.set_xlim(max(xs.min() - pad, 0) - 0.5, min(xs.max() + pad, image.shape[1] - 1) + 0.5)
                zoom.set_ylim(min(ys.max() + pad, image.shape[0] - 1) + 0.5, max(ys.min() - pad, 0) - 0.5)
            row_info = manifest[manifest["index"] == index].iloc[0]
            ratio = row_info["mask_area"] / max(row_info["box_area"], 1)
            whole.set_title(f"{names[domain]} {row_info['image_id'][-5:]}", fontsize=7)
            zoom.set_title(f"mask/box area {ratio:.2f}", fontsize=7)
    fig.suptitle("Prepared data: mask outline (blue) and weak box label (yellow, dashed)", fontsize=9)
    save_figure(fig, path)
