"""How fast the CBIS-DDSM loader decodes and preprocesses full-size mammograms, with 1 vs N worker processes.

    python -m benchmark bench-real-prepare --images 8 --workers 1 2

Writes synthetic 4800 x 3000 uint16 DICOMs (the size of a digitised CBIS-DDSM film) with full-size 8-bit
masks and small crops, in the TCIA UID layout with both description CSVs, to a temporary folder; then
times `load_cbis` once per worker count and prints images/second and the speed-up over the first count.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark.data.real.cbis_ddsm import load_cbis
from benchmark.data.real.dicomio import write_dicom
from benchmark.data.real.settings import real_settings

HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
          "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
          "image file path", "cropped image file path", "ROI mask file path"]


def synthetic_film(rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A breast-shaped bright region on a noisy film background, and one elliptic mass mask (0/255)."""
    y, x = np.ogrid[0:rows, 0:cols]
    breast = (x / (0.7 * cols)) ** 2 + ((y - rows / 2) / (0.42 * rows)) ** 2 < 1
    film = rng.integers(1500, 2500, (rows, cols), dtype=np.uint16)
    film[breast] += np.uint16(18000)
    cy, cx, r = rows * rng.uniform(0.35, 0.65), cols * rng.uniform(0.15, 0.4), rows * rng.uniform(0.01, 0.03)
    mask = (((y - cy) / r) ** 2 + ((x - cx) / (0.8 * r)) ** 2 < 1).astype(np.uint8) * 255
    return film, mask


def write_uid_dataset(root: Path, count: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    uid = iter(f"1.3.6.1.4.1.9590.100.1.2.{n:030d}" for n in range(1, 10 * count + 10))
    records = []
    for index in range(count):
        image_id = f"Mass-Training_P_{index:05d}_LEFT_CC"
        image_path = f"{image_id}/{next(uid)}/{next(uid)}/000000.dcm"
        folder = f"{image_id}_1/{next(uid)}/{next(uid)}"
        film, mask = synthetic_film(rows, cols, rng)
        write_dicom(root / image_path, film, series_description="full mammogram images")
        write_dicom(root / folder / "000000.dcm", mask, series_description="ROI mask images")  # swapped, as in CBIS
        write_dicom(root / folder / "000001.dcm", film[:300, :250].copy(), series_description="cropped images")
        records.append([f"P_{index:05d}", "2", "LEFT", "CC", "1", "mass", "OVAL", "CIRCUMSCRIBED", "4", "BENIGN",
                        "3", image_path, f"{folder}/000000.dcm", f"{folder}/000001.dcm\n"])
    for split, rows_of_split in (("train", records), ("test", [])):
        with open(root / f"mass_case_description_{split}_set.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerows([HEADER] + rows_of_split)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, default=4800)
    parser.add_argument("--cols", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=352)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_real_prepare_") as tmp:
        root = Path(tmp) / "cbis"
        started = time.perf_counter()
        write_uid_dataset(root, args.images, args.rows, args.cols)
        print(f"wrote {args.images} images of {args.rows}x{args.cols} uint16 in {time.perf_counter() - started:.1f} s "
              f"(cpu_count={os.cpu_count()})")
        rates = {}
        for workers in args.workers:
            settings = real_settings({"image_size": args.image_size, "real": {
                "cbis_root": str(root), "inbreast_root": str(root), "cbis_layout": "uid", "workers": workers}})
            started = time.perf_counter()
            arrays, report = load_cbis(settings)
            seconds = time.perf_counter() - started
            assert report["images"] == args.images and not report["skipped"], report["skipped"]
            rates[workers] = args.images / seconds
            print(f"workers={workers}: {seconds:.2f} s, {rates[workers]:.2f} images/s")
        first = args.workers[0]
        for workers in args.workers[1:]:
            print(f"speed-up workers={workers} vs workers={first}: {rates[workers] / rates[first]:.2f}x")


if __name__ == "__main__":
    main()
