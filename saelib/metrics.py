"""Stable import path (`from saelib.metrics import ...`); the code lives in saelib/eval/metrics.py."""
from saelib.eval.metrics import *  # noqa: F401,F403
