"""DVC stage `prepare`: turn the configured data source into the compact prepared format.

    python -m benchmark prepare [--params params.yaml]

`data.source: synthetic` (the default) renders the two synthetic domains;
`data.source: real` reads CBIS-DDSM and INbreast from the roots in `data.real`.
Either way the output is `data/prepared/` (see benchmark.data.prepared) plus a preview figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from benchmark.cli import run_cli
from benchmark.config import load_params
from benchmark.data.prepared import TEST_ONLY, DomainArrays, check_replaceable, load_prepared, write_prepared
from benchmark.data.preview import data_preview
from benchmark.data.synthetic import generate_domain

PREPARED_DIR = Path("data/prepared")
PREVIEW_PATH = Path("reports/figures/data_preview.png")


def synthetic_domains(data_params: dict) -> tuple[dict[str, DomainArrays], dict]:
    synthetic = data_params["synthetic"]
    size = int(data_params["image_size"])
    drawn, extra = int(synthetic["n_cbis"]), int(synthetic["extra_cbis_test"])
    counts = {"cbis": drawn + extra, "inbreast": int(synthetic["n_inbreast"])}
    domains = {}
    for domain, count in tqdm(counts.items(), desc="rendering synthetic domains", unit="domain"):
        domains[domain] = generate_domain(domain, count, size, int(synthetic["seed"]), synthetic)
    # every image is rendered from its own index, so the extra test images (indices after the drawn ones) leave the
    # drawn images, their split, the strong-label order and hence every training exactly as without them
    domains["cbis"].extra[TEST_ONLY] = [False] * drawn + [True] * extra
    return domains, {"source": "synthetic", "generator": synthetic}


def real_domains(data_params: dict) -> tuple[dict[str, DomainArrays], dict]:
    from benchmark.data.real import load_real_domains  # imported lazily: pydicom/OpenCV only matter for real data

    domains, report = load_real_domains(data_params)
    return domains, {"source": "real", **report}


def prepare(data_params: dict, out: Path, preview: Path) -> pd.DataFrame:
    """Build the prepared data of `data_params` (params.yaml `data`, validated) into `out`; its manifest."""
    check_replaceable(out)  # before the work: a folder prepare did not write is never replaced
    builders = {"synthetic": synthetic_domains, "real": real_domains}
    start = time.perf_counter()
    domains, report = builders[data_params["source"]](data_params)
    # no timing in the report: every stage downstream depends on data/prepared, which must be byte-identical
    # when the inputs are (a re-run of this stage then invalidates nothing)
    seconds = time.perf_counter() - start
    manifest = write_prepared(
        out, domains, split_seed=int(data_params["split_seed"]), test_fraction=float(data_params["test_fraction"]),
        box_margin=int(data_params["box_margin"]), split=data_params["split"], report=report,
    )
    data_preview(load_prepared(out), preview, seed=int(data_params["split_seed"]))
    counts = manifest.groupby(["domain", "split"]).size().to_dict()
    print(json.dumps({f"{d}/{s}": int(n) for (d, s), n in counts.items()}) + f" (built in {seconds:.1f} s)")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(PREPARED_DIR))
    parser.add_argument("--preview", default=str(PREVIEW_PATH))
    args = parser.parse_args(argv)
    prepare(load_params(args.params)["data"], Path(args.out), Path(args.preview))  # checked: source, split known


if __name__ == "__main__":
    sys.exit(run_cli(main))
