"""Figures the pipeline writes into reports/figures (matplotlib, headless).

Report stage (benchmark/reporting/report.py gathers the inputs, these functions only draw):
  `labels_figure` (the paper's Fig. 1), `predictions_figure` (the paper's Fig. 3),
  `label_efficiency_figure`, `dice_distributions_figure`, `training_curves_figure`, and
  `placeholder_figure` for a figure whose runs are not configured.

Every figure is written atomically by `benchmark.drawing.save_figure`, and the PNG bytes depend only on the
inputs: no software version or date in the metadata, and every random choice is seeded.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from benchmark.data.prepared import PreparedData
from benchmark.drawing import MASK_COLOUR, PREDICTION_COLOUR, plt, save_figure
from benchmark.evaluation.metrics import dice

DOMAIN_TITLES = {"cbis": "intra-domain (CBIS)", "inbreast": "cross-domain (INbreast)"}


class FigureSkipped(Exception):
    """The inputs a figure needs are not there (e.g. its runs are not configured); the message says why."""


def placeholder_figure(path: str | Path, name: str, reason: str) -> None:
    """A small image that says why a figure was not drawn, so its file always exists (a fixed DVC output)."""
    fig, ax = plt.subplots(figsize=(6.0, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name}: not drawn\n{reason}", ha="center", va="center", fontsize=9, wrap=True)
    save_figure(fig, path)


def mass_window(box: Sequence[int], shape: tuple[int, int], margin: float = 0.6,
                min_margin: int = 4) -> tuple[slice, slice]:
    """Square (rows, cols) window around a box (x0, y0, x1, y1; end-exclusive), grown by `margin` x its longer side.

    Shifted, not cut, at the image border so every magnified view has the same aspect; the whole
    image when there is no box (x0 < 0).
    """
    height, width = shape
    x0, y0, x1, y1 = (int(v) for v in box)
    if x0 < 0 or x1 <= x0 or y1 <= y0:
        return slice(0, height), slice(0, width)
    longer = max(x1 - x0, y1 - y0)
    side = min(int(round(longer + 2 * max(min_margin, margin * longer))), height, width)

    def span(start: int, stop: int, limit: int) -> slice:
        low = int(round((start + stop - side) / 2))
        low = min(max(low, 0), limit - side)
        return slice(low, low + side)

    return span(y0, y1, height), span(x0, x1, width)


def _outline(ax: plt.Axes, mask: np.ndarray, colour: str, linewidth: float = 1.0) -> None:
    """Outline of a binary map; nothing for an all-0 or all-1 map (contour has no level to draw there)."""
    mask = np.asarray(mask, float)
    if mask.min() < 0.5 < mask.max():
        ax.contour(mask, levels=[0.5], colors=colour, linewidths=linewidth)


def _bare(ax: plt.Axes) -> None:
    ax.set_xticks([]), ax.set_yticks([])


def _union_box(row) -> tuple[int, int, int, int]:
    return int(row["box_x0"]), int(row["box_y0"]), int(row["box_x1"]), int(row["box_y1"])


def labels_figure(data: PreparedData, path: str | Path, seed: int = 0) -> str:
    """The paper's Fig. 1 for one training image (seeded choice among those with a mass); returns its id.

    (a) the whole image with the magnified region marked in blue, (b) the magnified mass, (c) its
    strong label (mask), (d) its weak label (box) and (e) the reversed weak label 1 - box, the target
    of the auxiliary background branch.
    """
    train = data.rows("cbis", "train")
    train = train[train["mask_area"] > 0]
    if train.empty:
        raise FigureSkipped("no CBIS training image has a mass mask")
    row = train.iloc[int(np.random.default_rng(seed).integers(len(train)))]
    arrays = data.arrays["cbis"]
    index = int(row["index"])
    image, mask, box = arrays["images"][index], arrays["masks"][index], arrays["boxes"][index]
    rows, cols = mass_window(_union_box(row), image.shape)
    fig, axes = plt.subplots(1, 5, figsize=(11.0, 2.6))
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), cols.stop - cols.start, rows.stop - rows.start,
                                fill=False, edgecolor=MASK_COLOUR, linewidth=1.5))
    axes[1].imshow(image[rows, cols], cmap="gray", vmin=0, vmax=255)
    for ax, label in zip(axes[2:], (mask, box, 1 - box)):
        ax.imshow(label[rows, cols], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    titles = ["(a) whole image, mass marked", "(b) mass, magnified", "(c) strong label (mask)",
              "(d) weak label (box)", "(e) reversed weak label (1 - box)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=8)
        _bare(ax)
    fig.suptitle(f"Training image {row['image_id']}: in the weak label the box is uncertain, outside it is definite "
                 "background; the auxiliary branch learns (e)", fontsize=8)
    save_figure(fig, path)
    return str(row["image_id"])


def predictions_figure(data: PreparedData, examples: Sequence[tuple[str, dict[str, np.ndarray]]],
                       path: str | Path, threshold: float = 0.5) -> int:
    """The paper's Fig. 3: one row per example test image, one column per run, zoomed on the mass.

    `examples` is (column label, arrays of the run's examples.npz) per run, in column order. Ground
    truth outline in blue, prediction (probability > threshold) outline in red, the image's Dice in the
    corner. Rows follow the first run's image order; returns the number of rows drawn.
    """
    if not examples:
        raise FigureSkipped("no run has an examples.npz")
    lookup = {(r.domain, r.image_id): r for r in data.manifest.itertuples()}
    first = examples[0][1]
    order = [(str(d), str(i)) for d, i in zip(first["datasets"], first["image_ids"]) if (str(d), str(i)) in lookup]
    if not order:
        raise FigureSkipped("the example image ids of examples.npz are not in the prepared data")
    by_run = []
    for _, arrays in examples:
        positions = {(str(d), str(i)): k for k, (d, i) in enumerate(zip(arrays["datasets"], arrays["image_ids"]))}
        by_run.append((positions, arrays["probabilities"]))
    # 1-inch cells; margins in inches: 0.8 on top for the caption and column titles, 0.45 left for row labels
    width, height = 1.0 * (1 + len(examples)) + 0.5, 1.0 * len(order) + 0.9
    fig, axes = plt.subplots(len(order), 1 + len(examples), figsize=(width, height), squeeze=False)
    for r, (domain, image_id) in enumerate(order):
        entry = lookup[(domain, image_id)]
        image = data.arrays[domain]["images"][entry.index]
        truth = data.arrays[domain]["masks"][entry.index]
        rows, cols = mass_window((entry.box_x0, entry.box_y0, entry.box_x1, entry.box_y1), image.shape)
        for c in range(1 + len(examples)):
            ax = axes[r, c]
            ax.imshow(image[rows, cols], cmap="gray", vmin=0, vmax=255)
            _outline(ax, truth[rows, cols], MASK_COLOUR)
            _bare(ax)
            if c == 0:
                ax.set_ylabel(f"{'CBIS' if domain == 'cbis' else 'INbreast'}\n{image_id}", fontsize=6)
                continue
            positions, probabilities = by_run[c - 1]
            if (domain, image_id) not in positions:
                ax.text(0.5, 0.5, "not in\nexamples.npz", transform=ax.transAxes, ha="center", va="center",
                        fontsize=6, color="white")
                continue
            prediction = probabilities[positions[(domain, image_id)]].astype(np.float32) / 255.0 > threshold
            _outline(ax, prediction[rows, cols], PREDICTION_COLOUR)
            ax.text(0.03, 0.03, f"{100 * dice(prediction, truth > 0):.0f}", transform=ax.transAxes, fontsize=6,
                    color="white", va="bottom", ha="left", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1,
                                                                  "linewidth": 0})
    axes[0, 0].set_title("image", fontsize=7)
    for c, (label, _) in enumerate(examples, start=1):
        axes[0, c].set_title(label, fontsize=7)
    fig.suptitle(f"Ground truth blue, prediction (probability > {threshold:g}) red\n"
                 "corner: Dice (%) of the first seed's model on that image", fontsize=8, y=1 - 0.05 / height, va="top")
    fig.subplots_adjust(left=0.45 / width, right=1 - 0.05 / width, bottom=0.1 / height, top=1 - 0.8 / height,
                        wspace=0.04, hspace=0.04)
    save_figure(fig, path)
    return len(order)


def label_efficiency_figure(points: pd.DataFrame, references: pd.DataFrame, path: str | Path,
                            row_name: str, metric_label: str = "Dice") -> None:
    """Dice (`metric_label`) against the strong-label percentage of one row's runs, intra- and cross-domain panels.

    `points`: columns S, dataset, mean, std, n (one per run of `row_name`); `references`: columns
    label, dataset, mean, std, n (horizontal lines with a ±std band, e.g. Strong-Only at 100% and 10%).
    Error bars are the std over seeds.
    """
    if points.empty:
        raise FigureSkipped(f"no run of row '{row_name}' is configured")
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    strong = sorted(points["S"].unique())
    colours = plt.get_cmap("tab10")
    for ax, dataset in zip(axes, ("cbis", "inbreast")):
        own = points[points["dataset"] == dataset].sort_values("S")
        ax.errorbar(own["S"], own["mean"], yerr=own["std"], marker="o", color="black", capsize=3,
                    label=f"{row_name} (n = {'/'.join(map(str, sorted(own['n'].unique())))} seeds)")
        for k, ref in enumerate(references[references["dataset"] == dataset].itertuples()):
            colour = colours(k + 1)
            ax.axhline(ref.mean, color=colour, linestyle="--", linewidth=1.2, label=f"{ref.label} (n = {ref.n})")
            if ref.std > 0:
                ax.axhspan(ref.mean - ref.std, ref.mean + ref.std, color=colour, alpha=0.12, linewidth=0)
        if min(strong) > 0:
            ax.set_xscale("log")
        ax.set_xticks(strong)
        ax.set_xticklabels([f"{s:g}%" for s in strong])
        ax.minorticks_off()
        ax.set_xlabel("strong-label fraction S (the rest weak)")
        ax.set_ylabel(f"{metric_label} (%)")
        ax.set_title(f"{DOMAIN_TITLES[dataset]} {metric_label}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Label efficiency: mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def dice_distributions_figure(per_image: pd.DataFrame, order: Sequence[str], path: str | Path,
                              seed: int = 0, metric_label: str = "Dice") -> None:
    """Per-image Dice of every run (box plot + jittered points, mean as a diamond), one panel per test set.

    `per_image`: columns label, dataset, dice (%, seeds averaged per image, the metric named `metric_label`);
    `order`: labels top to bottom.
    """
    if per_image.empty:
        raise FigureSkipped("no per-image results")
    order = list(order)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 1.2 + 0.32 * len(order)), sharey=True)
    for ax, dataset in zip(axes, ("cbis", "inbreast")):
        frame = per_image[per_image["dataset"] == dataset]
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`; harmless here
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            sns.boxplot(data=frame, x="dice", y="label", order=order, orient="h", showfliers=False, color="#cfd8ea",
                        width=0.6, linewidth=0.8, ax=ax)
        rng = np.random.default_rng(seed)  # the jitter is seeded: identical inputs give identical pixels
        for position, label in enumerate(order):
            values = frame.loc[frame["label"] == label, "dice"].to_numpy()
            if len(values) == 0:
                continue
            ax.scatter(values, position + rng.uniform(-0.2, 0.2, len(values)), s=4, color="#303030", alpha=0.45,
                       linewidths=0, zorder=3)
            ax.scatter([values.mean()], [position], marker="D", s=22, color=PREDICTION_COLOUR, zorder=4)
        images = frame.groupby("label")["dice"].size().max() if len(frame) else 0
        ax.set_title(f"{DOMAIN_TITLES[dataset]}: {images} images", fontsize=9)
        ax.set_xlabel(f"per-image {metric_label} (%), seeds averaged per image")
        ax.set_ylabel("")
        ax.set_xlim(-2, 102)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Per-image {metric_label} distributions (red diamond: mean, the tables' number)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def training_curves_figure(curves: pd.DataFrame, order: Sequence[str], path: str | Path) -> None:
    """Total training loss per epoch of every run, mean over seeds (band: ± std), absolute and relative to epoch 1.

    `curves`: columns label, epoch, mean, std, n.
    """
    if curves.empty:
        raise FigureSkipped("no run has a train_log.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0))
    colours, styles = plt.get_cmap("tab10"), ["-", "--", ":", "-."]
    for k, label in enumerate(order):
        run = curves[curves["label"] == label].sort_values("epoch")
        if run.empty:
            continue
        style = {"color": colours(k % 10), "linestyle": styles[(k // 10) % len(styles)], "linewidth": 1.3,
                 "marker": "o" if len(run) <= 3 else None, "markersize": 4}  # a one-epoch run is a single point
        first = float(run["mean"].iloc[0])
        for ax, scale in zip(axes, (1.0, first if first != 0 else 1.0)):
            ax.plot(run["epoch"], run["mean"] / scale, label=label, **style)
            if (run["n"] > 1).any():
                ax.fill_between(run["epoch"], (run["mean"] - run["std"]) / scale, (run["mean"] + run["std"]) / scale,
                                color=style["color"], alpha=0.12, linewidth=0)
    axes[0].set_ylabel("total loss (sum of the method's terms)")
    axes[1].set_ylabel("total loss / its epoch-1 value")
    for ax, title in zip(axes, ("Total loss per epoch", "Relative to epoch 1 (loss scales differ by method)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("Training curves: mean over seeds (band: ± std when several seeds)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


VERDICT_COLOURS = {"agrees": "#2a9d3a", "disagrees": "#d62728", "inconclusive": "#7f7f7f"}


def claims_forest_figure(claims: pd.DataFrame, path: str | Path, reference: str, metric_label: str = "Dice") -> None:
    """The paper's claims as intervals (forest plot), one panel per test set.

    `claims`: one row per judged claim, columns label (the other row), dataset, mean, low, high (our difference and
    its 95% CI, points), paper (the paper's difference), verdict and half_width (the smallest difference the
    comparison calls, drawn as a grey band around 0 on the claim's line)."""
    if claims.empty:
        raise FigureSkipped("no claim judged (the reference run or two seeds per run missing)")
    labels = list(dict.fromkeys(claims["label"]))
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 1.4 + 0.34 * len(labels)), sharey=True)
    for ax, dataset in zip(axes, ("cbis", "inbreast")):
        frame = claims[claims["dataset"] == dataset]
        for _, claim in frame.iterrows():
            y = labels.index(claim["label"])
            ax.fill_betweenx([y - 0.32, y + 0.32], -claim["half_width"], claim["half_width"], color="#d9d9d9",
                             linewidth=0, zorder=1)
            colour = VERDICT_COLOURS.get(claim["verdict"], "#7f7f7f")
            ax.plot([claim["low"], claim["high"]], [y, y], color=colour, linewidth=2.2, zorder=3)
            ax.scatter([claim["mean"]], [y], color=colour, s=22, zorder=4)
            ax.scatter([claim["paper"]], [y], marker="x", color="black", s=30, linewidths=1.4, zorder=5)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(f"{DOMAIN_TITLES[dataset]}", fontsize=9)
        ax.set_xlabel(f"{reference} minus the row, {metric_label} points")
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=c, linewidth=2.2, label=f"ours, 95% CI: {v}")
               for v, c in VERDICT_COLOURS.items()]
    handles += [plt.Line2D([], [], color="black", marker="x", linestyle="", label="the paper's difference"),
                Rectangle((0, 0), 1, 1, color="#d9d9d9", label="± the smallest difference the run calls")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle(f"The paper's claims: {reference} against each row, our difference beside the paper's", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path)
