"""How much of one stride-32 cell a mass box fills: what a perfect spatial prompt can reach on f_r (issue 28).

Ours' uncertainty map U = 1 - sigmoid(Dec_a) learns the box (Dec_a is supervised by the reversed box label), so a
perfect U is the box indicator; area-pooled onto the stride-32 grid where the literal reading multiplies f_r, its
largest cell value is the fraction of that cell the box fills (1 only if the box covers a whole cell).
Measured per mass box, with the project's own code paths:
- synthetic CBIS-like images (benchmark.data.synthetic, the default's data.synthetic settings, generator seed 8,
  never trained on) rendered at 96 and 192 px, boxes = benchmark.data.prepared.component_boxes;
- real CBIS-DDSM films (../shared/reference/real-samples/cbis-boxes: 1,231 training films at 800 px, 1,318 mass
  boxes), cropped to the breast as the pipeline crops (benchmark.data.real.preprocess.find_breast), the crop
  resized to a square of 352 px (the paper's size) and, for comparison, 192 px.
Run: python measurements/prompt_grid_2026-12-07.py  (writes nothing; prints the table of prompt_grid_2026-12-07.md)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmark.config import load_params  # noqa: E402
from benchmark.data.prepared import component_boxes  # noqa: E402
from benchmark.data.real.preprocess import find_breast  # noqa: E402
from benchmark.data.synthetic import render_image  # noqa: E402

STRIDE = 32
BOXES = REPO.parent / "shared" / "reference" / "real-samples" / "cbis-boxes"


def best_cell_fill(top: float, bottom: float, left: float, right: float, size: int) -> float:
    """Largest fraction of one stride-32 cell (of a size x size image) the box [top, bottom) x [left, right) fills."""
    cell = size / (size // STRIDE)
    edges = np.arange(size // STRIDE + 1) * cell
    rows = np.clip(np.minimum(bottom, edges[1:]) - np.maximum(top, edges[:-1]), 0, None)
    cols = np.clip(np.minimum(right, edges[1:]) - np.maximum(left, edges[:-1]), 0, None)
    return float(rows.max() * cols.max() / cell ** 2)


def synthetic(size: int, count: int) -> list[tuple[float, float]]:
    params = load_params(REPO / "params.yaml")["data"]["synthetic"]
    found = []
    for index in range(count):
        _, mask = render_image(index, size, 8, "cbis", params)
        for left, top, right, bottom in component_boxes(mask):
            found.append((np.sqrt((bottom - top) * (right - left)), best_cell_fill(top, bottom, left, right, size)))
    return found


def real(sizes: tuple[int, ...]) -> dict[int, list[tuple[float, float]]]:
    coco = json.loads((BOXES / "boxes.coco.json").read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    by_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    found = {size: [] for size in sizes}
    for image_id, boxes in by_image.items():
        film = cv2.imread(str(BOXES / "images" / names[image_id]), cv2.IMREAD_GRAYSCALE)
        r0, r1, c0, c1 = find_breast(film).box
        for x, y, w, h in boxes:
            for size in sizes:
                sy, sx = size / (r1 - r0), size / (c1 - c0)
                top, bottom = (y - r0) * sy, (y + h - r0) * sy
                left, right = (x - c0) * sx, (x + w - c0) * sx
                found[size].append((np.sqrt((bottom - top) * (right - left)),
                                    best_cell_fill(top, bottom, left, right, size)))
    return found


def line(name: str, rows: list[tuple[float, float]]) -> str:
    side, fill = np.array(rows).T
    return (f"| {name} | {len(rows)} | {np.median(side):.1f} | {np.median(fill):.2f} | "
            f"{np.percentile(fill, 10):.2f} - {np.percentile(fill, 90):.2f} | {100 * np.mean(fill >= 0.5):.0f}% | "
            f"{100 * np.mean(fill >= 0.999):.0f}% |")


def main() -> None:
    print("| boxes | n | median box side (px) | median best-cell fill | 10th - 90th percentile | fill >= 0.5 "
          "| a whole cell |")
    print("|---|---|---|---|---|---|---|")
    for size in (96, 192):
        print(line(f"synthetic CBIS-like, {size} px ({size // STRIDE} x {size // STRIDE} grid)", synthetic(size, 300)))
    if BOXES.is_dir():
        for size, rows in real((192, 352)).items():
            print(line(f"real CBIS-DDSM, breast crop at {size} px ({size // STRIDE} x {size // STRIDE} grid)", rows))
    else:
        print(f"(real boxes skipped: {BOXES} absent)")


if __name__ == "__main__":
    main()
