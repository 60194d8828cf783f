"""Report figures: what they draw, that they are deterministic, and that missing inputs skip them cleanly."""
from __future__ import annotations

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from benchmark.data.preview import data_preview
from benchmark.reporting import figures


def red_pixels(path) -> int:
    pixels = matplotlib.image.imread(path)[..., :3]
    return int(((pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)).sum())


def blue_pixels(path) -> int:
    pixels = matplotlib.image.imread(path)[..., :3]
    return int(((pixels[..., 2] > 0.8) & (pixels[..., 0] < 0.35) & (pixels[..., 1] < 0.6)).sum())


def example_arrays(data, probability_of) -> dict[str, np.ndarray]:
    """examples.npz arrays for the first test image of each test set; probability_of(mask) -> uint8 map."""
    ids, datasets, maps = [], [], []
    for domain in ("cbis", "inbreast"):
        row = data.rows(domain, "test").iloc[0]
        ids.append(row["image_id"]), datasets.append(domain)
        maps.append(probability_of(data.arrays[domain]["masks"][int(row["index"])]))
    return {"image_ids": np.array(ids), "datasets": np.array(datasets), "probabilities": np.stack(maps)}


@pytest.mark.parametrize("box, shape, expected", [
    ((10, 20, 20, 30), (100, 100), (slice(14, 36), slice(4, 26))),  # 10 px box + 2 x 6 px margin, centred
    ((0, 0, 6, 6), (100, 100), (slice(0, 14), slice(0, 14))),  # at the corner: shifted inside, still square
    ((-1, -1, -1, -1), (32, 40), (slice(0, 32), slice(0, 40))),  # no box: the whole image
    ((0, 0, 90, 90), (96, 96), (slice(0, 96), slice(0, 96))),  # larger than the image: the whole image
])
def test_mass_window_is_a_square_around_the_box(box, shape, expected):
    assert figures.mass_window(box, shape, margin=0.6, min_margin=4) == expected


def test_saved_png_carries_no_software_version(tmp_path):
    fig, ax = figures.plt.subplots()
    ax.plot([0, 1], [0, 1])
    figures.save_figure(fig, tmp_path / "plot.png")
    data = (tmp_path / "plot.png").read_bytes()
    assert data.startswith(b"\x89PNG") and b"Software" not in data and b"atplotlib" not in data
    assert not list(tmp_path.glob("*.tmp*")), "the temporary file was renamed"


def test_labels_figure_choice_is_seeded_among_training_masses(tiny_data, tmp_path):
    chosen = figures.labels_figure(tiny_data, tmp_path / "a.png", seed=3)
    assert figures.labels_figure(tiny_data, tmp_path / "b.png", seed=3) == chosen
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    row = tiny_data.manifest.set_index("image_id").loc[chosen]
    assert row["split"] == "train" and row["domain"] == "cbis" and row["mask_area"] > 0
    others = {figures.labels_figure(tiny_data, tmp_path / "c.png", seed=seed) for seed in range(6)}
    assert len(others) > 1, "the seed decides which image is shown"


def test_labels_figure_skips_without_a_training_mass(tiny_data, tmp_path):
    manifest = tiny_data.manifest.assign(mask_area=0)
    empty = figures.PreparedData(manifest=manifest, arrays=tiny_data.arrays)
    with pytest.raises(figures.FigureSkipped, match="no CBIS training image has a mass mask"):
        figures.labels_figure(empty, tmp_path / "fig.png")


def test_predictions_figure_outlines_the_prediction_in_red(tiny_data, tmp_path):
    shifted = example_arrays(tiny_data, lambda mask: (np.roll(mask, 2, axis=1) * 255).astype(np.uint8))
    nothing = example_arrays(tiny_data, lambda mask: np.full(mask.shape, 127, np.uint8))  # 127/255 < 0.5
    rows = figures.predictions_figure(tiny_data, [("Run A\n10%", shifted), ("Run B\n10%", nothing)],
                                      tmp_path / "fig3.png")
    assert rows == 2
    both = red_pixels(tmp_path / "fig3.png")
    figures.predictions_figure(tiny_data, [("Run B\n10%", nothing)], tmp_path / "empty.png")
    assert both > 50 and red_pixels(tmp_path / "empty.png") == 0, "red is the prediction, drawn only where predicted"
    assert blue_pixels(tmp_path / "empty.png") > 50, "the ground truth is outlined in blue"
    again = tmp_path / "again.png"
    figures.predictions_figure(tiny_data, [("Run A\n10%", shifted), ("Run B\n10%", nothing)], again)
    assert again.read_bytes() == (tmp_path / "fig3.png").read_bytes()


def test_predictions_figure_skips_without_examples(tiny_data, tmp_path):
    with pytest.raises(figures.FigureSkipped):
        figures.predictions_figure(tiny_data, [], tmp_path / "fig3.png")
    unknown = {"image_ids": np.array(["nope"]), "datasets": np.array(["cbis"]),
               "probabilities": np.zeros((1, 32, 32), np.uint8)}
    with pytest.raises(figures.FigureSkipped, match="not in the prepared data"):
        figures.predictions_figure(tiny_data, [("A", unknown)], tmp_path / "fig3.png")


def test_label_efficiency_draws_what_exists_and_skips_without_the_row(tmp_path):
    points = pd.DataFrame([{"S": s, "dataset": d, "mean": 20 + s / 5, "std": 1.0, "n": 2}
                           for s in (7.5, 10.0, 50.0) for d in ("cbis", "inbreast")])
    references = pd.DataFrame([{"label": "Strong-Only 100%", "dataset": d, "mean": 35.0, "std": 0.5, "n": 2}
                               for d in ("cbis", "inbreast")])
    figures.label_efficiency_figure(points, references, tmp_path / "eff.png", "Ours")
    figures.label_efficiency_figure(points.iloc[:2], references.iloc[:0], tmp_path / "one_point.png", "Ours")
    assert (tmp_path / "eff.png").stat().st_size > 5000 and (tmp_path / "one_point.png").is_file()
    with pytest.raises(figures.FigureSkipped, match="no run of row 'Ours' is configured"):
        figures.label_efficiency_figure(points.iloc[:0], references, tmp_path / "none.png", "Ours")
    assert not (tmp_path / "none.png").exists()


def test_dice_distributions_and_training_curves_are_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    per_image = pd.DataFrame([{"label": label, "dataset": d, "dice": 100 * rng.random()}
                              for label in ("A 10%", "B 10%") for d in ("cbis", "inbreast") for _ in range(20)])
    curves = pd.DataFrame([{"label": label, "epoch": e, "mean": 1.0 / e + k, "std": 0.05, "n": 2}
                           for k, label in enumerate(("A 10%", "B 10%")) for e in range(1, 5)])
    for name in ("first", "second"):
        figures.dice_distributions_figure(per_image, ["A 10%", "B 10%"], tmp_path / f"dist_{name}.png", seed=0)
        figures.training_curves_figure(curves, ["A 10%", "B 10%"], tmp_path / f"curves_{name}.png")
    assert (tmp_path / "dist_first.png").read_bytes() == (tmp_path / "dist_second.png").read_bytes()
    assert (tmp_path / "curves_first.png").read_bytes() == (tmp_path / "curves_second.png").read_bytes()
    figures.dice_distributions_figure(per_image, ["A 10%", "B 10%"], tmp_path / "dist_other_seed.png", seed=1)
    assert (tmp_path / "dist_other_seed.png").read_bytes() != (tmp_path / "dist_first.png").read_bytes()
    with pytest.raises(figures.FigureSkipped):
        figures.training_curves_figure(curves.iloc[:0], ["A 10%"], tmp_path / "none.png")


def test_placeholder_and_data_preview_still_work(tiny_data, tmp_path):
    figures.placeholder_figure(tmp_path / "skipped.png", "label_efficiency.png", "no run of row 'Ours'")
    data_preview(tiny_data, tmp_path / "preview.png", per_domain=2, seed=0)
    assert (tmp_path / "skipped.png").is_file() and (tmp_path / "preview.png").stat().st_size > 1000
