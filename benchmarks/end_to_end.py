"""End to end: the same notebooks, from the same run cache, run by run_all.sh in different ways, one after another.

    python benchmarks/end_to_end.py                                  # notebooks 05 and 06, the three modes
    python benchmarks/end_to_end.py --only 05 06 07 --modes one-process lanes
    python benchmarks/end_to_end.py --all --empty-run-cache --modes one-process lanes   # the whole reproduction

Each mode runs `run_all.sh --only ... --no-html --no-site` at default scale in a fresh clone of this checkout (so
the checkout's notebooks, figures and run cache are untouched, and the clone's own saelib is imported, through
PYTHONPATH, so editing the checkout meanwhile changes nothing) whose run cache starts with the runs every notebook
shares (the learning-rate sweep and the four frontiers, hard-linked from outputs/default/runs: run the default
reproduction once first) and whose activation cache is linked to this checkout's: what is timed is training the
notebooks' own SAEs, evaluating them and executing the notebooks.

Modes:
  one-process   --lanes 1, SAELIB_WORKERS=1, 2 threads: how run_all.sh ran before the loop-speed issue
  workers       --lanes 1: each sweep's missing runs in 2 one-thread worker processes (saelib.lab.workers)
  lanes         --lanes 2: two notebooks at a time, one thread each (the default on a 2-core CPU)

One run per mode (each takes minutes); the machine should be otherwise idle. Fewer notebooks than the whole
reproduction favour the single-notebook modes: two lanes balance best over many notebooks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"one-process": (["--lanes", "1"], {"SAELIB_WORKERS": "1", "OMP_NUM_THREADS": "2"}),
         "workers": (["--lanes", "1"], {}),
         "lanes": (["--lanes", "2"], {})}
DEFAULT_HOOK = "blocks.2.hook_resid_post"
ONE_X = 1500 * 1024                     # the default scale's token budget (08's 3x runs are not shared)


def shared_runs(runs: Path) -> list[Path]:
    """The runs notebooks share: a family's own spec (no options but TopK's k, no training overrides but the LR
    sweep's learning rate) at the default site and budget, i.e. the four frontiers and the learning-rate sweep."""
    out = []
    for d in sorted(runs.iterdir()):
        meta = d / "metrics.json"
        if not meta.exists():
            continue
        m = json.loads(meta.read_text())
        spec, site = m["spec"], m["site"]
        options_ok = spec["options"] == {} or (spec["architecture"] == "topk" and set(spec["options"]) == {"k"})
        tokens = m["train"]["total_steps"] * m["train"]["batch_size"]
        if (options_ok and set(spec["train"]) <= {"lr"} and tokens == ONE_X
                and isinstance(site, dict) and site.get("hook") == DEFAULT_HOOK and site.get("model") == "embedded"):
            out.append(d)
    return out


def run_mode(mode: str, only: list[str], work: Path, seed_runs: bool = True) -> dict:
    args, env_extra = MODES[mode]
    clone = work / mode
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    out_root = work / f"{mode}-outputs"
    runs = out_root / "default" / "runs"
    runs.mkdir(parents=True)
    (out_root / "default" / "cache").symlink_to(ROOT / "outputs" / "default" / "cache")
    seeded = shared_runs(ROOT / "outputs" / "default" / "runs") if seed_runs else []
    for d in seeded:
        shutil.copytree(d, runs / d.name, copy_function=os.link)
    env = os.environ | {"SAELIB_OUTPUT_DIR": str(out_root), "SAELIB_FIGURES_DIR": str(clone / "figures"),
                        "PYTHONPATH": str(clone)} | env_extra
    cmd = ["./run_all.sh", "--no-html", "--no-site", *args] + [a for n in only for a in ("--only", n)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{mode}: run_all.sh failed ({proc.returncode})")
    trained = sum(1 for d in runs.iterdir() if (d / "metrics.json").exists()) - len(seeded)
    table = proc.stdout[proc.stdout.rfind("notebook "):] if "notebook " in proc.stdout else ""
    return {"mode": mode, "wall": wall, "trained": trained, "seeded": len(seeded), "table": table}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=["05", "06"], help="notebook numbers (default: 05 06)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--all", action="store_true", help="every notebook (overrides --only)")
    p.add_argument("--empty-run-cache", action="store_true",
                   help="seed no runs: every mode trains every SAE, as ./run_all.sh from an empty run cache")
    p.add_argument("--keep", action="store_true", help="keep the clones and their outputs (printed)")
    args = p.parse_args(argv)
    only = [] if args.all else args.only
    if not args.empty_run_cache and not (ROOT / "outputs" / "default" / "runs").is_dir():
        raise SystemExit("outputs/default/runs is missing: run ./run_all.sh once first (its runs seed each mode)")
    work = Path(tempfile.mkdtemp(prefix="saelib-e2e-"))
    rows = []
    try:
        for mode in args.modes:
            rows.append(run_mode(mode, only, work, seed_runs=not args.empty_run_cache))
            r = rows[-1]
            print(f"{mode:12s} {r['wall']:7.0f} s  {r['trained']:3d} SAEs trained "
                  f"({r['seeded']} shared runs seeded)", flush=True)
            print(r["table"], flush=True)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["wall"]
    print(f"\nnotebooks {' '.join(only) or 'all'}, default scale; speed-up against {rows[0]['mode']}:")
    for r in rows:
        print(f"  {r['mode']:12s} {r['wall']:7.0f} s   x{base / r['wall']:.2f}")


if __name__ == "__main__":
    main()
