"""Resolving power of the committed runs (the last full repro, 0efc27e: 100 CBIS-like / 80 INbreast-like test images,
bf16): the "before" figures of issue 27. Run from the repository root: PYTHONPATH=. python measurements/<this file>.
It reads runs/*/metrics.json and per_image.csv directly (those runs predate the hashes the report now verifies)."""
import json
from pathlib import Path

import pandas as pd

from benchmark.config import load_params
from benchmark.reporting.claims import (
    compare,
    needs_text,
    pairing_lines,
    resolving_lines,
    seed_pairings,
    seed_tables,
)
from benchmark.reporting.results import RunResult

params = load_params("params.yaml")
results = []
for name, entry in params["runs"].items():
    m = json.loads(Path(f"runs/{name}/metrics.json").read_text())
    seeds = sorted(m["per_seed"], key=int)
    r = RunResult(name, entry["method"], entry["row"], 100*entry["strong_fraction"], 0, seeds, m, {})
    r.label = f"{r.row} {r.strong:g}%"
    results.append(r)
frames = {r.name: pd.read_csv(f"runs/{r.name}/per_image.csv", dtype={"image_id": str}) for r in results}
tables = seed_tables(results, frames, "dice", Path("runs"))
pair = seed_pairings(tables)
ref = next(r for r in results if r.name == "ours_10")
comps = compare(ref, results, tables, 10000, pair)
fam = [c for c in comps if c.judged]
print("\n".join(resolving_lines(fam) + pairing_lines(pair)))
for c in fam:
    print(f"{c.other.label:28s} {c.dataset:9s} {c.mean:+6.2f} [{c.low:+.2f},{c.high:+.2f}] ±{c.half_width:.2f} "
          f"paper {c.paper_difference:+.2f} {c.verdict:13s} power {c.power:.2f} {needs_text(c.seeds_needed)} "
          f"other {c.other_ci}")
