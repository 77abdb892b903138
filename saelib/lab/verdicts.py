"""Verdicts over seeds: the paired differences at one compared L0 (`Paired`) and the rules that turn them into
a claim's verdict (`judge`). The rules are stated in saelib/lab/pareto.py's docstring and in each claim's "rule"
column; pareto.py builds the `Paired` values from frontiers.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from saelib.validation import check_choice

EXPECTATIONS = ("lower", "higher", "not_lower", "not_higher", "equivalent")


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); sd is nan for fewer than two values."""
    v = [float(x) for x in values]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else math.nan)


@dataclass(frozen=True)
class Paired:
    """One compared L0: per seed, y of one side (`values`) and of the reference (`reference`) there, and the
    paired difference log(y / y_ref) (`log_ratio` True) or y - y_ref."""

    l0: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    reference: tuple[float, ...]
    log_ratio: bool

    @property
    def differences(self) -> list[float]:
        if self.log_ratio:
            return [math.log(a / b) for a, b in zip(self.values, self.reference, strict=True)]
        return [a - b for a, b in zip(self.values, self.reference, strict=True)]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return mean_sd(self.differences)[0]

    @property
    def sd(self) -> float:
        return mean_sd(self.differences)[1]

    def spread(self) -> float:
        """Pooled seed-to-seed sd of the two sides (on the scale of the differences): one arm's own noise."""
        f = math.log if self.log_ratio else float
        sds = [mean_sd(f(v) for v in side)[1] for side in (self.values, self.reference)]
        return math.sqrt(sum(s * s for s in sds) / 2)

    def text(self, digits: int = 3) -> str:
        """ "L0 12.3: 0.0123 ± 0.0010 vs 0.0200 ± 0.0020 (-38%; log-ratio -0.49 ± 0.05)"; the number of seeds is
        added when it is below `seeds` (a seed dropped at this L0)."""
        (a, sa), (b, sb) = mean_sd(self.values), mean_sd(self.reference)
        if self.log_ratio:
            diff = f"{math.expm1(self.mean):+.0%}; log-ratio {self.mean:+.2f} ± {self.sd:.2f}"
        else:
            diff = f"difference {self.mean:+.{digits}g} ± {self.sd:.{digits}g}"
        return f"L0 {self.l0:.1f}: {_g(a, digits)} ± {_g(sa, 2)} vs {_g(b, digits)} ± {_g(sb, 2)} ({diff}, n={self.n})"


def _g(v: float, digits: int) -> str:
    return "nan" if math.isnan(v) else f"{v:.{digits}g}"


def all_positive(values: Iterable[float]) -> bool:
    return all(v > 0 for v in values)


def make_paired(l0: float, seeds: Sequence[int], values: Sequence[float], reference: Sequence[float],
                log_ratio: bool | None = None) -> Paired:
    """A Paired from per-seed values measured at the same L0 (e.g. an SAE and its rescaled copy, whose gates
    and so L0 are identical); log_ratio defaults to True when every value is > 0."""
    values, reference = tuple(float(v) for v in values), tuple(float(v) for v in reference)
    use_log = all_positive(values + reference) if log_ratio is None else log_ratio
    return Paired(float(l0), tuple(int(s) for s in seeds), values, reference, use_log)


def gaps_by_seed(paired: Sequence[Paired]) -> dict[int, float]:
    """Per seed, the mean paired difference over `paired` (e.g. all points of one arm against a reference
    frontier): the arm's gap to that frontier."""
    per_seed: dict[int, list[float]] = {}
    for p in paired:
        for s, d in zip(p.seeds, p.differences, strict=True):
            per_seed.setdefault(s, []).append(d)
    return {s: statistics.fmean(d) for s, d in sorted(per_seed.items())}


def compare_gaps(paired: Sequence[Paired], other: Sequence[Paired]) -> list[Paired]:
    """Two arms, each compared with the same reference frontier (paired_at_points): one Paired whose per-seed
    differences are gap - other gap (`gaps_by_seed`). Useful when the two arms' own L0 ranges barely overlap
    but both lie inside the reference's. With log-ratio gaps, `values` / `reference` hold exp(gap): each arm's
    y as a multiple of the reference frontier's at the same L0."""
    ga, gb = gaps_by_seed(paired), gaps_by_seed(other)
    seeds = [s for s in ga if s in gb]
    if not seeds:
        return []
    log_ratio = all(p.log_ratio for p in (*paired, *other))
    xs = [p.l0 for p in (*paired, *other)]
    l0 = math.exp(statistics.fmean(math.log(x) for x in xs))
    f = math.exp if log_ratio else float
    return [Paired(l0, tuple(seeds), tuple(f(ga[s]) for s in seeds), tuple(f(gb[s]) for s in seeds), log_ratio)]


# ----------------------------------------------------------------------------- verdicts

RULES = {
    "lower": "lower at every compared L0: all seeds' paired differences < 0 and |mean| > 2 sd of them",
    "higher": "higher at every compared L0: all seeds' paired differences > 0 and |mean| > 2 sd of them",
    "not_lower": "no better: at no compared L0 are all seeds' paired differences < 0 with |mean| > 2 sd",
    "not_higher": "at least as good: at no compared L0 are all seeds' paired differences > 0 with |mean| > 2 sd",
    "equivalent": "equivalent at every compared L0: |mean paired difference| < margin = 2 x pooled seed sd "
                  "of one arm (or the stated margin)",
}


def significant(p: Paired, sign: int) -> bool:
    """The paired differences all have `sign` (+1 / -1) and |mean| > 2 sd (needs >= 2 seeds)."""
    d = p.differences
    if len(d) < 2:
        return False
    return all(v * sign > 0 for v in d) and abs(p.mean) > 2 * p.sd


@dataclass(frozen=True)
class Result:
    """The outcome of `judge`: what a claim records."""

    holds: bool
    expect: str
    rule: str
    observed: str
    n_seeds: int
    paired: tuple[Paired, ...]
    margins: tuple[float, ...] = ()

    @property
    def mean(self) -> float:
        return mean_sd(p.mean for p in self.paired)[0]


def judge(paired: Sequence[Paired], expect: str, *, margin: float | None = None, what: str = "",
          digits: int = 4) -> Result:
    """Apply the verdict rule `expect` ("lower" | "higher" | "not_lower" | "not_higher" | "equivalent") to every
    compared L0.

    `what` prefixes the observed text (e.g. "delta LM loss, Gated vs ReLU"). For "equivalent" the margin is 2 x
    `Paired.spread()` at each L0 unless `margin` is given (same scale as the differences: log-ratio for
    positive metrics)."""
    check_choice("expect", expect, EXPECTATIONS)
    everything = tuple(paired)
    paired = tuple(p for p in everything if p.n >= 2)        # a compared L0 needs two seeds for a spread
    dropped = [p for p in everything if p.n < 2]
    n = min((p.n for p in paired), default=0)
    margins: tuple[float, ...] = ()
    rule = RULES[expect]
    if not paired:
        return Result(False, expect, rule, (what + ": " if what else "") + (
            "not compared (no overlapping L0 range)" if not everything else
            f"only {max(p.n for p in everything)} seed(s) inside the compared range: no verdict"), n, everything)
    parts = [p.text(digits) for p in paired]
    if expect == "lower":
        holds = all(significant(p, -1) for p in paired)
    elif expect == "higher":
        holds = all(significant(p, +1) for p in paired)
    elif expect == "not_lower":
        holds = not any(significant(p, -1) for p in paired)
    elif expect == "not_higher":
        holds = not any(significant(p, +1) for p in paired)
    else:
        margins = tuple(margin if margin is not None else 2 * p.spread() for p in paired)
        holds = all(abs(p.mean) < m for p, m in zip(paired, margins, strict=True))
        # each compared L0 in its own unit: a difference where a value there is <= 0, else a log-ratio
        parts = [f"{t}; margin {m:.3f} (log-ratio)" if p.log_ratio else f"{t}; margin {m:.3g} (difference)"
                 for t, m, p in zip(parts, margins, paired, strict=True)]
        if margin is None:
            rule = rule.replace("(or the stated margin)", "(margins printed)")
        else:
            rule = rule.replace("2 x pooled seed sd of one arm (or the stated margin)", f"{margin:.3g} (stated)")
    observed = (what + ": " if what else "") + "; ".join(parts)
    if dropped:
        observed += "; left out (fewer than 2 seeds in range): " + "; ".join(p.text(digits) for p in dropped)
    return Result(holds, expect, rule, observed, n, paired, margins)


# ----------------------------------------------------------------------------- why a verdict fails

SIGN = {"lower": -1, "higher": +1, "not_lower": +1, "not_higher": -1}   # the direction the claim expects


def diagnose(result: Result) -> str:
    """For a claim that does not hold: where each compared L0 stands against the seed spread, and what would
    settle it. Empty for a claim that holds. Built from `result.paired`, so it always says what this run found.

    Per compared L0 the paired differences are either beyond the spread (every seed's difference has one sign and
    |mean| > 2 sd) or within it; "as claimed" is the claim's direction (lower / higher; for not_lower / not_higher
    the direction that is allowed, for equivalent: inside the margin)."""
    if result.holds:
        return ""
    paired = [p for p in result.paired if p.n >= 2]
    if not paired:
        return ("not judged: " + ("the arms' L0 ranges do not overlap, so no L0 can be compared. Would settle it: "
                                  "sparsity coefficients that put both arms in one L0 range."
                                  if not result.paired else "fewer than 2 seeds inside the compared range. Would "
                                  "settle it: every seed's frontier reaching the compared L0s."))
    if result.expect == "equivalent":
        margins = result.margins or tuple(2 * p.spread() for p in paired)
        beyond = [(p, m) for p, m in zip(paired, margins, strict=True) if abs(p.mean) >= m]
        where = "; ".join(f"L0 {p.l0:.1f}: {p.mean:+.3g} vs margin {m:.3g}" + (" (beyond 2 sd of its own seeds too)"
                          if significant(p, 1 if p.mean > 0 else -1) else "") for p, m in beyond)
        return (f"{len(beyond)} of {len(paired)} compared L0s differ by more than the margin ({where}). Would settle "
                "it: the difference is measured, not noise, on this model at this budget; whether it closes is for "
                "longer budgets and the papers' setting (`scale = \"paper\"`).")
    sign = SIGN[result.expect]
    groups: dict[str, list[float]] = {"as claimed, beyond the seed spread": [],
                                      "as claimed, within the seed spread": [],
                                      "the other way, within the seed spread": [],
                                      "the other way, beyond the seed spread": []}
    for p in paired:
        if significant(p, sign):
            key = "as claimed, beyond the seed spread"
        elif significant(p, -sign):
            key = "the other way, beyond the seed spread"
        else:
            key = "as claimed, within the seed spread" if p.mean * sign > 0 else "the other way, within the seed spread"
        groups[key].append(p.l0)
    where = "; ".join(f"{k} at {len(v)} (L0 " + ", ".join(f"{x:.1f}" for x in v) + ")" for k, v in groups.items() if v)
    against = bool(groups["the other way, beyond the seed spread"])
    if result.expect in ("not_lower", "not_higher"):
        # fails only when some L0 is beyond the spread the other way: a measured difference
        settle = ("a measured difference, larger than the seed spread: the claim does not reproduce on this model at "
                  "this budget; left to test: other budgets and the papers' setting (`scale = \"paper\"`)")
    elif against:
        settle = ("the other way beyond the seed spread: the claim does not reproduce on this model at this budget; "
                  "left to test: longer budgets and the papers' model, width and tokens (`scale = \"paper\"`)")
    elif not groups["the other way, within the seed spread"]:
        settle = ("the claimed direction at every compared L0, but not beyond the seed spread everywhere: a larger "
                  "effect or a smaller spread would settle it (a longer budget, or the papers' width and model: "
                  "`scale = \"paper\"`)")
    else:
        settle = ("no consistent direction beyond the seed spread: any effect is smaller than the seed-to-seed noise "
                  "at this budget; a longer budget or the papers' setting (`scale = \"paper\"`) would settle it")
    n, seeds = len(paired), min(p.n for p in paired)
    return f"{n} compared L0{'' if n == 1 else 's'} ({seeds} seeds): {where}. Would settle it: {settle}."
