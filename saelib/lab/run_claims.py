"""One process trains a run: a claim file beside its cache folder while it trains.

`run_all.sh` executes two notebooks at a time (one per CPU core), and notebooks share runs (the frontiers of
notebooks 01-03 are read again by 04, 08, 10 and 11; every notebook's first cell asks for the learning-rate sweep).
Without coordination both processes would train a run that neither finds in the cache. So before training,
`saelib.lab.experiments` claims the run's key:

    outputs/<scale>/runs/<key>.training      created with O_EXCL; holds "<pid> <host>"; removed when done

A process that finds a run claimed by another does not train it: a sweep first trains the runs nobody has
claimed, then waits for the others (`wait_for`) and loads them from the cache. A claim whose process has died
(same host, pid gone) is stale and is taken over, so an interrupted run never blocks the next one. The result of a
run does not depend on which process trains it (the seed fixes everything; tests/test_run_claims.py).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

SUFFIX = ".training"
EMPTY_CLAIM_GRACE = 10.0                    # seconds an empty claim file (its owner still writing it) counts as live


def claim_path(run_dir: Path) -> Path:
    """The claim file of the run whose cache folder is `run_dir`."""
    return run_dir.with_name(run_dir.name + SUFFIX)


def _me() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def _owner(claim: Path) -> tuple[int, str] | None:
    try:
        pid, host = claim.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(claim: Path) -> bool:
    """Is the claim held by a live process? (Another host's claim counts as live: its pid cannot be checked.)"""
    owner = _owner(claim)
    if owner is None:                       # being written this instant (live), or left empty by a crash (stale)
        try:
            return time.time() - claim.stat().st_mtime < EMPTY_CLAIM_GRACE
        except FileNotFoundError:
            return False
    pid, host = owner
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                 # a live process of another user
        return True
    return True


def try_claim(run_dir: Path) -> bool:
    """Claim the run (True), or find it claimed by another live process (False). A stale claim is taken over."""
    claim = claim_path(run_dir)
    claim.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            if _alive(claim):
                owner = _owner(claim)
                return owner == _me()
            claim.unlink(missing_ok=True)   # stale: its process died before finishing
            continue
        with os.fdopen(fd, "w") as f:
            f.write("{} {}".format(*_me()))
        return True
    return False


def claimed_by_other(run_dir: Path) -> bool:
    """Is another live process training this run now?"""
    claim = claim_path(run_dir)
    if not claim.exists() or not _alive(claim):
        return False
    return _owner(claim) != _me()


def release(run_dir: Path) -> None:
    """Remove this process's claim (after the run's metrics.json is written, or after a failure)."""
    claim = claim_path(run_dir)
    if _owner(claim) == _me():
        claim.unlink(missing_ok=True)


def wait_for(run_dir: Path, poll: float = 0.5) -> bool:
    """Wait while another process trains the run. True: its metrics.json is there; False: the claim went away
    without it (the other process failed or was stopped), so the caller should train the run itself."""
    done = run_dir / "metrics.json"
    while True:
        if done.exists():
            return True
        if not claimed_by_other(run_dir):
            return done.exists()
        time.sleep(poll)
