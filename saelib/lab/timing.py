"""Where a notebook's wall time goes: SAE training, activation extraction, LM evaluation, plotting, and waiting
for a run that another process is training (saelib.lab.run_claims: run_all.sh runs two notebooks at a time).

The notebook layer wraps its expensive calls (saelib.lab.experiments: training, caching activations, the
spliced-in LM loss; saelib.lab.plotting.save_figure):

    with timed("sae_training", scale="default", saes=1, tokens=steps * batch_size):
        train_sae(...)

Recording is on only when the environment names the notebook (run_all.sh sets SAELIB_NOTEBOOK for each
one); each record rewrites outputs/<scale>/timing/<notebook>.json atomically. run_all.sh then prints the
table (per notebook and in total: SAEs trained, SAE tokens trained per second of wall time, share of the
wall time per category):

    python -m saelib.lab.timing --scale default --wall 01_standard_sae=123 02_gated_sae=95 ...
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saelib.files import atomic_write_json, read_json
from saelib.lab.paths import output_dir

CATEGORIES = ("sae_training", "activation_extraction", "lm_evaluation", "plotting", "waiting")
_SHORT = {"sae_training": "training", "activation_extraction": "extraction", "lm_evaluation": "LM eval",
          "plotting": "plotting", "waiting": "waiting"}
ENV = "SAELIB_NOTEBOOK"

_totals: dict[tuple[str, str], dict] = {}          # (scale, notebook) -> what this process has recorded


def timing_path(scale: str, notebook: str) -> Path:
    return output_dir(scale) / "timing" / f"{notebook}.json"


def _empty() -> dict:
    return {"seconds": {c: 0.0 for c in CATEGORIES}, "saes_trained": 0, "sae_tokens": 0}


_collectors: list[dict] = []                        # collecting(): records go here instead of the file


def record(category: str, seconds: float, *, scale: str, saes: int = 0, tokens: int = 0) -> None:
    """Add `seconds` of `category` (and SAEs / SAE tokens trained) to this notebook's record, if any
    (or to the innermost `collecting()` dict)."""
    if category not in CATEGORIES:
        raise ValueError(f"category={category!r} is not allowed; allowed: {', '.join(CATEGORIES)}")
    if _collectors:
        entry = _collectors[-1]
        entry["seconds"][category] += seconds
        entry["saes_trained"] += saes
        entry["sae_tokens"] += tokens
        return
    notebook = os.environ.get(ENV)
    if not notebook:
        return
    entry = _totals.setdefault((scale, notebook), _empty())      # a notebook's kernel starts afresh
    entry["seconds"][category] += seconds
    entry["saes_trained"] += saes
    entry["sae_tokens"] += tokens
    path = timing_path(scale, notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"notebook": notebook, "scale": scale, **entry})


@contextmanager
def collecting() -> Iterator[dict]:
    """Collect what `record` would write into a dict ({"seconds": {category: s}, "saes_trained", "sae_tokens"})
    instead: a worker process (saelib.lab.workers) returns it, and the parent records it in its own file."""
    entry = _empty()
    _collectors.append(entry)
    try:
        yield entry
    finally:
        _collectors.remove(entry)


def record_parallel(wall: float, parts: list[dict], *, scale: str) -> None:
    """Record `parts` (collected in parallel workers over `wall` seconds of the parent's wall time): the wall
    time is shared among the categories in proportion to the workers' summed seconds, so that the shares in
    the table still add up to the notebook's wall time; SAEs and tokens are summed."""
    total = {c: sum(p["seconds"].get(c, 0.0) for p in parts) for c in CATEGORIES}
    busy = sum(total.values())
    saes, tokens = sum(p["saes_trained"] for p in parts), sum(p["sae_tokens"] for p in parts)
    for i, c in enumerate(CATEGORIES):
        share = wall * total[c] / busy if busy > 0 else 0.0
        if share > 0 or (i == 0 and saes):
            record(c, share, scale=scale, saes=saes if i == 0 else 0, tokens=tokens if i == 0 else 0)


@contextmanager
def timed(category: str, *, scale: str, saes: int = 0, tokens: int = 0) -> Iterator[None]:
    """Record the wall time of the block under `category` (only when it completes)."""
    t0 = time.perf_counter()
    yield
    record(category, time.perf_counter() - t0, scale=scale, saes=saes, tokens=tokens)


def table(scale: str, wall: dict[str, float], *, elapsed: float | None = None, lanes: int = 1) -> str:
    """The end-to-end table for notebooks `wall` (name -> wall seconds), in that order, and the total. With
    `elapsed` (run_all.sh's wall time for all of them, `lanes` notebooks at a time) a last row gives it and the SAE
    tokens per second of it; the total row then sums the notebooks' own (overlapping) wall times."""
    head = (f"{'notebook':34s} {'wall s':>7s} {'SAEs':>5s} {'SAE tok/s':>10s} "
            + " ".join(f"{_SHORT[c]:>10s}" for c in CATEGORIES) + f" {'other':>6s}")
    lines, total, total_wall = [head, "-" * len(head)], _empty(), 0.0
    for name, seconds in wall.items():
        path = timing_path(scale, name)
        entry = read_json(path) if path.exists() else _empty()
        for c in CATEGORIES:
            total["seconds"][c] += entry["seconds"].get(c, 0.0)
        total["saes_trained"] += entry["saes_trained"]
        total["sae_tokens"] += entry["sae_tokens"]
        total_wall += seconds
        lines.append(_row(name, seconds, entry))
    lines.append(_row("total" if elapsed is None else "sum over notebooks", total_wall, total))
    if elapsed is not None:
        rate = total["sae_tokens"] / elapsed if elapsed > 0 else 0.0
        lines.append(f"{f'elapsed ({lanes} at a time)':34s} {elapsed:7.0f} {total['saes_trained']:5d} {rate:10.0f}")
    return "\n".join(lines)


def _row(name: str, wall: float, entry: dict) -> str:
    shares = [100 * entry["seconds"].get(c, 0.0) / wall if wall > 0 else 0.0 for c in CATEGORIES]
    rate = entry["sae_tokens"] / wall if wall > 0 else 0.0
    return (f"{name:34s} {wall:7.0f} {entry['saes_trained']:5d} {rate:10.0f} "
            + " ".join(f"{s:9.1f}%" for s in shares) + f" {max(0.0, 100 - sum(shares)):5.1f}%")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print the end-to-end timing table of a run_all.sh run.")
    p.add_argument("--scale", required=True)
    p.add_argument("--wall", nargs="*", default=[], help="NOTEBOOK=SECONDS for each notebook, in order")
    p.add_argument("--elapsed", type=float, default=None, help="the wall time of all of them (run_all.sh)")
    p.add_argument("--lanes", type=int, default=1, help="notebooks run at a time")
    args = p.parse_args(argv)
    wall = {}
    for item in args.wall:
        name, _, seconds = item.rpartition("=")
        wall[name] = float(seconds)
    print(table(args.scale, wall, elapsed=args.elapsed, lanes=args.lanes))


if __name__ == "__main__":
    main()
