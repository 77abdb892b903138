"""How to use the cores: one process with N threads, or N one-thread worker processes (saelib.lab.workers)?

    python benchmarks/threads.py                      # 4 default-scale SAEs (standard, 2 lambdas x 2 seeds)
    python benchmarks/threads.py --saes 8 --steps 1500

Trains the same SAEs (the embedded model's default site, the notebooks' protocol at its untuned learning rates)
three ways, each into an empty run cache (the activation cache is shared, so nothing but the SAEs is timed):

  1 thread     sweep(..., workers=1) with torch.set_num_threads(1)
  N threads    sweep(..., workers=1) with torch.set_num_threads(N)   (N = the CPU count)
  N workers    sweep(..., workers=N): N spawned processes, 1 thread each (what run_all.sh does by default),
               started (and the site built in each) before the clock starts, as a notebook's pool is after its
               first sweep; the start-up is printed apart

and prints the wall time of each, SAE tokens per second and the ratios; the trained weights are checked equal
across the three (a run's result does not depend on where it was trained).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from a checkout without install

from saelib.lab.experiments import LMSite, frontier_specs, sweep  # noqa: E402
from saelib.lab.paths import output_dir  # noqa: E402
from saelib.lab.protocol import Protocol  # noqa: E402
from saelib.lab.scales import get_scale  # noqa: E402
from saelib.lab.workers import shutdown, warm_up  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--saes", type=int, default=4, help="SAEs trained each way (standard frontier points x seeds)")
    p.add_argument("--steps", type=int, default=750, help="training steps per SAE (default scale: 1500)")
    args = p.parse_args(argv)
    n_cpu = os.cpu_count() or 1
    scale = get_scale("default", train_steps=args.steps)
    cache = output_dir("default") / "cache"
    LMSite("embedded", "blocks.2.hook_resid_post", scale, progress=False)       # the activation cache, once
    seeds = (0, 1)
    specs = frontier_specs("standard", max(1, args.saes // len(seeds)))
    ways = {"1 thread": (1, 1), f"{n_cpu} threads": (n_cpu, 1), f"{n_cpu} workers": (1, n_cpu)}
    times, weights, startup = {}, {}, 0.0
    for name, (threads, workers) in ways.items():
        tmp = Path(tempfile.mkdtemp(prefix="saelib-threads-"))
        (tmp / "default").mkdir()
        (tmp / "default" / "cache").symlink_to(cache.resolve())
        old = os.environ.get("SAELIB_OUTPUT_DIR")
        os.environ["SAELIB_OUTPUT_DIR"] = str(tmp)
        try:
            torch.set_num_threads(threads)
            site = LMSite("embedded", "blocks.2.hook_resid_post", scale, progress=False)
            if workers > 1:                 # a notebook's pool starts once and serves all of its sweeps
                startup = warm_up(site, workers)
            t0 = time.perf_counter()
            runs = sweep(site, specs, seeds=seeds, protocol=Protocol(), workers=workers, progress=False)
            times[name] = time.perf_counter() - t0
            weights[name] = [r.sae.W_dec.detach().clone() for r in runs]
        finally:
            shutdown()
            if old is None:
                os.environ.pop("SAELIB_OUTPUT_DIR")
            else:
                os.environ["SAELIB_OUTPUT_DIR"] = old
            shutil.rmtree(tmp, ignore_errors=True)
    n = len(specs) * len(seeds)
    tokens = n * args.steps * scale.batch_size
    print(f"torch {torch.__version__}; {n_cpu} CPUs; {n} SAEs (d_in 128, d_sae 512, batch {scale.batch_size}, "
          f"{args.steps} steps each), training + evaluation, wall time of one sweep each way:")
    base = times["1 thread"]
    for name, t in times.items():
        print(f"  {name:12s} {t:7.1f} s  {tokens / t:9.0f} SAE tokens/s  speed-up over 1 thread {base / t:.2f}x")
    print(f"  (the workers' start-up, paid once per notebook and not included above: {startup:.1f} s)")
    first = next(iter(weights.values()))
    same = all(torch.equal(a, b) for w in weights.values() for a, b in zip(first, w, strict=True))
    print(f"trained decoders identical across the three: {same}")


if __name__ == "__main__":
    main()
