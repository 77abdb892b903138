"""Each family's learning rate, chosen by one small sweep at one operating point (the middle of its frontier),
by the held-out training objective; the chosen rates make the Protocol every notebook trains with
(`notebook_protocol`). The sweep's runs are the frontier's own runs at that point, so nothing trains twice.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from saelib.lab.protocol import FAMILIES, LR_CANDIDATES, Protocol, make_protocol
from saelib.lab.scales import Scale

if TYPE_CHECKING:  # pragma: no cover
    from saelib.lab.experiments import RunResult, SAESpec, Site

def held_out_objective(sae, x, sparsity_coeff: float, chunk: int = 4096) -> float:
    """The training loss (`sae.loss(x, sparsity_coeff).loss`: reconstruction + lambda * sparsity + aux) on
    held-out activations x [tokens, d_in], averaged over chunks weighted by their size."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            total += float(sae.loss(xb, sparsity_coeff=sparsity_coeff).loss) * xb.shape[0]
            n += xb.shape[0]
    return total / max(1, n)


OPERATING_GRID = 4   # the LR sweep's operating point is read on a frontier grid of at most this many points


def lr_sweep_point(family: str, site: Site) -> SAESpec:
    """The LR sweep's operating point for `family`: the middle spec (the upper of the two central ones) of its
    operating grid with min(sweep_points, OPERATING_GRID) points. A frontier of 3 * k + 1 points (the scale's
    frontier_points: 7 at default and long) contains the 4-point grid (the coefficients are log-spaced between the
    same ends), so a denser frontier adds points without moving the operating point, the sweep's runs or the chosen
    rates."""
    from saelib.lab.experiments import default_max_k, frontier_specs

    specs = frontier_specs(family, min(site.scale.sweep_points, OPERATING_GRID), max_k=default_max_k(site))
    return specs[len(specs) // 2]


def lr_sweep_specs(family: str, site: Site, candidates: Sequence[float] = LR_CANDIDATES) -> list[SAESpec]:
    """The sweep's specs for one family: its operating point at every candidate learning rate."""
    point = lr_sweep_point(family, site)
    return [replace(point, train={**point.train, "lr": float(lr)}) for lr in candidates]


def lr_sweep_seeds(scale: Scale) -> tuple[int, ...]:
    """The LR sweep's seeds: seed 0 only. The candidates are a factor ~3 apart and the held-out objective moves
    by far more between them than between seeds, so one seed picks the rate; the claims' comparisons train every
    compared point at all n_seeds seeds. (`lr_sweep(..., seeds=...)` takes more.)"""
    return (0,)


def _point_text(spec: SAESpec) -> str:
    return f"k={spec.options['k']}" if "k" in spec.options else f"lambda={spec.sparsity_coeff:.3g}"


@dataclass
class LRSweep:
    """What `lr_sweep` measured: one row per (family, lr) with mean and sd over seeds, and the choice."""

    rows: list[dict]
    chosen: dict[str, float]
    protocol: Protocol
    runs: list[RunResult]
    seeds: tuple[int, ...]

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def lr_sweep(site: Site, base: Protocol | None = None, *, seeds: Sequence[int] | None = None,
             families: Sequence[str] = FAMILIES, candidates: Sequence[float] = LR_CANDIDATES,
             progress: bool = True) -> LRSweep:
    """Train every family at every candidate learning rate at its operating point (lr_sweep_point; seeds:
    lr_sweep_seeds(scale) unless given; cached runs load instantly) and choose, per family, the rate with the
    lowest mean held-out objective.

    The returned `.protocol` is `base` with `lrs` set to the choices and `lr_source` saying so. A choice at
    the edge of the candidate grid is flagged in the rows ("edge"): widen `candidates` to see past it."""
    from saelib.lab.experiments import sweep

    base = base or Protocol()
    seeds = lr_sweep_seeds(site.scale) if seeds is None else tuple(seeds)
    specs = [s for fam in families for s in lr_sweep_specs(fam, site, candidates)]
    # each candidate rate is the spec's own lr override; the base protocol provides everything else
    runs = sweep(site, specs, seeds=tuple(seeds), protocol=base, progress=progress)
    grouped: dict[tuple[str, float], list[RunResult]] = {}
    for r in runs:
        grouped.setdefault((r.spec.architecture, float(r.spec.train["lr"])), []).append(r)
    rows, chosen = [], {}
    for fam in families:
        fam_rows = []
        for lr in candidates:
            rs = grouped[(fam, float(lr))]
            row: dict[str, Any] = {"family": fam, "lr": float(lr), "n_seeds": len(rs),
                                   "operating point": _point_text(rs[0].spec)}
            for metric in ("objective", "l0", "delta_lm_loss", "fvu"):
                values = [float(r.metrics[metric]) for r in rs if metric in r.metrics]
                if values:
                    row[metric] = statistics.fmean(values)
                    row[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
            fam_rows.append(row)
        best = min(fam_rows, key=lambda row: row["objective"])
        chosen[fam] = best["lr"]
        for row in fam_rows:
            row["chosen"] = row is best
            row["edge"] = row is best and best["lr"] in (min(candidates), max(candidates))
        rows += fam_rows
    source = (f"chosen by the LR sweep: lowest held-out objective, mean of {len(seeds)} seed(s), at one operating "
              f"point per family, candidates {', '.join(f'{c:g}' for c in candidates)}")
    protocol = replace(base, lrs={**dict(base.lrs), **chosen}, lr_source=source)
    return LRSweep(rows, chosen, protocol, runs, tuple(seeds))


def tuned_protocol(site: Site, base: Protocol | None = None, *, seeds: Sequence[int] | None = None,
                   families: Sequence[str] = FAMILIES, progress: bool = True) -> Protocol:
    """`lr_sweep(site, base, seeds=seeds).protocol`: the protocol with every family's swept learning rate."""
    return lr_sweep(site, base, seeds=seeds, families=families, progress=progress).protocol


def notebook_protocol(site: Site, changes: Mapping[str, Any] | None = None, *, progress: bool = True
                      ) -> tuple[Protocol, LRSweep | None]:
    """The protocol a notebook trains with, from its `protocol_changes` parameter (a dict of Protocol fields):
    Protocol(**changes) with every family's learning rate from `lr_sweep` under that same protocol (cached:
    the first notebook to ask trains the sweep, the others load it). When `changes` gives "lrs" (every family's
    rate by hand), no sweep runs and lr_source says so. Returns (protocol, the sweep or None)."""
    changes = dict(changes or {})
    if "lrs" in changes:
        changes.setdefault("lr_source", "given by hand in protocol_changes")
        return make_protocol(changes), None
    tuning = lr_sweep(site, make_protocol(changes), progress=progress)
    return tuning.protocol, tuning
