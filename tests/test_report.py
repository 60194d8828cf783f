"""The report stage on fabricated run folders: table cells, paired comparisons, claims, figures, determinism.

Four runs x two seeds with chosen per-image Dice (tests/fake_runs.py), so every number below is
computed by hand: seed 0 is the base + 0.02 (CBIS) / + 0.01 (INbreast) per image, seed 1 the base
minus the same, and the other runs differ from Ours 10% by known per-image offsets. The authors'
protocol's mDice is 0.9 Dice + 0.05 per image (fake_runs.py), so its differences are 0.9 x Dice's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from benchmark.config import ConfigError
from benchmark.data.prepared import load_prepared
from benchmark.evaluation.statistics import two_stage_bootstrap
from benchmark.reporting import report, tables
from tests.conftest import tiny_params
from tests.fake_runs import COMMIT, authors_mdice_of, fabricate_run, rewrite_train_info

CBIS_BASE = np.array([0.30, 0.40, 0.50, 0.60])  # the tiny dataset's 4 CBIS test images
INBREAST_BASE = np.array([0.30, 0.40, 0.50, 0.60, 0.70, 0.80])  # its 6 INbreast test images
ALTERNATING = np.array([0.1, -0.1, 0.1, -0.06])  # Ours minus Weak-Only: -10, +10, -10, +6 points

# run name -> (method, row, strong fraction, uses weak, CBIS offset from Ours, INbreast offset from Ours)
RUNS = {
    "ours_10": ("ours", "Ours", 0.1, True, 0.0, 0.0),
    "strong_only_10": ("strong_only", "Strong-Only", 0.1, False, -0.10, +0.05),
    "weak_only_0": ("weak_only", "Weak-Only", 0.0, True, ALTERNATING, -0.20),
    "box_only_0": ("weak_only", "Box-Only", 0.0, True, -0.15, -0.25),  # a row of no paper table
}


def seeds_of(base: np.ndarray, jitter: float) -> dict[int, np.ndarray]:
    return {0: base + jitter, 1: base - jitter}


def write_inputs(tmp_path: Path, prepared: Path, runs: dict = RUNS, two_seeds: bool = True,
                 protocol: str = "threshold") -> tuple[Path, Path]:
    params = tiny_params()
    params["evaluate"]["protocol"] = protocol
    params["runs"] = {name: {"method": method, "row": row, "strong_fraction": fraction}
                      for name, (method, row, fraction, *_rest) in runs.items()}
    params["seeds"] = [0, 1] if two_seeds else [0]
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    data = load_prepared(prepared)
    runs_dir = tmp_path / "runs"
    for name, (method, row, fraction, uses_weak, cbis_offset, inbreast_offset) in runs.items():
        dice = {"cbis": seeds_of(CBIS_BASE + cbis_offset, 0.02),
                "inbreast": seeds_of(INBREAST_BASE + inbreast_offset, 0.01)}
        if not two_seeds:
            dice = {dataset: {0: values[0]} for dataset, values in dice.items()}
        fabricate_run(runs_dir, data, name, method=method, row=row, strong_fraction=fraction, uses_weak=uses_weak,
                      dice=dice, dirty_seeds=(1,) if name == "box_only_0" else ())
    return params_path, runs_dir


def render(params_path: Path, runs_dir: Path, prepared: Path, out: Path) -> str:
    report.main(["--params", str(params_path), "--runs", str(runs_dir), "--prepared", str(prepared),
                 "--out", str(out / "tables.md")])
    return (out / "tables.md").read_text()


@pytest.fixture(scope="module")
def rendered(tiny_prepared, tmp_path_factory) -> tuple[str, Path, tuple[Path, Path, Path]]:
    _, prepared = tiny_prepared
    tmp = tmp_path_factory.mktemp("report")
    params_path, runs_dir = write_inputs(tmp, prepared)
    out = tmp / "out"
    return render(params_path, runs_dir, prepared, out), out, (params_path, runs_dir, prepared)


def line_starting(text: str, prefix: str) -> str:
    matches = {line for line in text.splitlines() if line.startswith(prefix)}  # Ours 10% is in Tables 1 and 2
    assert len(matches) == 1, f"{len(matches)} different lines start with {prefix!r}"
    return matches.pop()


# Ours 10%, per test set and metric: (authors' protocol, threshold protocol, paper). CBIS Dice: seed means 47 and 43
# -> 45.00 ± 2.83, mDice 0.9 x + 5: 47.3 and 43.7 -> 45.50 ± 2.55; S_m = 40 + 0.5 Dice: 63.5, 61.5 -> 62.50 ± 1.41,
# authors' S_m = 45 + 0.5 Dice: 68.5, 66.5 -> 67.50 ± 1.41. INbreast Dice 56, 54 -> 55.00 ± 1.41, mDice 55.4, 53.6
# -> 54.50 ± 1.27; S_m 68, 67 -> 67.50 ± 0.71, authors' 73, 72 -> 72.50 ± 0.71. Paper: 72.26, 83.18, 60.11, 76.02.
OURS_CELLS = {"cbis_dice": ("45.50 ± 2.55 (n=2)", "45.00 ± 2.83 (n=2)", "72.26"),
              "cbis_sm": ("67.50 ± 1.41 (n=2)", "62.50 ± 1.41 (n=2)", "83.18"),
              "inbreast_dice": ("54.50 ± 1.27 (n=2)", "55.00 ± 1.41 (n=2)", "60.11"),
              "inbreast_sm": ("72.50 ± 0.71 (n=2)", "67.50 ± 0.71 (n=2)", "76.02")}


def test_table_cells_are_mean_and_std_over_seeds_under_both_protocols(rendered):
    text, _, _ = rendered
    cells = [cell for column in OURS_CELLS.values() for cell in column]  # threshold selected: authors' first
    assert line_starting(text, "| Ours | 10% | 90% |") == "| Ours | 10% | 90% | " + " | ".join(cells) + \
        " | 2 | 2.1 min |"
    header = line_starting(text, "| Methods | S | W | CBIS mDice (authors' eval) | CBIS Dice@0.5 | paper")
    assert header.startswith("| Methods | S | W | CBIS mDice (authors' eval) | CBIS Dice@0.5 | paper | "
                             "CBIS S_m (authors' eval) | CBIS S_m | paper | INbreast mDice (authors' eval) |")
    # Strong-Only 10%: CBIS 10 points lower (35.00), INbreast 5 points higher (60.00); no weak labels, W = 0%
    assert line_starting(text, "| Strong-Only | 10% | 0% |").startswith(
        "| Strong-Only | 10% | 0% | 36.50 ± 2.55 (n=2) | 35.00 ± 2.83 (n=2) | 65.66 | 62.50 ± 1.41 (n=2) | "
        "57.50 ± 1.41 (n=2) | 80.05 | 59.00 ± 1.27 (n=2) | 60.00 ± 1.41 (n=2) | 47.64 |")
    assert "Cells: mean ± std over seeds (n = number of seeds)." in text
    assert "Paper rows not configured in params.yaml: Strong-Only (100%)" in text


def test_other_runs_and_runs_tables(rendered):
    text, _, _ = rendered
    other = text.split("## Other runs", 1)[1].split("##", 1)[0]
    assert ("| Box-Only | 0% | 100% | 32.00 ± 2.55 (n=2) | 30.00 ± 2.83 (n=2) | 60.00 ± 1.41 (n=2) | "
            "55.00 ± 1.41 (n=2) | 32.00 ± 1.27 (n=2) | 30.00 ± 1.41 (n=2) |") in other
    assert "Box-Only" not in text.split("## Other runs", 1)[0].split("## Table 1", 1)[1], "not in the paper tables"
    commits = f"`{COMMIT[:10]}`, `{COMMIT[:10]}` (dirty)"  # seed 0 clean, seed 1 dirty
    assert f"| box_only_0 | weak_only | 0% | 0, 1 | 120 s | 5 s | {commits} |  |" in text
    assert "[performance.md](performance.md)" in text


def seed_matrix(run: str, dataset: str) -> np.ndarray:
    """(seeds x images) Dice of a fabricated run, as write_inputs fabricates it."""
    _, _, _, _, cbis_offset, inbreast_offset = RUNS[run]
    base, offset, jitter = ((CBIS_BASE, cbis_offset, 0.02) if dataset == "CBIS" else
                            (INBREAST_BASE, inbreast_offset, 0.01))
    return np.stack(list(seeds_of(base + offset, jitter).values()))


def comparison_cells(section: str, row: str, dataset: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| {row} |") and f"| {dataset} |" in line)
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_paired_comparisons_match_scipy_and_the_known_differences(rendered):
    text, _, _ = rendered
    section = text.split("## Paired comparisons: Ours 10% against every other run", 1)[1].split("## Figures", 1)[0]
    expected = {  # (other run, row, test set): (paper difference, verdict)
        ("strong_only_10", "Strong-Only", "CBIS"): ("+6.60", "agrees"),
        ("strong_only_10", "Strong-Only", "INbreast"): ("+12.47", "disagrees"),
        ("weak_only_0", "Weak-Only", "CBIS"): ("+7.39", "inconclusive"),
        ("weak_only_0", "Weak-Only", "INbreast"): ("+6.99", "agrees"),
        ("box_only_0", "Box-Only", "CBIS"): ("–", "–"),
    }
    for (run, row, dataset), (paper, verdict) in expected.items():
        cells = comparison_cells(section, row, dataset)
        ours, theirs = seed_matrix("ours_10", dataset), seed_matrix(run, dataset)
        difference = ours.mean(0) - theirs.mean(0)  # seeds averaged per image: the jitter cancels
        n = len(difference)
        assert cells[3:5] == [str(n), "2/2"]
        assert float(cells[5]) == pytest.approx(100 * difference.mean(), abs=0.006)
        boot = two_stage_bootstrap(100 * ours, 100 * theirs, n_resamples=10000)
        assert cells[6] == f"[{boot.low:+.2f}, {boot.high:+.2f}]" and cells[7] == f"{boot.p_value:.3g}"
        other = np.full(n, 0.5) - difference  # any pair with these differences gives the same signed-rank test
        assert float(cells[9]) == pytest.approx(stats.wilcoxon(np.full(n, 0.5), other).pvalue, rel=1e-2)
        assert cells[10:12] == [paper, verdict]
        assert cells[12] == f"±{(boot.high - boot.low) / 2:.2f}", "resolves: half the CI's width"
        assert (cells[13] == "–") == (verdict == "–"), "seeds for the paper's difference: judged claims only"
        assert (cells[8] == "–") == (verdict == "–"), "Holm p for the paper's claims only"
    # a constant per-image difference of +10 with seed jitter ±2 per run: the images add nothing, the seeds draw
    # 10 + {-4, -2, 0, 2, 4} with probabilities 1, 4, 6, 4, 1 (/16): each extreme > 2.5%, the CI is [6, 14]
    assert comparison_cells(section, "Strong-Only", "CBIS")[6] == "[+6.00, +14.00]"
    assert comparison_cells(section, "Strong-Only", "INbreast")[6] == "[-7.00, -3.00]"


def test_summary_states_source_time_seeds_code_and_claims(rendered):
    text, _, _ = rendered
    summary = text.split("## Summary", 1)[1].split("## Table 1", 1)[0]
    assert "**synthetic stand-in**" in summary
    assert ("Split: random; 0 of 4 CBIS test images have a view of the same breast in training (no patient "
            "metadata: every image counts as its own breast).") in summary
    assert "CPU test (2 threads)" in summary
    assert "**Total time** of the 4 runs (8 trainings, train + evaluate): 8.3 min." in summary  # 4 x (2 x 60 + 5) s
    assert "**Seeds:** 2 per run (0, 1)" in summary
    assert f"commit `{COMMIT[:10]}`" in summary and "**dirty** in 1 of 8 trainings: box_only_0 (seed 1)" in summary
    assert "**Paper's claims** (4): 2 agrees, 1 disagrees, 1 inconclusive." in summary
    assert "lies entirely on the paper's side of 0" in summary, "the rule is stated"
    # Holm across the 4 claims: the three with a constant difference have boot p = 2 / 10001, x4 < 0.05; the
    # inconclusive one stays far above
    assert ("*Holm correction* across the 4 judged claims (family-wise 5%, on the two-stage bootstrap p-values): "
            "3 of 4 survive (2 of 2 agreements, 1 of 1 disagreements).") in summary
    assert ("*Agrees* (2): Ours 10% minus Strong-Only 10% (CBIS +10.0 vs paper +6.6); "
            "Weak-Only 0% (INbreast +20.0 vs paper +7.0).") in summary
    assert "*Disagrees* (1): Ours 10% minus Strong-Only 10% (INbreast -5.0 vs paper +12.5)." in summary
    assert ("*Inconclusive* (1): Ours 10% minus Weak-Only 0% (CBIS -1.0 vs paper +7.4: no number of seeds would "
            "resolve it at this test-set size).") in summary
    assert "Box-Only" not in summary
    assert "**Dice@0.5 is set beside the paper's numbers** (`evaluate.protocol: threshold`)" in summary
    assert "per-image min-max normalisation" in summary and "nearly empty prediction" in summary


def test_every_figure_is_written_and_linked(rendered):
    text, out, _ = rendered
    for name in report.FIGURE_FILES:
        path = out / "figures" / name
        assert path.is_file() and path.stat().st_size > 3000, name
        assert f"[{name}](figures/{name}): " in text
        assert f"- [{name}](figures/{name}): not drawn" not in text, f"{name} has its inputs here"
    assert "2 example test images (rows, both test sets) x 4 runs (columns" in text


def test_second_render_is_byte_identical(rendered, tmp_path):
    text, out, (params_path, runs_dir, prepared) = rendered
    again = render(params_path, runs_dir, prepared, tmp_path / "again")
    assert again == text
    for name in report.FIGURE_FILES:
        assert (tmp_path / "again" / "figures" / name).read_bytes() == (out / "figures" / name).read_bytes(), name


def test_small_configuration_degrades_gracefully(tiny_prepared, tmp_path):
    """The tiny E2E configuration: two Strong-Only runs, one seed, no reference run."""
    _, prepared = tiny_prepared
    runs = {"strong_only_100": ("strong_only", "Strong-Only", 1.0, False, 0.1, 0.1),
            "strong_only_10": ("strong_only", "Strong-Only", 0.1, False, 0.0, 0.0)}
    params_path, runs_dir = write_inputs(tmp_path, prepared, runs, two_seeds=False)
    (runs_dir / "strong_only_10" / "examples.npz").unlink()
    text = render(params_path, runs_dir, prepared, tmp_path / "out")
    # Dice 0.45 + 0.1 + 0.02, mDice 0.9 x that + 0.05
    assert "| Strong-Only | 100% | 0% | 56.30 | 57.00 | 75.48 |" in text, "one seed: the value, no spread"
    assert "**Seeds:** one seed (0) per run" in text and "One seed per run" in text
    assert "Not computed: the reference run Ours 10%" in text
    assert "**Paper's claims:** not assessed" in text
    assert ("- [label_efficiency.png](figures/label_efficiency.png): not drawn: no run of row 'Ours' is configured"
            in text)
    assert "No examples.npz for: strong_only_10." in text
    for name in report.FIGURE_FILES:
        assert (tmp_path / "out" / "figures" / name).is_file(), name


def test_outputs_of_an_older_evaluate_stage_are_named(tiny_prepared, tmp_path):
    _, prepared = tiny_prepared
    params_path, runs_dir = write_inputs(tmp_path, prepared, {"ours_10": RUNS["ours_10"]})
    metrics = runs_dir / "ours_10" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"per_seed"', '"old_key"'))
    with pytest.raises(SystemExit, match="metrics.json: missing per_seed"):
        render(params_path, runs_dir, prepared, tmp_path / "out")


def test_an_evaluation_of_other_weights_is_refused(tiny_prepared, tmp_path):
    """Re-trained after its evaluation (or killed half-way through re-training): not reported as a result."""
    _, prepared = tiny_prepared
    params_path, runs_dir = write_inputs(tmp_path, prepared, {"ours_10": RUNS["ours_10"]})
    info = runs_dir / "ours_10" / "train_info.json"
    info.write_text(info.read_text().replace('"model_sha256": "sha-ours_10-1"', '"model_sha256": "retrained"'))
    with pytest.raises(SystemExit, match=r"ours_10/metrics.json evaluates other weights than .*train_info.json"):
        render(params_path, runs_dir, prepared, tmp_path / "out")
    assert not (tmp_path / "out" / "tables.md").exists()


def test_one_seed_per_run_gives_not_judged(tiny_prepared, tmp_path):
    _, prepared = tiny_prepared
    params_path, runs_dir = write_inputs(tmp_path, prepared, two_seeds=False)
    text = render(params_path, runs_dir, prepared, tmp_path / "out")
    summary = text.split("## Summary", 1)[1].split("## Table 1", 1)[0]
    assert "**Paper's claims** (4): all not judged (one seed)" in summary
    assert "*Agrees*" not in summary and "*Disagrees*" not in summary and "Holm correction" not in summary
    section = text.split("## Paired comparisons", 1)[1].split("## Figures", 1)[0]
    assert comparison_cells(section, "Strong-Only", "CBIS")[11] == "not judged (one seed)"
    assert comparison_cells(section, "Box-Only", "CBIS")[-1] == "–", "no paper number: no claim at all"


def test_the_authors_protocol_beside_the_papers_numbers(tiny_prepared, tmp_path):
    _, prepared = tiny_prepared
    params_path, runs_dir = write_inputs(tmp_path, prepared, protocol="authors")
    text = render(params_path, runs_dir, prepared, tmp_path / "out")
    cells = [cell for authors, threshold, paper in OURS_CELLS.values() for cell in (threshold, authors, paper)]
    assert line_starting(text, "| Ours | 10% | 90% |") == "| Ours | 10% | 90% | " + " | ".join(cells) + \
        " | 2 | 2.1 min |"
    summary = text.split("## Summary", 1)[1].split("## Table 1", 1)[0]
    assert "**mDice (authors' eval) is set beside the paper's numbers** (`evaluate.protocol: authors`)" in summary
    assert "The paired comparisons and claims use mDice (authors' eval)." in summary
    section = text.split("## Paired comparisons", 1)[1].split("## Figures", 1)[0]
    assert "Per-image mDice (authors' eval)" in section
    # mDice = 0.9 Dice + 0.05 per image: every difference is 0.9 x the Dice difference (Strong-Only CBIS: +9.00)
    assert float(comparison_cells(section, "Strong-Only", "CBIS")[5]) == pytest.approx(
        100 * (authors_mdice_of(0.5) - authors_mdice_of(0.4)), abs=0.006)
    params = yaml.safe_load(params_path.read_text())
    params["evaluate"]["protocol"] = "sam2"
    params_path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"params.yaml: evaluate.protocol = \"sam2\": must be one of threshold, "
                                          r"authors"):
        render(params_path, runs_dir, prepared, tmp_path / "bad")


def test_cell_formats_one_and_several_seeds():
    assert tables.cell([24.893]) == "24.89"
    assert tables.cell([47.0, 43.0]) == "45.00 ± 2.83 (n=2)"
    assert tables.cell([1.0, 2.0, 3.0]) == "2.00 ± 1.00 (n=3)"
    assert tables.cell([]) == "–"


def test_summary_says_what_the_run_could_resolve_and_whether_seeds_pair(rendered):
    """Each judged claim gets its resolving power; the seed pairing is measured and stated; the forest plot is drawn."""
    text, out, _ = rendered
    summary = text.split("## Summary", 1)[1].split("## Table 1", 1)[0]
    assert "*Resolving power*" in summary and "claims would be resolved with 80% power by the seeds run" in summary
    assert ("No number of seeds would resolve the paper's difference for the inconclusive claims (1) at this "
            "test-set size") in summary  # four images of differences -10, +10, -10, +6: their spread alone is ±8.8
    # every fabricated run has seed 0 at +jitter and seed 1 at -jitter: perfectly correlated seeds, but with two
    # seeds and four runs a sign flip of each run's seeds matches it with probability 2 x (1/2)^3: not shown
    assert "*Seed pairing*" in summary and "r = +1.00" in summary and "resampled independently" in summary
    assert (out / "figures" / "claims_forest.png").stat().st_size > 0
    assert "[claims_forest.png](figures/claims_forest.png): the 4 judged claims" in text


def test_the_median_seeds_needed_names_the_claims_it_covers():
    """The median of the seeds the inconclusive claims need leaves out those no number of seeds resolves; the line
    must say so, not read as the median of all of them."""
    from benchmark.reporting.claims import INCONCLUSIVE, Comparison, resolving_lines

    def claim(needed):
        return Comparison(None, "cbis", 318, 1.0, -2.0, 4.0, 0.5, 3.0, INCONCLUSIVE, seeds_needed=needed, power=0.3)

    mixed = resolving_lines([claim(4), claim(6), claim(None)])[0]
    assert "the 2 that more seeds could resolve would need a median of 5" in mixed
    assert "for the other 1 no number of seeds would" in mixed
    assert "The inconclusive claims (2) would need a median of 5" in resolving_lines([claim(4), claim(6)])[0]


def test_the_summary_quotes_the_scale_study_or_names_a_missing_one(rendered, tiny_prepared, tmp_path):
    text, _, (params_path, runs_dir, prepared) = rendered
    summary = text.split("## Summary", 1)[1].split("## Table 1", 1)[0]
    scale = line_starting(summary, "- **Scale** ([studies/scale](../studies/scale/report.md)")
    assert "*96px*: Strong-Only 100% 44.6 > " in scale, "the committed study's measured ranking"
    assert "This report's runs are at 32 px, a size the study did not race." in scale
    params = yaml.safe_load(params_path.read_text())
    params["report"]["scale_study"] = str(tmp_path / "absent.json")
    moved = tmp_path / "params.yaml"
    moved.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"report: params.yaml report.scale_study = .*absent.json: no such file"):
        render(moved, runs_dir, prepared, tmp_path / "out")
    assert not (tmp_path / "out" / "tables.md").exists()
    params["report"]["scale_study"] = None
    moved.write_text(yaml.safe_dump(params))
    assert "**Scale**" not in render(moved, runs_dir, prepared, tmp_path / "none")


def test_a_run_by_run_repro_and_mixed_precision_are_named(tiny_prepared, tmp_path):
    """A repro that commits each finished run trains every run at another commit with the same code, which the
    summary says; runs whose `precision: auto` resolved differently (CPUs with and without native bf16) are named."""
    _, prepared = tiny_prepared
    params_path, runs_dir = write_inputs(tmp_path, prepared)
    for k, name in enumerate(RUNS):
        path = runs_dir / name / "train_info.json"
        info = json.loads(path.read_text())
        info["precision"] = "bf16" if name == "ours_10" else "fp32"
        for seed_info in info["seeds"].values():
            seed_info["provenance"].update(git_commit=f"{k + 1:x}" * 40, git_dirty=False)
            seed_info["provenance"]["fingerprint"]["code"] = "same-code"
        rewrite_train_info(path.parent, info)
    summary = render(params_path, runs_dir, prepared, tmp_path / "out").split("## Table 1", 1)[0]
    assert "with the same code in every training (one fingerprint of benchmark/ and methods/)" in summary
    assert (f"- **Mixed precision:** the runs were not trained in one precision (bf16: ours_10; fp32: "
            f"{', '.join(name for name in RUNS if name != 'ours_10')})") in summary
    assert "fp32 precision" not in summary and "bf16 precision" not in summary
