"""Stable import path (`from saelib.kernels import ...`); the code lives in saelib/models/kernels.py."""
from saelib.models.kernels import *  # noqa: F401,F403
