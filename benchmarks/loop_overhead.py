"""What `train_sae` costs on top of the bare training step, per family, side by side in one run.

    python benchmarks/loop_overhead.py                       # both sizes, the four families
    python benchmarks/loop_overhead.py --size default --repeats 5
    python benchmarks/loop_overhead.py --profile standard --size default   # cProfile of one train_sae run

Two runs from the same initial SAE (same seed, same data, same constant lr and sparsity coefficient):

  bare   loss_fn = saelib.fast.training_loss(sae); for each step:
             out = loss_fn(x, lam); out.loss.backward(); adam.step(); adam.zero_grad()
         over contiguous slices of the data (no shuffling, no hooks, no logging, no resampling)
  loop   train_sae(sae, data, cfg): shuffled batches, decoder-norm hooks, logging, NaN/inf checks,
         dead-feature tracking and resampling where the family uses it (standard, Gated)

The loop's settings follow the notebook layer (saelib.lab.experiments.train_config): a history row
every steps // 50 (at least 6 steps apart), resampling 3 times per run. The resample pool is scaled so
that it is the same share of the run as at the default scale (16 batches per 375 steps), at least one batch.

Sizes: "default" = d_in 128, d_sae 512, batch 1024, 1 thread (the notebooks' default scale);
       "bench"   = d_in 512, d_sae 4096, batch 4096, 2 threads (benchmarks/train_step.py).

How it measures: the machine may be shared, so every repeat runs bare and loop back to back for each
family (the order alternates between repeats); the printed ratio is the median over repeats of the
per-repeat loop / bare ratio. Each run is timed end to end (perf_counter around the whole call).
--within takes the ratio from one profiled train_sae run instead: its total time over the time spent in
the bare step's own calls (loss function, backward, Adam's step and zero_grad with torch's wrappers), which
load hits alike step by step (the robust number on a busy machine).
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from a checkout without install

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE  # noqa: E402
from saelib.train import TrainConfig, train_sae  # noqa: E402

try:
    from saelib.fast import training_loss  # noqa: E402
except ImportError:                                                  # older checkouts: the model's own loss
    def training_loss(sae, device=None, **kwargs):  # type: ignore[no-redef,misc]
        return sae.loss

SIZES = {"default": dict(d_in=128, d_sae=512, batch=1024, threads=1, steps=300),
         "bench": dict(d_in=512, d_sae=4096, batch=4096, threads=2, steps=72)}
FAMILIES = ("standard", "gated", "jumprelu", "topk")
LAMBDA = {"standard": 0.01, "gated": 0.01, "jumprelu": 1e-4, "topk": 0.0}


def make_sae(family: str, d_in: int, d_sae: int, seed: int = 0):
    torch.manual_seed(seed)
    if family == "standard":
        return ReLUSAE(d_in, d_sae)
    if family == "gated":
        return GatedSAE(d_in, d_sae)
    if family == "jumprelu":
        return JumpReLUSAE(d_in, d_sae, theta_init=0.001)
    return TopKSAE(d_in, d_sae, k=32)


def make_data(d_in: int, n_rows: int, seed: int = 0) -> torch.Tensor:
    """Activations with some sparse structure: a sparse mix of 4 d_in directions plus noise."""
    g = torch.Generator().manual_seed(seed)
    n_dir = 4 * d_in
    dirs = torch.randn(n_dir, d_in, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = torch.rand(n_rows, n_dir, generator=g) * (torch.rand(n_rows, n_dir, generator=g) < 0.02)
    x = codes @ dirs + 0.05 * torch.randn(n_rows, d_in, generator=g)
    return x / x.pow(2).sum(1).mean().sqrt()


def loop_config(family: str, size: dict) -> TrainConfig:
    steps, batch = size["steps"], size["batch"]
    pool_batches = max(1, round(16 * steps / 1500))
    return TrainConfig(total_steps=steps, batch_size=batch, lr=1e-3, sparsity_coeff=LAMBDA[family],
                       log_every=max(6, steps // 50), progress=False, resample_every=max(1, steps // 4),
                       resample_pool=pool_batches * batch, device="cpu", seed=0)


def run_bare(sae, data: torch.Tensor, cfg: TrainConfig) -> float:
    loss_fn = training_loss(sae, torch.device("cpu"))
    adam = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
    lam, B, n = cfg.sparsity_coeff or 0.0, cfg.batch_size, data.shape[0] // cfg.batch_size
    t0 = time.perf_counter()
    for t in range(cfg.n_steps):
        x = data[(t % n) * B:(t % n + 1) * B]
        out = loss_fn(x, lam)
        out.loss.backward()
        adam.step()
        adam.zero_grad()
    return time.perf_counter() - t0


def run_loop(sae, data: torch.Tensor, cfg: TrainConfig) -> float:
    t0 = time.perf_counter()
    train_sae(sae, data, cfg)
    return time.perf_counter() - t0


def measure(size_name: str, families, repeats: int, steps: int | None) -> list[dict]:
    size = dict(SIZES[size_name])
    if steps:
        size["steps"] = steps
    torch.set_num_threads(size["threads"])
    data = make_data(size["d_in"], size["batch"] * 8)
    rows = []
    for family in families:
        init = make_sae(family, size["d_in"], size["d_sae"])
        cfg = loop_config(family, size)
        run_bare(copy.deepcopy(init), data, TrainConfig(**{**cfg.to_dict(), "total_steps": 2,
                                                            "adam_betas": cfg.adam_betas}))   # warm-up
        times: dict[str, list[float]] = {"bare": [], "loop": []}
        for r in range(repeats):
            order = ("bare", "loop") if r % 2 == 0 else ("loop", "bare")
            for which in order:
                fn = run_bare if which == "bare" else run_loop
                times[which].append(fn(copy.deepcopy(init), data, cfg))
        ratios = [lo / ba for lo, ba in zip(times["loop"], times["bare"], strict=True)]
        rows.append({"size": size_name, "family": family, "steps": size["steps"],
                     "bare_ms": 1e3 * statistics.median(times["bare"]) / size["steps"],
                     "loop_ms": 1e3 * statistics.median(times["loop"]) / size["steps"],
                     "ratio": statistics.median(ratios), "ratios": ratios})
        r_ = rows[-1]
        print(f"{size_name:8s} {family:9s} steps={size['steps']:4d} threads={size['threads']}  "
              f"bare {r_['bare_ms']:8.2f} ms/step  loop {r_['loop_ms']:8.2f} ms/step  "
              f"loop/bare {r_['ratio']:.3f}  (per repeat: {' '.join(f'{x:.3f}' for x in ratios)})", flush=True)
    return rows


def profile(family: str, size_name: str, steps: int | None) -> None:
    import cProfile
    import pstats

    size = dict(SIZES[size_name])
    if steps:
        size["steps"] = steps
    torch.set_num_threads(size["threads"])
    data = make_data(size["d_in"], size["batch"] * 8)
    sae, cfg = make_sae(family, size["d_in"], size["d_sae"]), loop_config(family, size)
    prof = cProfile.Profile()
    prof.enable()
    train_sae(sae, data, cfg)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def schedules(adam, lr_multiplier, sparsity_coeff_at) -> None:
    lr = 1e-3 * lr_multiplier(5, 300, 50, 0)
    sparsity_coeff_at(5, 0.1, 0)
    for group in adam.param_groups:
        group["lr"] = lr


def breakdown(family: str, size_name: str, reps: int = 30) -> None:
    """Per-step cost of each thing the loop adds to the bare step, timed in isolation (medians)."""
    from saelib.training.batches import TensorBatches
    from saelib.training.resampling import DeadFeatureTracker
    from saelib.training.schedules import lr_multiplier, sparsity_coeff_at
    from saelib.training.stats import check_finite, history_row

    size = SIZES[size_name]
    torch.set_num_threads(size["threads"])
    data = make_data(size["d_in"], size["batch"] * 8)
    sae, cfg = make_sae(family, size["d_in"], size["d_sae"]), loop_config(family, size)
    loss_fn = training_loss(sae, torch.device("cpu"))
    adam = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    params = dict(sae.named_parameters())
    source, tracker = TensorBatches(data, size["batch"]), DeadFeatureTracker(sae.d_sae, torch.device("cpu"))
    x = data[:size["batch"]]

    def step():
        out = loss_fn(x, LAMBDA[family])
        out.loss.backward()
        adam.step()
        adam.zero_grad()
        return out

    step()
    out = loss_fn(x, LAMBDA[family])
    out.loss.backward()                                       # gradients present for the decoder hooks
    parts = {"batch sampling (index_select)": source.next_batch,
             "schedules (lr, lambda, param groups)": lambda: schedules(adam, lr_multiplier, sparsity_coeff_at),
             "NaN/inf check of the loss terms": lambda: check_finite(1, 0, "", out=out),
             "NaN/inf check of the parameters": lambda: check_finite(1, 0, "", params=params),
             "decoder hooks (before + after)": lambda: (sae.before_optimizer_step(), sae.after_optimizer_step()),
             "dead-feature tracker update": lambda: tracker.update(out.feature_max()),
             "history row (a log step)": lambda: history_row(out, 1, 1, 0.0, 0.0, None, 0),
             "bare step": step}
    times = {}
    for name, fn in parts.items():
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        times[name] = statistics.median(samples)
    bare = times.pop("bare step")
    print(f"{size_name} {family}: bare step {1e3 * bare:.2f} ms")
    for name, t in times.items():
        print(f"  {name:40s} {1e3 * t:8.3f} ms  {100 * t / bare:6.2f}% of the bare step")


def crossover(widths=(512, 1024, 2048), l0s=(8, 16, 32, 64, 128), reps: int = 9) -> None:
    """Does the CPU sparse step pay? A standard SAE (d_in 128, batch 1024, 1 thread) with its encoder biases
    set so that about L0 latents fire per token: the step saelib.fast picks (sparse below SPARSE_MAX_DENSITY)
    against the dense step (max_density=0), forward + backward at a fixed state, interleaved, medians."""
    from saelib.fast import SPARSE_MAX_DENSITY

    torch.set_num_threads(1)
    x = make_data(128, 1024)
    print(f"SPARSE_MAX_DENSITY = {SPARSE_MAX_DENSITY}; dense / sparse time per step (> 1: the sparse step pays)")
    for d_sae in widths:
        for l0 in l0s:
            sae = make_sae("standard", 128, d_sae)
            with torch.no_grad():                            # about l0 of d_sae latents fire per token
                pi = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
                sae.b_enc -= torch.quantile(pi, 1 - l0 / d_sae, dim=0)
            fns = {"dense": training_loss(sae, torch.device("cpu"), max_density=0.0),
                   "picked": training_loss(sae, torch.device("cpu"), max_density=1.0)}
            times: dict[str, list[float]] = {"dense": [], "picked": []}
            for r in range(reps + 1):
                for name in (("dense", "picked") if r % 2 else ("picked", "dense")):
                    t0 = time.perf_counter()
                    fns[name](x, 0.01).loss.backward()
                    times[name].append(time.perf_counter() - t0)
                    sae.zero_grad()
            dense, sparse = statistics.median(times["dense"][1:]), statistics.median(times["picked"][1:])
            print(f"  d_sae {d_sae:5d}  L0 {l0:4d} (density {l0 / d_sae:.3f})  dense {1e3 * dense:7.2f} ms  "
                  f"sparse {1e3 * sparse:7.2f} ms  dense/sparse {dense / sparse:5.2f}", flush=True)


def within(family: str, size_name: str, steps: int | None) -> float:
    """loop / bare from ONE train_sae run under cProfile: total time over the time spent in the bare step's
    own calls (the loss function, backward, Adam's step, zero_grad). Load from other processes hits both
    parts alike, step by step, so this needs no pairing; cProfile's own cost falls on Python calls (both
    parts), so the ratio is if anything overstated."""
    import cProfile
    import pstats

    size = dict(SIZES[size_name])
    if steps:
        size["steps"] = steps
    torch.set_num_threads(size["threads"])
    data = make_data(size["d_in"], size["batch"] * 8)
    sae, cfg = make_sae(family, size["d_in"], size["d_sae"]), loop_config(family, size)
    run_bare(copy.deepcopy(sae), data, TrainConfig(**{**cfg.to_dict(), "total_steps": 2,
                                                       "adam_betas": cfg.adam_betas}))      # warm-up
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    train_sae(sae, data, cfg)
    total = time.perf_counter() - t0
    prof.disable()
    step, parts = 0.0, {}  # type: float, dict[str, float]
    for (filename, _, name), (_, _, _, cumulative, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if ((filename.endswith("training/loop.py") and name == "forward")            # the loss function
                or (filename.endswith("torch/_tensor.py") and name == "backward")       # out.loss.backward()
                or (filename.endswith("optim/optimizer.py") and name == "wrapper")     # adam.step()
                or (filename.endswith("torch/_compile.py") and name == "inner")):      # adam.zero_grad()
            step += cumulative
            parts[name] = parts.get(name, 0.0) + cumulative
    if len(parts) != 4:
        raise RuntimeError(f"found only {sorted(parts)} of the bare step's calls in the profile")
    ratio = total / step
    print(f"{size_name:8s} {family:9s} steps={size['steps']:4d} threads={size['threads']}  "
          f"total {1e3 * total / size['steps']:8.2f} ms/step  of which bare-step calls "
          f"{1e3 * step / size['steps']:8.2f} ms/step  loop/bare {ratio:.3f}", flush=True)
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("default", "bench", "both"), default="both")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="override the steps per run of every size")
    p.add_argument("--profile", choices=FAMILIES, default=None, help="cProfile one train_sae run instead")
    p.add_argument("--breakdown", action="store_true", help="time each part the loop adds, in isolation")
    p.add_argument("--crossover", action="store_true", help="sparse vs dense step at d_sae 512/1024/2048")
    p.add_argument("--within", action="store_true", help="loop/bare from one profiled run per family")
    args = p.parse_args()
    sizes = ("default", "bench") if args.size == "both" else (args.size,)
    if args.within:
        worst = max(within(f, s, args.steps) for s in sizes for f in args.families)
        print(f"worst loop/bare ratio: {worst:.3f} ({'<=' if worst <= 1.10 else '>'} 1.10)")
        return
    if args.crossover:
        crossover()
        return
    if args.breakdown:
        for s in sizes:
            for family in args.families:
                breakdown(family, s)
        return
    if args.profile:
        for s in sizes:
            profile(args.profile, s, args.steps)
        return
    print(f"torch {torch.__version__}; median over {args.repeats} interleaved repeats of loop/bare per run")
    rows = []
    for s in sizes:
        rows += measure(s, args.families, args.repeats, args.steps)
    worst = max(r["ratio"] for r in rows)
    print(f"worst loop/bare ratio: {worst:.3f} ({'<=' if worst <= 1.10 else '>'} 1.10)")
    if not math.isfinite(worst):
        sys.exit(1)


if __name__ == "__main__":
    main()
