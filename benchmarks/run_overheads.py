"""Two costs every run of the notebooks pays besides its training steps, each against the way it was done before.

    python benchmarks/run_overheads.py                   # the default site (run notebook 00 or run_all.sh first)
    python benchmarks/run_overheads.py --repeats 9

  batch      ActivationCache.next_batch at the default site (1024 of 1.57M cached activations, float32): the rows
             gathered by torch's index_select from the memmap viewed as a tensor (now) against numpy's fancy
             indexing of the memmap (before). Same rows, bitwise the same batch (checked here).
  lm eval    evaluate_lm of one SAE at blocks.2.hook_resid_post over the site's held-out rows, with the shared
             lm_reference: the spliced run restarting after the hook from the stored clean hook activation (now)
             against re-entering block 2 from its input and splicing inside it (before). Bitwise the same result
             (checked here; tests/test_lm_metrics.py checks it against whole forward passes).

  sparse step  one training step (forward + backward) of a default-size JumpReLU and standard SAE at their operating
             points, trained 500 steps first so that their codes are sparse: the support found through numpy
             (comparison, count, flat nonzero) and the decode's value gradient from torch's embedding-bag backward
             kernel called directly (now), against torch's two-coordinate nonzero and autograd through the
             embedding bag run again (before). Bitwise the same gradients (checked here; tests/test_sparse.py).

One thread (as each notebook lane runs). The two ways alternate every repeat; medians and the median of the
per-repeat ratios are printed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from a checkout without install


def numpy_batch(cache, idx: torch.Tensor) -> torch.Tensor:
    """The previous ActivationCache.next_batch gather (float32 storage): numpy fancy indexing of the memmap."""
    rows = np.require(cache.array[idx.numpy()], requirements=["C", "W"])
    return torch.from_numpy(rows).to(torch.float32) * cache.scale


def torch_batch(cache, idx: torch.Tensor) -> torch.Tensor:
    return cache.rows.index_select(0, idx).to(torch.float32) * cache.scale


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batches", type=int, default=300, help="batches gathered per repeat")
    p.add_argument("--steps", type=int, default=50, help="sparse training steps timed per repeat")
    a = p.parse_args(argv)
    os.environ.setdefault("SAELIB_PROGRESS", "0")
    torch.set_num_threads(1)
    from saelib.eval import lm_metrics
    from saelib.fast import sparse, training_loss
    from saelib.lab.experiments import LMSite, effective_options, frontier_specs, train_config
    from saelib.lab.notebook import check_parameters
    from saelib.lab.protocol import Protocol
    from saelib.models.architectures import create_sae
    from saelib.training.loop import train_sae

    settings = check_parameters(scale="default", seed=0, device="cpu", model="embedded",
                                hook="blocks.2.hook_resid_post")
    site = LMSite(settings.model, settings.hook, settings.scale, seed=0, device="cpu")
    cache = site.train_batches(settings.scale.batch_size, seed=0)
    if cache.dtype != "float32":
        raise SystemExit(f"this benchmark reads a float32 cache; the site's is {cache.dtype}")
    perm = torch.randperm(len(cache), generator=torch.Generator().manual_seed(0))
    batches = [perm[i * cache.batch_size:(i + 1) * cache.batch_size].sort().values for i in range(a.batches)]
    assert all(torch.equal(numpy_batch(cache, i), torch_batch(cache, i)) for i in batches[:5])

    torch.manual_seed(0)
    sae = create_sae("jumprelu", site.d_in, settings.scale.expansion * site.d_in)
    model, hook, tokens = site.model, site.hook, site.lm_tokens

    def lm_eval(restart) -> dict:
        with mock.patch.object(lm_metrics, "_restart", restart):
            ref = lm_metrics.lm_reference(model, hook, tokens)
            t0 = time.perf_counter()
            result = lm_metrics.evaluate_lm(model, sae, hook, tokens, scale=site.scale_factor, reference=ref)
            return {"seconds": time.perf_counter() - t0, "result": result}

    def before(model, hook_name):                     # re-enter the hook's block from its input
        layer = int(hook_name.split(".")[1])
        return lm_metrics._Restart(layer, f"blocks.{layer}.hook_resid_pre", splice_stored=False)

    def autograd_weights_grad(grad, weight, rows, cols, offsets):       # the previous SparseDecode backward
        with torch.enable_grad():
            v = torch.ones(len(cols), dtype=weight.dtype).requires_grad_()   # values do not enter the gradient
            x_hat = torch.nn.functional.embedding_bag(cols, weight, offsets, per_sample_weights=v, mode="sum")
            return torch.autograd.grad(x_hat, v, grad)[0]

    def sparse_before():
        return mock.patch.multiple(sparse, _NUMPY_DTYPES=(), per_sample_weights_grad=autograd_weights_grad)

    steppers = {}
    for arch in ("jumprelu", "standard"):
        spec = frontier_specs(arch, settings.scale.sweep_points)[settings.scale.sweep_points // 2]
        protocol = Protocol()
        cfg = replace(train_config(spec, settings.scale, 0, protocol), total_steps=500)
        torch.manual_seed(0)
        trained = create_sae(arch, site.d_in, settings.scale.expansion * site.d_in, **effective_options(spec, protocol))
        train_sae(trained, site.train_batches(cfg.batch_size, seed=0), cfg)
        steppers[arch] = (trained, training_loss(trained, "cpu"), spec.sparsity_coeff)
    step_batches = [cache.rows.index_select(0, i).to(torch.float32) * cache.scale for i in batches[:a.steps]]

    def train_steps(arch: str) -> tuple[float, torch.Tensor]:
        trained, loss_fn, lam = steppers[arch]
        t0 = time.perf_counter()
        for x in step_batches:
            trained.zero_grad(set_to_none=True)
            loss_fn(x, lam).loss.backward()
        seconds = (time.perf_counter() - t0) / len(step_batches)
        return seconds, torch.cat([p.grad.flatten() for p in trained.parameters() if p.grad is not None])

    times: dict[str, list[float]] = {k: [] for k in ("batch numpy", "batch torch", "lm before", "lm now")}
    times |= {f"{arch} {when}": [] for arch in steppers for when in ("before", "now")}
    for r in range(a.repeats):
        order = [("batch numpy", numpy_batch), ("batch torch", torch_batch)]
        for name, gather in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for idx in batches:
                gather(cache, idx)
            times[name].append((time.perf_counter() - t0) / len(batches))
        runs = [("lm before", before), ("lm now", lm_metrics._restart)]
        results = {}
        for name, restart in runs if r % 2 == 0 else runs[::-1]:
            out = lm_eval(restart)
            times[name].append(out["seconds"])
            results[name] = out["result"]
        assert results["lm before"] == results["lm now"], "the restart changed the result"
        for arch in steppers:
            grads = {}
            for when in ("before", "now") if r % 2 == 0 else ("now", "before"):
                with sparse_before() if when == "before" else contextlib.nullcontext():
                    seconds, grads[when] = train_steps(arch)
                times[f"{arch} {when}"].append(seconds)
            assert torch.equal(grads["before"], grads["now"]), f"{arch}: the sparse step's gradient changed"

    def ratio(new: str, old: str) -> float:
        return statistics.median(n / o for n, o in zip(times[new], times[old], strict=True))

    print(f"{a.repeats} repeats, 1 thread, default site ({len(cache):,} cached activations, batch {cache.batch_size}; "
          f"LM eval over {tokens.shape[0]} x {tokens.shape[1]} tokens)")
    print(f"  batch gather  numpy (before) {statistics.median(times['batch numpy']) * 1e3:.3f} ms   "
          f"torch (now) {statistics.median(times['batch torch']) * 1e3:.3f} ms   "
          f"now/before {ratio('batch torch', 'batch numpy'):.2f}")
    print(f"  LM eval       block 2 (before) {statistics.median(times['lm before']):.3f} s   "
          f"after block 2 (now) {statistics.median(times['lm now']):.3f} s   "
          f"now/before {ratio('lm now', 'lm before'):.2f}")
    for arch in steppers:
        print(f"  {arch + ' step':13s} before {statistics.median(times[arch + ' before']) * 1e3:.3f} ms   "
              f"now {statistics.median(times[arch + ' now']) * 1e3:.3f} ms   "
              f"now/before {ratio(arch + ' now', arch + ' before'):.2f}")
    print("  (all bitwise the same as before: checked above)")


if __name__ == "__main__":
    main()
