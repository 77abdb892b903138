"""Runs trained in worker processes (saelib.lab.workers) equal runs trained in the notebook's own process."""
from __future__ import annotations

import pytest
import torch

from saelib.lab import timing
from saelib.lab.experiments import SAESpec, SyntheticSite, sweep
from saelib.lab.protocol import Protocol
from saelib.lab.scales import get_scale
from saelib.lab.workers import n_workers


def _site():
    return SyntheticSite(get_scale("smoke", train_steps=40), seed=0, n_features=64, d_in=16)


SPECS = [SAESpec("standard", 0.05), SAESpec("gated", 0.05), SAESpec("topk", 0.0, {"k": 4})]


def test_workers_give_the_same_runs_as_one_process(tmp_path, monkeypatch):
    results = {}
    for workers in (1, 2):
        monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / f"w{workers}"))
        site = _site()
        runs = sweep(site, SPECS, seeds=(0, 1), protocol=Protocol(), workers=workers, progress=False)
        assert [r.loaded for r in runs] == [False] * 6
        results[workers] = runs
        # a second sweep loads everything (the workers wrote the cache entries run() reads)
        again = sweep(site, SPECS, seeds=(0, 1), protocol=Protocol(), workers=workers, progress=False)
        assert [r.loaded for r in again] == [True] * 6
    for a, b in zip(results[1], results[2], strict=True):
        assert (a.spec, a.seed) == (b.spec, b.seed)
        assert a.path.name == b.path.name                          # the same cache key
        for (name, p), (_, q) in zip(a.sae.state_dict().items(), b.sae.state_dict().items(), strict=True):
            assert torch.equal(p, q), name
        assert a.metrics == b.metrics


def test_worker_time_is_recorded_in_the_notebooks_timing(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv(timing.ENV, "99_test")
    timing._totals.clear()
    sweep(_site(), SPECS[:2], seeds=(0,), protocol=Protocol(), workers=2, progress=False)
    entry = timing._totals[("smoke", "99_test")]
    assert entry["saes_trained"] == 2
    assert entry["sae_tokens"] == 2 * 40 * get_scale("smoke").batch_size
    assert entry["seconds"]["sae_training"] > 0


def test_record_parallel_shares_the_wall_time():
    parts = [{"seconds": {"sae_training": 3.0, "activation_extraction": 0.0, "lm_evaluation": 1.0, "plotting": 0.0},
              "saes_trained": 1, "sae_tokens": 10}] * 2
    with timing.collecting() as entry:
        timing.record_parallel(4.0, parts, scale="smoke")
    assert entry["seconds"]["sae_training"] == pytest.approx(3.0)
    assert entry["seconds"]["lm_evaluation"] == pytest.approx(1.0)
    assert (entry["saes_trained"], entry["sae_tokens"]) == (2, 20)


def test_n_workers_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SAELIB_WORKERS", "1")
    assert n_workers() == 1
    monkeypatch.setenv("SAELIB_WORKERS", "two")
    with pytest.raises(ValueError, match="SAELIB_WORKERS"):
        n_workers()
    monkeypatch.setenv("SAELIB_WORKERS", "0")
    with pytest.raises(ValueError, match="SAELIB_WORKERS"):
        n_workers()
