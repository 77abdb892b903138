"""Stable import path (`from saelib.synthetic import ...`); the code lives in saelib/eval/synthetic.py."""
from saelib.eval.synthetic import *  # noqa: F401,F403
