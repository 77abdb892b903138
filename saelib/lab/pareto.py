"""Comparing sparsity-fidelity frontiers "at equal L0", over seeds, with a stated verdict rule.

Two SAE families are never trained at exactly the same L0, so "Gated is better than ReLU at equal L0"
means: read each family's frontier at the same L0 by interpolating between its two neighbouring points, and
compare. Fidelity metrics (delta LM loss, FVU) fall roughly as a power of L0, i.e. they are close to straight
and convex on log-log axes, so interpolation is linear in log(y) against log(L0): a straight chord on linear
y between two points of a convex curve lies above it and flatters whichever family is compared against it.
Where a neighbouring value is <= 0 (a difference, |1 - gamma|, a dead-feature count) y is interpolated
linearly. Points outside a frontier's L0 range are never compared (no extrapolation).

One seed:

    y = interpolate_at(relu_rows, l0=20.0, y="delta_lm_loss")     # nan outside relu's L0 range
    pairs = compare_at_equal_l0(gated_rows, relu_rows, y="delta_lm_loss")  # at gated's points
    both = compare_frontiers(gated_rows, relu_rows, y="delta_lm_loss")     # at both families' points

Several seeds (rows carry "seed", and "point": the same for every seed of one spec, see RunResult.row):

    table = seed_summary(rows, ["l0", "delta_lm_loss"])       # one row per point: mean, <metric>_sd, n_seeds
    paired = paired_at_equal_l0(gated_rows, relu_rows, "delta_lm_loss")    # at log-spaced L0s in the overlap
    l0s = log_spaced(*common_l0_range(a_rows, b_rows, c_rows), 3)       # the same L0s for several pairs
    paired = paired_at_points(ablation_rows, gated_rows, "delta_lm_loss")  # each point vs the frontier
    paired = compare_gaps(paired_b, paired_c)   # two arms' gaps to one reference frontier, seed by seed
    result = judge(paired, expect="lower")      # .holds, .observed (mean ± sd per L0), .rule, .n_seeds
    claims.add_result("Gated beats ReLU at equal L0", source=..., paper=..., expected=..., result=result)

Each `Paired` holds, for one compared L0, the per-seed values of both sides and their paired difference:
log(y / y_ref) for a positive metric (so exp(mean) - 1 is the relative difference), y - y_ref otherwise.
Seed s of one side is paired with seed s of the other (same activation order and initial seed).

Verdict rules (`judge`; stated in each claim's "rule" column):

  lower / higher   at every compared L0, every seed's paired difference has the expected sign AND
                   |mean| > 2 sd of the paired differences (with 3 seeds about a one-sample t > 3.5).
  not_lower        "no better": at no compared L0 is the difference lower by that rule.
  not_higher       "at least as good": at no compared L0 is the difference higher by that rule.
  equivalent       at every compared L0, |mean paired difference| < margin, where margin = 2 x the pooled
                   seed-to-seed sd of the two sides at that L0 (the spread of one arm alone, measured here),
                   unless an explicit margin is given. The margin is printed beside the verdict.
A compared L0 needs at least 2 seeds (one with fewer is listed but left out of the verdict), and a claim needs at
least one compared L0; otherwise it does not hold ("not compared").
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

from saelib.lab.verdicts import (  # noqa: F401  (re-exported: the verdict API is used as saelib.lab.pareto.*)
    EXPECTATIONS,
    RULES,
    Paired,
    Result,
    all_positive,
    compare_gaps,
    diagnose,
    gaps_by_seed,
    judge,
    make_paired,
    mean_sd,
    significant,
)
from saelib.validation import check_positive

# ----------------------------------------------------------------------------- one frontier

def interpolate_at(rows: Sequence[Mapping], l0: float, y: str, x: str = "l0", log_y: bool | None = None) -> float:
    """rows' `y` at `x` = l0 between the two neighbouring rows: linear in log(x), and in log(y) when both
    neighbours are > 0 (log_y=None, the default) or always/never (log_y=True/False); nan outside their range."""
    check_positive(x, l0)
    pts = sorted((float(r[x]), float(r[y])) for r in rows if float(r[x]) > 0 and not math.isnan(float(r[y])))
    if not pts or not pts[0][0] <= l0 <= pts[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= l0 <= x1:
            use_log = (y0 > 0 and y1 > 0) if log_y is None else log_y
            if use_log and (y0 <= 0 or y1 <= 0):
                raise ValueError(f"log_y=True needs {y} > 0; got {y0} and {y1} around {x} = {l0}")
            if x1 == x0:
                return math.sqrt(y0 * y1) if use_log else (y0 + y1) / 2
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            if use_log:
                return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
            return y0 + t * (y1 - y0)
    return pts[0][1]                           # a single row, at exactly that l0


def compare_at_equal_l0(rows: Sequence[Mapping], reference: Sequence[Mapping], y: str,
                        x: str = "l0") -> list[dict]:
    """For every row inside the reference's x range: its y, the reference frontier's y at the same x, and
    the difference y - y_ref (negative: below the reference, i.e. better for a loss-like y)."""
    out = []
    for r in sorted(rows, key=lambda r: float(r[x])):
        if float(r[x]) <= 0:
            continue
        y_ref = interpolate_at(reference, float(r[x]), y, x)
        if not math.isnan(y_ref):
            out.append({x: float(r[x]), "y": float(r[y]), "y_ref": y_ref, "difference": float(r[y]) - y_ref})
    return out


def compare_frontiers(rows: Sequence[Mapping], reference: Sequence[Mapping], y: str, x: str = "l0") -> list[dict]:
    """compare_at_equal_l0 in both directions: at every trained point of either family that lies inside the
    other's x range, both frontiers' y (the other one interpolated), sorted by x.

    Each dict: x, "point_of" ("rows" or "reference": whose trained point it is), "y" (rows' frontier),
    "y_ref" (the reference's), "difference" = y - y_ref (negative: rows below the reference).
    """
    out = [{**p, "point_of": "rows"} for p in compare_at_equal_l0(rows, reference, y, x)]
    out += [{x: p[x], "y": p["y_ref"], "y_ref": p["y"], "difference": -p["difference"], "point_of": "reference"}
            for p in compare_at_equal_l0(reference, rows, y, x)]
    return sorted(out, key=lambda p: p[x])


# ----------------------------------------------------------------------------- over seeds

def by_seed(rows: Iterable[Mapping]) -> dict[int, list[Mapping]]:
    """rows grouped by their "seed" (0 when absent)."""
    out: dict[int, list[Mapping]] = {}
    for r in rows:
        out.setdefault(int(r.get("seed", 0)), []).append(r)
    return dict(sorted(out.items()))


def seed_summary(rows: Iterable[Mapping], metrics: Sequence[str], by: str = "point") -> list[dict]:
    """One row per `by` (default "point": one spec over its seeds): the fields equal in all its rows (label,
    sparsity_coeff, options, ...), n_seeds, and for each metric its mean (same name) and sample sd
    (<metric>_sd). Other fields that differ between seeds are left out."""
    groups: dict[object, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r.get(by, id(r)), []).append(r)
    out = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k not in metrics and k != "seed"
               and all(g.get(k) == v for g in group[1:])}
        row["n_seeds"] = len(group)
        for m in metrics:
            row[m], row[f"{m}_sd"] = mean_sd(float(g[m]) for g in group if m in g)
        out.append(row)
    return out


def common_l0_range(*row_sets: Sequence[Mapping], x: str = "l0") -> tuple[float, float] | None:
    """The x range where every seed's frontier of every row set is defined (None when empty)."""
    low, high = 0.0, math.inf
    for rows in row_sets:
        for seed_rows in by_seed(rows).values():
            xs = [float(r[x]) for r in seed_rows if float(r[x]) > 0]
            if not xs:
                return None
            low, high = max(low, min(xs)), min(high, max(xs))
    return (low, high) if 0 < low <= high else None


def log_spaced(low: float, high: float, n: int) -> list[float]:
    """n values spaced evenly in log between low and high, with the end points exactly low and high.

    (low * (high / low) ** 1.0 can land one rounding step above `high`: a frontier whose largest L0 is `high`
    would then read nan there and lose that seed from the comparison.)"""
    check_positive("n", n, integer=True)
    check_positive("low", low)
    check_positive("high", high)
    if n == 1 or high == low:
        return [float(low)]
    inner = [low * (high / low) ** (i / (n - 1)) for i in range(1, n - 1)]
    return [float(low), *(min(max(v, low), high) for v in inner), float(high)]


def paired_at_equal_l0(rows: Sequence[Mapping], reference: Sequence[Mapping], y: str, *,
                       l0s: Sequence[float] | None = None, n_l0: int = 3, x: str = "l0",
                       log_ratio: bool | None = None) -> list[Paired]:
    """Both frontiers read at the same L0s, seed by seed (seeds present on both sides).

    l0s: where to compare; default n_l0 values spaced evenly in log L0 across the range where every seed's
    frontier of both sides is defined (`common_l0_range`; none when the ranges do not overlap).
    log_ratio: paired differences as log(y / y_ref) (default when every value is > 0) or y - y_ref."""
    check_positive("n_l0", n_l0, integer=True)
    a_seeds, b_seeds = by_seed(rows), by_seed(reference)
    seeds = sorted(set(a_seeds) & set(b_seeds))
    if l0s is None:
        span = common_l0_range([r for s in seeds for r in a_seeds[s]], [r for s in seeds for r in b_seeds[s]], x=x)
        if span is None:
            return []
        l0s = log_spaced(*span, n_l0)
    out = []
    for l0 in l0s:
        kept, va, vb = [], [], []
        for s in seeds:
            a, b = interpolate_at(a_seeds[s], l0, y, x), interpolate_at(b_seeds[s], l0, y, x)
            if not (math.isnan(a) or math.isnan(b)):
                kept.append(s)
                va.append(a)
                vb.append(b)
        if kept:
            use_log = all_positive(va + vb) if log_ratio is None else log_ratio
            out.append(Paired(float(l0), tuple(kept), tuple(va), tuple(vb), use_log))
    return out


def paired_at_points(rows: Sequence[Mapping], reference: Sequence[Mapping], y: str, *, x: str = "l0",
                     by: str = "point", log_ratio: bool | None = None) -> list[Paired]:
    """Each point of `rows` (a spec over its seeds, grouped by `by`) against the reference frontier of the same
    seed at that seed's own L0. A seed whose point lies outside that seed's reference range is left out;
    the Paired's l0 is the geometric mean of the kept seeds' L0."""
    ref_seeds = by_seed(reference)
    groups: dict[object, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r.get(by, id(r)), []).append(r)
    out = []
    for group in groups.values():
        kept, va, vb, xs = [], [], [], []
        for r in sorted(group, key=lambda r: int(r.get("seed", 0))):
            s = int(r.get("seed", 0))
            if s not in ref_seeds or float(r[x]) <= 0:
                continue
            b = interpolate_at(ref_seeds[s], float(r[x]), y, x)
            if not math.isnan(b):
                kept.append(s)
                va.append(float(r[y]))
                vb.append(b)
                xs.append(float(r[x]))
        if kept:
            use_log = all_positive(va + vb) if log_ratio is None else log_ratio
            l0 = math.exp(statistics.fmean(math.log(v) for v in xs))
            out.append(Paired(l0, tuple(kept), tuple(va), tuple(vb), use_log))
    return sorted(out, key=lambda p: p.l0)


# ----------------------------------------------------------------------------- are there enough points?

def leave_one_out(rows: Sequence[Mapping], y: str, *, x: str = "l0", by: str = "point") -> list[dict]:
    """How well a frontier's interior points are predicted from their neighbours: for each seed and each point
    that has a neighbour on both sides (sorted by x), log(y measured / y interpolated log-log between the two
    neighbours). The neighbours lie twice as far apart as the frontier's own points, so this overstates the
    interpolation error of the full frontier (by ~4x for a smoothly curved log-log frontier): an upper bound.

    Returns one dict per interior point (grouped by `by`): its mean x, the per-seed errors ("errors"), their
    mean ("error"), and the seed-to-seed sd of log(y) at that x ("seed_sd", each seed's full frontier read at the
    point's mean x): the noise any comparison at that L0 carries."""
    errors: dict[object, list[tuple[float, float]]] = {}
    seeds = by_seed(rows)
    for seed_rows in seeds.values():
        pts = sorted((r for r in seed_rows if float(r[x]) > 0 and float(r[y]) > 0), key=lambda r: float(r[x]))
        for left, mid, right in zip(pts, pts[1:], pts[2:], strict=False):
            guess = interpolate_at([left, right], float(mid[x]), y, x, log_y=True)
            errors.setdefault(mid.get(by, id(mid)), []).append((float(mid[x]), math.log(float(mid[y]) / guess)))
    out = []
    for point, pairs in errors.items():
        l0 = math.exp(statistics.fmean(math.log(v) for v, _ in pairs))
        at = [interpolate_at(s_rows, l0, y, x) for s_rows in seeds.values()]
        logs = [math.log(v) for v in at if not math.isnan(v) and v > 0]
        out.append({by: point, x: l0, "errors": tuple(e for _, e in pairs),
                    "error": statistics.fmean(e for _, e in pairs),
                    "seed_sd": statistics.stdev(logs) if len(logs) >= 2 else math.nan})
    return sorted(out, key=lambda r: r[x])


def spacing_error_estimate(rows: Sequence[Mapping], y: str, *, x: str = "l0") -> tuple[float, float]:
    """An estimate, not a bound: the frontier's own interpolation error as a fraction of the comparison margin.

    A leave-one-out gap is twice the frontier's spacing, and a chord's error on a smoothly bent log-log curve grows
    as its length squared, so the error of the frontier's own chords is about a quarter of `leave_one_out`'s (exact
    for a parabola in log-log). Returns (largest |mean error| / 4 / (2 x seed sd) over the interior points, its x);
    (nan, nan) with no interior point or no seed spread."""
    ratios = [(abs(c["error"]) / 4 / (2 * c["seed_sd"]), c[x]) for c in leave_one_out(rows, y, x=x)
              if c["seed_sd"] > 0]
    return max(ratios) if ratios else (math.nan, math.nan)


def interpolation_verdict(rows: Sequence[Mapping], y: str, *, what: str = "") -> tuple[bool, str, int]:
    """Is the frontier dense enough for equal-L0 readings? Holds when at every interior point the mean
    leave-one-out error (an upper bound, see `leave_one_out`) is smaller than the equivalence margin of the
    comparisons, 2 x the seed sd of log(y) at that L0: interpolation alone cannot then make a verdict. Returns
    (holds, observed text, fewest seeds behind a point); no interior point (fewer than 3 points): does not hold."""
    checks = leave_one_out(rows, y)
    if not checks:
        return False, (what + ": " if what else "") + "fewer than 3 points: nothing to check", 0
    parts = [f"L0 {c['l0']:.1f}: {c['error']:+.3f} ± {statistics.stdev(c['errors']) if len(c['errors']) > 1 else 0:.3f}"
             f" (n={len(c['errors'])}) vs margin {2 * c['seed_sd']:.3f}" for c in checks]
    holds = all(abs(c["error"]) < 2 * c["seed_sd"] for c in checks)
    return holds, (what + ": " if what else "") + "; ".join(parts), min(len(c["errors"]) for c in checks)
