"""Shared test setup: one torch thread per test process (the suite runs under pytest-xdist on 2 cores;
more threads only oversubscribe) and no GPU."""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
