"""Train a sweep's missing runs in parallel worker processes, one thread each (CPU only).

Small SAEs (the default scale: d_in 128, d_sae 512, batch 1024) use a CPU core poorly with two threads: on the
2-core machines this project runs on, one process with 2 threads trains an SAE 1.25x faster than with 1 thread,
while two 1-thread processes train two SAEs at 1.75x the rate of one (benchmarks/threads.py measures it). So
`saelib.lab.experiments.sweep` hands the runs it does not find in the cache to `train_missing`, which trains them
in `n_workers()` spawned processes and writes each into the run cache exactly as `run()` would; the sweep then
loads them. A run's result does not depend on where it was trained: the seed fixes everything, and training is
bitwise identical with 1 or 2 threads (tests/test_workers.py checks weights and metrics against a sequential
sweep).

    SAELIB_WORKERS=1 ./run_all.sh --lanes 1   # no worker processes (everything in the notebook's own process)

`run_all.sh` itself runs two notebooks at a time by default (`--lanes 2`), each training in its own process with one
thread (SAELIB_WORKERS=1): over the whole reproduction that keeps both cores busy through the parts of a notebook
that are not sweeps (evaluation, probes, plotting) and through a sweep's last, odd run; the workers serve a notebook
run on its own (interactively, or `run_all.sh --lanes 1`). Either way a run is trained once (saelib.lab.run_claims).

Each worker rebuilds the site from `site.recipe()` (LMSite: model name, hook, scale...; the activations load from
the on-disk cache the notebook's own site made) and refuses to train when the rebuilt site's key differs (e.g. an
LMSite made with a model that is not the registry's); the sweep then trains in its own process instead.
"""
from __future__ import annotations

import atexit
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from saelib.validation import check_positive

if TYPE_CHECKING:  # pragma: no cover
    from saelib.lab.experiments import SAESpec, Site
    from saelib.lab.protocol import Protocol

ENV = "SAELIB_WORKERS"


class SiteMismatch(RuntimeError):
    """A worker rebuilt a site whose key differs from the notebook's (its activations would differ)."""


def n_workers() -> int:
    """Worker processes for a sweep's missing runs: $SAELIB_WORKERS if set (1: none), else 1 when CUDA is
    available (the GPU trains one SAE at a time) and otherwise the CPU count, at most 4."""
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{ENV}={value!r} is not allowed; allowed: an integer >= 1") from None
        check_positive(ENV, n, integer=True)
        return n
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(os.cpu_count() or 1, 4))


_pool: list[Any] = [None, 0]            # [ProcessPoolExecutor or None, its size]


def _get_pool(n: int) -> ProcessPoolExecutor:
    pool, size = _pool
    if pool is None or size != n:
        if pool is not None:
            pool.shutdown(wait=True)
        import multiprocessing

        # spawn, not fork: a forked child of a process whose OpenMP threads already ran can deadlock
        pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)
        _pool[:] = [pool, n]
    return pool


def shutdown() -> None:
    """Stop the worker processes (also done at exit)."""
    pool = _pool[0]
    if pool is not None:
        pool.shutdown(wait=True)
    _pool[:] = [None, 0]


atexit.register(shutdown)


# ----------------------------------------------------------------------------- in the worker process

_sites: dict[str, Any] = {}             # a worker's sites, by recipe (built once per worker)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["SAELIB_PROGRESS"] = "0"


def _site_from(recipe: dict) -> Site:
    import json

    from saelib.lab import timing

    key = json.dumps(recipe, sort_keys=True, default=str)
    if key not in _sites:
        from saelib.lab.sites import LMSite, SyntheticSite

        kind, kwargs = recipe["kind"], dict(recipe["kwargs"])
        with timing.collecting():                        # the notebook's own site already did this work
            site = LMSite(**kwargs, progress=False) if kind == "lm" else SyntheticSite(**kwargs)
        if site.key != recipe["key"]:
            raise SiteMismatch(f"the worker's {kind} site has key {site.key}, the notebook's {recipe['key']}")
        _sites[key] = site
    return _sites[key]


def _train_job(recipe: dict, spec: SAESpec, seed: int, protocol: Protocol | None, force: bool) -> dict:
    """Train one run into the run cache (as saelib.lab.experiments.run would); return what it timed."""
    from saelib.lab import timing
    from saelib.lab.experiments import _run_once

    site = _site_from(recipe)
    with timing.collecting() as entry:
        _run_once(site, spec, seed, force=force, protocol=protocol)
    return entry


def _warm(recipe: dict) -> None:
    _site_from(recipe)
    time.sleep(1.0)              # hold this worker, so that every worker gets one of the warm-up calls


# ----------------------------------------------------------------------------- in the notebook's process

def warm_up(site: Site, workers: int) -> float:
    """Start `workers` processes and build the site in each (what the first sweep of a notebook pays once);
    returns the seconds it took. benchmarks/threads.py uses it to time training apart from the start-up."""
    t0 = time.perf_counter()
    recipe = site.recipe()
    if recipe is not None:
        list(_get_pool(workers).map(_warm, [recipe] * workers))
    return time.perf_counter() - t0


def train_missing(site: Site, jobs: list[tuple[SAESpec, int, bool]], protocol: Protocol | None, *,
                  workers: int, progress_bar=None) -> bool:
    """Train `jobs` ((spec, seed, force) each, none of them cached) in `workers` processes, writing each into
    the run cache; returns False (training nothing) when the site cannot be rebuilt in a worker, so that the
    caller trains them itself. Worker wall time goes into the notebook's timing record
    (saelib.lab.timing.record_parallel)."""
    from saelib.lab import timing

    recipe = site.recipe()
    if recipe is None:
        return False
    pool = _get_pool(workers)
    t0 = time.perf_counter()
    futures: list[Future] = [pool.submit(_train_job, recipe, spec, seed, protocol, force)
                             for spec, seed, force in jobs]
    parts = []
    try:
        for f in futures:
            parts.append(f.result())
            if progress_bar is not None:
                progress_bar.update(1)
    except SiteMismatch:
        for f in futures:
            f.cancel()
        return False
    timing.record_parallel(time.perf_counter() - t0, parts, scale=site.scale.name)
    return True
