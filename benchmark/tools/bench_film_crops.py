"""How much of the breast the prepare step's crop keeps on the ten real film mammograms in shared/.

    python -m benchmark bench-film-crops [--films DIR] [--before GIT_REF] [--out FILE.md] [--montage FILE.png]

For every film of shared/reference/real-samples/films (DDSM and CBIS-DDSM films with mass masks) the crop
of `preprocess_pair` (data.preprocess defaults) is compared with the hand-read breast rectangle of
tests/data/films/breast_extents.csv (its README says how it was read): the share of the breast's height
and width inside the crop, the crop's area outside that rectangle (extra background, as a share of the
rectangle's area) and the mask pixels the crop cuts off. `--before` adds the same figures for
benchmark/data/real/preprocess.py as it was at an older commit (read with `git show`).

The montage draws each film with the hand-read rectangle (green), the crop (red), the crop `--before`
(blue), the found breast outline (yellow) and the mask (magenta). It shows the films themselves, whose
licence keeps them out of this repository: it goes to the system's temporary folder unless told otherwise.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from benchmark.data.real import preprocess
from benchmark.data.real.settings import PreprocessSettings

REPO = Path(__file__).resolve().parents[2]
EXTENTS = REPO / "tests" / "data" / "films" / "breast_extents.csv"
FILMS = REPO.parent / "shared" / "reference" / "real-samples" / "films"
TILE_HEIGHT = 560  # px of one film in the montage
SETTINGS = PreprocessSettings(image_size=64)  # the crop does not depend on the output size


def hand_extents() -> dict[str, tuple[float, float, float, float]]:
    with open(EXTENTS, newline="") as handle:
        return {row["film"]: tuple(float(row[k]) for k in ("y0", "y1", "x0", "x1")) for row in csv.DictReader(handle)}


def load_film(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    (image_path,) = folder.glob(f"images/{name}.*")
    mask_name = name[:-len("_FULL")] if name.endswith("_FULL") else name
    image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(folder / "masks" / f"{mask_name}_mask.png"), cv2.IMREAD_GRAYSCALE)
    if image is None or mask is None:
        raise SystemExit(f"{folder}: cannot read {name}'s image or mask")
    return image, mask > 127


PREPROCESS_PLACES = ("benchmark/data/real/preprocess.py", "benchmark/real/preprocess.py")


def module_at(ref: str):
    """The breast finder's module as it was at git `ref` (benchmark/data/real/preprocess.py, or its place before
    the layout by concern, benchmark/real/preprocess.py), imported under another name."""
    errors = []
    for place in PREPROCESS_PLACES:
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{place}"], capture_output=True, text=True)
        if shown.returncode == 0:
            source = shown.stdout
            break
        errors.append(shown.stderr.strip())
    else:
        raise SystemExit(f"--before {ref}: git show failed: {' / '.join(errors)}")
    path = Path(tempfile.mkdtemp()) / "preprocess_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("preprocess_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def figures(crop, extent, shape, mask) -> dict:
    height, width = shape
    y0, y1, x0, x1 = extent[0] * height, extent[1] * height, extent[2] * width, extent[3] * width
    held_h = max(0.0, min(crop[1], y1) - max(crop[0], y0))
    held_w = max(0.0, min(crop[3], x1) - max(crop[2], x0))
    area = (crop[1] - crop[0]) * (crop[3] - crop[2])
    return {"height": held_h / (y1 - y0), "width": held_w / (x1 - x0),
            "extra": (area - held_h * held_w) / ((y1 - y0) * (x1 - x0)),
            "cut": int(mask.sum() - mask[crop[0]:crop[1], crop[2]:crop[3]].sum())}


def tile(image, mask, extent, crop, before, region_scale) -> np.ndarray:
    height, width = image.shape
    scale = TILE_HEIGHT / height
    small = cv2.resize(image, (round(width * scale), TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    small = (255.0 * (small / 255.0) ** 0.5).astype(np.uint8)  # lift the faint fatty tissue into view
    canvas = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    region, region_at = region_scale
    outline = cv2.resize(region.astype(np.uint8), canvas.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, (0, 220, 255), 1)
    small_mask = cv2.resize(mask.astype(np.uint8), canvas.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(small_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, (255, 0, 255), 1)

    def rectangle(box, colour, thickness):
        y0, y1, x0, x1 = (round(v * scale) for v in box)
        cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, thickness)

    rectangle((extent[0] * height, extent[1] * height, extent[2] * width, extent[3] * width), (0, 200, 0), 3)
    if before is not None:
        rectangle(before, (255, 120, 0), 2)
    rectangle(crop, (0, 0, 255), 1)
    return canvas


def label(canvas: np.ndarray, lines: list[str]) -> np.ndarray:
    band = np.full((18 * len(lines) + 6, canvas.shape[1], 3), 255, np.uint8)
    for k, text in enumerate(lines):
        cv2.putText(band, text, (4, 16 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([canvas, band], axis=0)


def montage(tiles: list[np.ndarray], columns: int = 5) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 6), (0, 0)), constant_values=255) for t in tiles]
    rows = [padded[i:i + columns] for i in range(0, len(padded), columns)]
    width = max(sum(t.shape[1] for t in row) for row in rows)
    return np.concatenate([np.pad(np.concatenate(row, axis=1), ((0, 6), (0, width - sum(t.shape[1] for t in row)),
                                                                (0, 0)), constant_values=255) for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", type=Path, default=FILMS)
    parser.add_argument("--before",
                        help="git ref whose breast finder (benchmark/data/real/preprocess.py) to compare with")
    parser.add_argument("--out", type=Path, help="write the table here (markdown) as well as printing it")
    parser.add_argument("--montage", type=Path, default=Path(tempfile.gettempdir()) / "film_crops_montage.png")
    args = parser.parse_args(argv)
    if not (args.films / "images").is_dir():
        raise SystemExit(f"--films {args.films}: no images/ folder (the films live in shared/, not in the repository)")
    old = module_at(args.before) if args.before else None
    header = "| film | now: height | width | extra background | mask px cut |"
    rule = "|---|---:|---:|---:|---:|"
    if old:
        header += f" before ({args.before}): height | width | extra background | mask px cut |"
        rule += "---:|---:|---:|---:|"
    lines, tiles = [header, rule], []
    for name, extent in hand_extents().items():
        image, mask = load_film(args.films, name)
        crop = preprocess.preprocess_pair(image, mask, SETTINGS)[2]["crop_box"]
        now = figures(crop, extent, image.shape, mask)
        row = f"| {name} | {now['height']:.1%} | {now['width']:.1%} | {now['extra']:+.1%} | {now['cut']} |"
        before = None
        if old:
            before = old.preprocess_pair(image, mask, SETTINGS)[2]["crop_box"]
            then = figures(before, extent, image.shape, mask)
            row += f" {then['height']:.1%} | {then['width']:.1%} | {then['extra']:+.1%} | {then['cut']} |"
        lines.append(row)
        text = [name, f"now: h {now['height']:.1%} w {now['width']:.1%} extra {now['extra']:+.1%}"]
        if old:
            text.append(f"before: h {then['height']:.1%} w {then['width']:.1%} extra {then['extra']:+.1%}")
        tiles.append(label(tile(image, mask, extent, crop, before, preprocess.breast_region(image)), text))
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    args.montage.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.montage), montage(tiles))
    print(f"montage: {args.montage} (green: hand-read breast, red: crop, blue: crop before, yellow: breast "
          "outline found, magenta: mask)", file=sys.stderr)


if __name__ == "__main__":
    main()
