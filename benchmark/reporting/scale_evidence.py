"""The summary's scale line: what the scale study (studies/scale, `report.scale_study`) measured on fresh
held-out images about the image size, so a reader of tables.md sees whether the run's verdicts depend on it.

The study tool writes its race as data (`race.json`: per condition the ranking with held-out Dice, Kendall's
tau between the conditions' rankings, the paper's Table-1 claims per condition); this module only quotes it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RACE_KEYS = ("entries", "conditions", "tau", "claims")


class ScaleEvidenceError(ValueError):
    """The configured race file is missing or is not a study's race.json."""


def read_race(path: Path) -> dict[str, Any]:
    try:
        race = json.loads(path.read_text())
        absent = [key for key in RACE_KEYS if key not in race]
        if absent:
            raise ValueError(f"no {', '.join(absent)}")
    except FileNotFoundError:
        raise ScaleEvidenceError(f"params.yaml report.scale_study = {path}: no such file (write it with "
                                 "`python -m benchmark study <study.yaml> --report-only`, or set "
                                 "report.scale_study: null)") from None
    except (OSError, ValueError, TypeError) as error:
        raise ScaleEvidenceError(f"params.yaml report.scale_study = {path}: not a study's race.json ({error}); "
                                 "re-write it with `python -m benchmark study <study.yaml> --report-only`") from None
    return race


def _size(overrides: dict[str, Any]) -> int | None:
    return (overrides.get("data") or {}).get("image_size")


def scale_line(race: dict[str, Any], source: str, image_size: int) -> str:
    """One summary bullet: each condition's ranking, tau, the claims whose verdict changes, where this run sits."""
    entries, conditions = race["entries"], race["conditions"]
    study = f"studies/{race.get('study', 'scale')}"
    rankings = []
    for name, condition in conditions.items():
        ranked = condition["ranking"]
        text = " > ".join(f"{entries[row['entry']]['label']} {row['dice']:.1f}" for row in ranked) or "not trained yet"
        missing = len(entries) - len(ranked)
        rankings.append(f"*{name}*: {text}" + (f" ({missing} of {len(entries)} rows not trained yet)" if missing and
                                                ranked else ""))
    taus = [f"{tau['tau']:.2f} (95% interval {tau['low']:.2f} to {tau['high']:.2f}, {tau['entries']} rows)"
            if "missing" not in tau else "not yet" for tau in race["tau"]]
    complete = [claim for claim in race["claims"] if claim["changes"] is not None]
    changed = [claim for claim in complete if claim["changes"]]
    reference = entries[race["reference"]]["label"] if race.get("reference") else "the reference"
    if not complete:
        claims = f"not yet judged at every size ({len(race['claims'])} claims judged at some)"
    elif changed:
        claims = "; ".join(f"{reference} vs {entries[claim['entry']]['label']} " + " / ".join(
            f"{c['verdict']} at {name}" for name, c in claim["conditions"].items()) for claim in changed)
        claims = f"{len(changed)} of {len(complete)} change verdict with the size: {claims}"
    else:
        claims = f"none of {len(complete)} changes verdict with the size"
    here = [name for name, condition in conditions.items() if _size(condition.get("overrides") or {}) == image_size]
    run = (f"This report's runs are at {image_size} px ({here[0]})" if here else
           f"This report's runs are at {image_size} px, a size the study did not race")
    data = "" if source == "synthetic" else " The study races the synthetic stand-in, not the real data of these runs."
    return (f"- **Scale** ([{study}](../{study}/report.md): the Table-1 rows trained at each image size, held-out Dice "
            f"(%) on fresh synthetic images, never a test split): " + "; ".join(rankings)
            + f". Kendall's tau between the sizes' rankings: {', '.join(taus) or 'one size only'}. "
            f"The paper's claims ({reference} minus each row): {claims}. {run}.{data}")
