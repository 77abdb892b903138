"""Shared test setup: one torch thread per test process and no worker processes for sweeps (the suite runs
under pytest-xdist on 2 cores; more threads or processes only oversubscribe; tests/test_workers.py asks for
workers explicitly) and no GPU."""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SAELIB_WORKERS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the suite leaves the repo alone
# A test that writes default-scale output without redirecting it (SAELIB_OUTPUT_DIR / SAELIB_FIGURES_DIR) would
# overwrite the committed figures/ and README: the session fails if any of them changed while it ran.

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]


def _committed_outputs() -> dict[str, str]:
    paths = [_ROOT / "README.md", *sorted((_ROOT / "figures").glob("*"))]
    return {str(p.relative_to(_ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):              # the controller (or a run without xdist)
        session.config._committed_outputs = _committed_outputs()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_committed_outputs", None)
    if before is None:
        return
    after = _committed_outputs()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print(f"\nthe test session changed committed outputs: {changed} (a test wrote default-scale output "
              "without SAELIB_OUTPUT_DIR / SAELIB_FIGURES_DIR); restore them with git checkout")
        session.exitstatus = 1
