"""The tuning rule every study decides by: a variant replaces a method's reference reading only on a paired
held-out gain that seed noise cannot explain.

Per method (and per condition of the study), the *reference* is the first variant of its entry: the reading
closest to the method's source, quoted in the study file. For every other eligible variant, d_s is its
held-out Dice minus the reference's for training seed s (the same seed, the same fresh images), d their mean
and SE = sd(d_s) / sqrt(n) the standard error over the n seeds. After the study's seeds:

- d > `replace_se` x SE and d > `min_gain` Dice points: the variant may replace the reference;
- `extend_se` x SE < d <= `replace_se` x SE: undecided; both train the study's `extra_seeds` too and the
  rule is applied again on all seeds, once (a gain still below the bar then keeps the reference);
- otherwise the reference stays.

Among several variants that may replace the reference, the one with the largest mean gain is chosen. The
default numbers (2 SE, 0.5 Dice, 1 SE; 3 seeds, then 5) are issue 28's; a study file may only restate them
or make them stricter, so no study can decide on less evidence than this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from benchmark.config import ConfigError

REPLACE, KEEP, EXTEND, WAITING = "replace", "keep", "extend", "waiting"


@dataclass(frozen=True)
class Rule:
    replace_se: float = 2.0  # standard errors the paired gain must exceed
    min_gain: float = 0.5  # Dice points the paired gain must exceed
    extend_se: float = 1.0  # above this many standard errors (and not above replace_se): train the extra seeds

    @classmethod
    def from_study(cls, raw: Any, source: str) -> "Rule":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: rule must be a mapping with replace_se, min_gain and extend_se (the "
                              "tie_margin rule of earlier studies is retired: see benchmark/tools/study_rule.py).")
        unknown = sorted(set(raw) - {"replace_se", "min_gain", "extend_se"})
        if unknown:
            raise ConfigError(f"{source}: rule.{unknown[0]}: unknown key; the rule takes replace_se, min_gain, "
                              "extend_se.")
        rule = cls(**{key: float(value) for key, value in raw.items()})
        floor = cls()
        if rule.replace_se < floor.replace_se or rule.min_gain < floor.min_gain or \
                not floor.extend_se <= rule.extend_se <= rule.replace_se:
            raise ConfigError(f"{source}: rule {raw}: may not be looser than replace_se {floor.replace_se:g}, "
                              f"min_gain {floor.min_gain:g}, extend_se {floor.extend_se:g} (and extend_se <= "
                              "replace_se).")
        return rule

    def text(self, seeds: int, extra_seeds: int) -> str:
        return (f"the reference is each method's reading closest to its source (the first variant, quoted in the "
                f"study file); a variant replaces it only if its paired held-out gain (same seeds, same fresh "
                f"images) exceeds {self.replace_se:g} standard errors over seeds and {self.min_gain:g} Dice points; "
                f"a gain between {self.extend_se:g} and {self.replace_se:g} SE after {seeds} seeds trains "
                f"{extra_seeds} more seeds of both and is decided at {seeds + extra_seeds}; among variants that "
                "pass, the largest gain is chosen; otherwise the reference stays.")


@dataclass(frozen=True)
class Verdict:
    state: str  # REPLACE, KEEP, EXTEND, WAITING
    gain: float  # mean paired difference, Dice points (nan while waiting)
    se: float  # its standard error over seeds (nan with fewer than two seeds)
    seeds: int

    def describe(self) -> str:
        if self.state == WAITING:
            return "waiting for seeds"
        return f"{self.gain:+.2f} ± {self.se:.2f} SE ({self.seeds} seeds): {self.state}"


def judge(differences: Sequence[float], rule: Rule, seeds: int, extra_seeds: int) -> Verdict:
    """The rule for one variant: `differences` are its per-seed paired gains over the reference, Dice points."""
    d = np.asarray(differences, float)
    if len(d) < seeds:
        return Verdict(WAITING, float("nan"), float("nan"), len(d))
    gain = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    if extra_seeds and seeds < len(d) < seeds + extra_seeds:  # the extra seeds are on their way: decide at the end
        return Verdict(EXTEND, gain, se, len(d))
    if gain > rule.replace_se * se and gain > rule.min_gain:
        return Verdict(REPLACE, gain, se, len(d))
    if extra_seeds and len(d) < seeds + extra_seeds and rule.extend_se * se < gain <= rule.replace_se * se:
        return Verdict(EXTEND, gain, se, len(d))
    return Verdict(KEEP, gain, se, len(d))


def choose(reference: str, verdicts: dict[str, Verdict]) -> tuple[str | None, str]:
    """(chosen variant or None while undecided, why) from the verdicts of the reference's eligible rivals."""
    pending = [name for name, v in verdicts.items() if v.state in (WAITING, EXTEND)]
    if pending:
        extending = [name for name in pending if verdicts[name].state == EXTEND]
        why = (f"not decided: {', '.join(extending)} between the bounds, training the extra seeds" if extending
               else f"not decided: {', '.join(pending)} still training")
        return None, why
    passing = {name: v for name, v in verdicts.items() if v.state == REPLACE}
    if passing:
        best = max(passing, key=lambda name: passing[name].gain)
        return best, f"{best} beats the reference {reference} by {passing[best].describe()}"
    if verdicts:
        best = max(verdicts, key=lambda name: verdicts[name].gain)
        return reference, (f"no variant clears the rule (best: {best}, {verdicts[best].describe()}): the reference "
                           f"{reference} stays")
    return reference, f"the reference {reference} is the only eligible reading"
