"""Where one saelib training step spends its time: torch.profiler's top operators.

    python benchmarks/profile_step.py --arch jumprelu --l0 64      # a sparse step at a trained sparsity
    python benchmarks/profile_step.py --arch standard              # random init: the dense step

The same step and sizes as benchmarks/train_step.py (forward, the loss function train_sae chooses,
saelib.fast.training_loss, backward, hooks, Adam, zero_grad); --l0 sets the thresholds/biases the same
way (train_step.set_l0); --max-density sets the sparse step's threshold (0 = always dense).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_step  # noqa: E402  (benchmarks/train_step.py)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="jumprelu", choices=train_step.ARCHS)
    p.add_argument("--l0", type=float, default=None)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--max-density", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.d_in, generator=torch.Generator().manual_seed(0)) / a.d_in ** 0.5
    step, sae = train_step.make_ours(a.arch, a, torch.device("cpu"), x)
    handles = train_step.firing_handles("ours", a.arch, sae)
    if a.l0 is not None and handles is not None:
        train_step.set_l0(handles, x, a.l0)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    l0 = "" if handles is None else f", L0 {train_step.measured_l0(handles, x):.0f}"
    print(f"{a.arch}, d_in {a.d_in}, d_sae {a.d_sae}, batch {a.batch}, {a.threads} threads{l0}, "
          f"loss function {getattr(step, 'loss_fn', None)!r}; "
          f"{a.steps} steps (times are totals over them)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))


if __name__ == "__main__":
    main()
