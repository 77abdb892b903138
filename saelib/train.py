"""Stable import path (`from saelib.train import ...`); the code lives in saelib/training/loop.py."""
from saelib.training.loop import *  # noqa: F401,F403
