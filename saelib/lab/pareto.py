"""Comparing sparsity-fidelity frontiers "at equal L0".

Two SAE families are never trained at exactly the same L0, so "Gated is better than ReLU at equal L0"
means: at each point of one family, read the other family's frontier at the same L0 by interpolating
between its two neighbouring points (linearly in log L0, the axis the papers plot), and compare.
Points outside the other frontier's L0 range are not compared (no extrapolation).

    rows = [r.row() for r in sweep(site, specs)]                 # dicts with "l0", "delta_lm_loss", ...
    y = interpolate_at(relu_rows, l0=20.0, y="delta_lm_loss")    # nan outside relu's L0 range
    pairs = compare_at_equal_l0(gated_rows, relu_rows, y="delta_lm_loss")
    # [{"l0": 18.2, "y": 0.031, "y_ref": 0.052, "difference": -0.021}, ...]  (difference = y - y_ref)
    both = compare_frontiers(gated_rows, relu_rows, y="delta_lm_loss")   # also at relu's points in gated's range
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from saelib.validation import check_positive


def interpolate_at(rows: Sequence[Mapping], l0: float, y: str, x: str = "l0") -> float:
    """rows' `y` at `x` = l0, linear in log(x) between the two neighbouring rows; nan outside their range."""
    check_positive(x, l0)
    pts = sorted((float(r[x]), float(r[y])) for r in rows if float(r[x]) > 0)
    if not pts or not pts[0][0] <= l0 <= pts[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= l0 <= x1:
            if x1 == x0:
                return (y0 + y1) / 2
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
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
    Using both families' points matters when their ranges barely overlap (a single point of one may fall
    inside the other's range while several of the other's fall inside its own).
    """
    out = [{**p, "point_of": "rows"} for p in compare_at_equal_l0(rows, reference, y, x)]
    out += [{x: p[x], "y": p["y_ref"], "y_ref": p["y"], "difference": -p["difference"], "point_of": "reference"}
            for p in compare_at_equal_l0(reference, rows, y, x)]
    return sorted(out, key=lambda p: p[x])
