"""Shared test setup: one torch thread per test process and no worker processes for sweeps (the suite runs
under pytest-xdist on 2 cores; more threads or processes only oversubscribe; tests/test_workers.py asks for
workers explicitly) and no GPU."""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SAELIB_WORKERS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
