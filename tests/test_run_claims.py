"""saelib.lab.run_claims: a run another process is training is waited for, never trained twice."""
from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys

import torch

from saelib.lab import run_claims
from saelib.lab.experiments import _TRAIN_CALLS, SAESpec, SyntheticSite, sweep
from saelib.lab.protocol import Protocol
from saelib.lab.scales import get_scale

SPECS = [SAESpec("standard", c) for c in (0.02, 0.05, 0.1)] + [SAESpec("topk", 0.0, {"k": k}) for k in (2, 4, 8)]


def _site():
    return SyntheticSite(get_scale("smoke", train_steps=60), seed=0, n_features=64, d_in=16)


def test_claim_is_exclusive_and_released(tmp_path):
    run = tmp_path / "abc"
    assert run_claims.try_claim(run)
    assert run_claims.claim_path(run).read_text() == f"{os.getpid()} {socket.gethostname()}"
    assert not run_claims.claimed_by_other(run)            # our own claim
    run_claims.release(run)
    assert not run_claims.claim_path(run).exists()


def test_a_live_claim_of_another_process_holds_and_a_dead_one_is_taken_over(tmp_path):
    run = tmp_path / "abc"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run_claims.claim_path(run).write_text(f"{other.pid} {socket.gethostname()}")
        assert run_claims.claimed_by_other(run)
        assert not run_claims.try_claim(run)
    finally:
        other.kill()
        other.wait()
    assert not run_claims.claimed_by_other(run)            # its process is gone: stale
    assert not run_claims.wait_for(run)                    # no metrics.json: the caller trains it
    assert run_claims.try_claim(run)
    run_claims.release(run)


def _sweep_in_process(out_dir: str, weights_file: str, queue) -> None:
    os.environ["SAELIB_OUTPUT_DIR"] = out_dir
    torch.set_num_threads(1)
    before = _TRAIN_CALLS[0]
    runs = sweep(_site(), SPECS, seeds=(0,), protocol=Protocol(), workers=1, progress=False)
    torch.save([r.sae.state_dict() for r in runs], weights_file)
    queue.put((_TRAIN_CALLS[0] - before, [r.path.name for r in runs], weights_file))


def test_two_processes_share_a_sweep_without_training_a_run_twice(tmp_path, monkeypatch):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_sweep_in_process, args=(str(tmp_path / "shared"), str(tmp_path / f"w{i}.pt"), queue))
             for i in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    trained = [g[0] for g in got]
    assert sum(trained) == len(SPECS)                       # each run trained once, by one of the two
    assert got[0][1] == got[1][1]                           # both see the same runs, in the sweep's order
    assert not list((tmp_path / "shared").rglob("*" + run_claims.SUFFIX))   # no claim left behind
    # the same weights as one process alone
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path / "alone"))
    alone = sweep(_site(), SPECS, seeds=(0,), protocol=Protocol(), workers=1, progress=False)
    weights = [torch.load(g[2]) for g in got]
    for r, a, b in zip(alone, weights[0], weights[1], strict=True):
        for name, p in r.sae.state_dict().items():
            assert torch.equal(p, a[name]) and torch.equal(p, b[name]), name


def test_a_sweep_trains_the_unclaimed_runs_before_waiting_for_a_claimed_one(tmp_path, monkeypatch):
    import threading

    from saelib.lab.experiments import effective_options, run_key, run_path, train_config

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    site, protocol = _site(), Protocol()
    paths = [run_path(site, run_key(site, s, train_config(s, site.scale, 0, protocol), effective_options(s, protocol)))
             for s in SPECS]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])   # "another notebook"
    try:
        run_claims.claim_path(paths[0]).parent.mkdir(parents=True, exist_ok=True)
        run_claims.claim_path(paths[0]).write_text(f"{holder.pid} {socket.gethostname()}")
        out: list = []
        sweeper = threading.Thread(target=lambda: out.append(
            sweep(site, SPECS, seeds=(0,), protocol=protocol, workers=1, progress=False)))
        sweeper.start()
        for _ in range(600):                       # every other run gets trained while the first one is claimed
            if all((p / "metrics.json").exists() for p in paths[1:]):
                break
            sweeper.join(timeout=0.5)
        assert all((p / "metrics.json").exists() for p in paths[1:])
        assert not (paths[0] / "metrics.json").exists() and sweeper.is_alive()     # still waiting for the first
    finally:
        holder.kill()
        holder.wait()
    sweeper.join(timeout=120)                      # the claim is now stale: the sweep trains that run itself
    assert not sweeper.is_alive() and (paths[0] / "metrics.json").exists()
    assert [r.path for r in out[0]] == paths


def test_an_empty_claim_is_live_briefly_then_stale(tmp_path):
    run = tmp_path / "abc"
    claim = run_claims.claim_path(run)
    claim.write_text("")                                   # its owner has not written its pid yet
    assert run_claims.claimed_by_other(run)
    old = claim.stat().st_mtime - 2 * run_claims.EMPTY_CLAIM_GRACE
    os.utime(claim, (old, old))                            # ... or died before it could
    assert not run_claims.claimed_by_other(run)
    assert run_claims.try_claim(run)
    run_claims.release(run)
