"""Where things are written. Default- and paper-scale runs write figures to figures/ (committed);
smoke runs (CI, tests) and long runs write under outputs/<scale>/figures/ so they never overwrite the committed
figures.

Override with the environment variables SAELIB_OUTPUT_DIR (everything) and SAELIB_FIGURES_DIR.
"""
from __future__ import annotations

import os
from pathlib import Path

from saelib.validation import check_choice

REPO_ROOT = Path(__file__).resolve().parents[2]
SCALES = ("smoke", "default", "long", "paper")


def output_dir(scale: str) -> Path:
    """Root for caches, trained SAEs, claims and executed notebooks of one scale."""
    check_choice("scale", scale, SCALES)
    root = Path(os.environ.get("SAELIB_OUTPUT_DIR", REPO_ROOT / "outputs"))
    return root / scale


def figures_dir(scale: str) -> Path:
    check_choice("scale", scale, SCALES)
    if "SAELIB_FIGURES_DIR" in os.environ:
        return Path(os.environ["SAELIB_FIGURES_DIR"])
    # smoke (CI) and long (optional) runs never overwrite the committed default-scale figures
    return output_dir(scale) / "figures" if scale in ("smoke", "long") else REPO_ROOT / "figures"
