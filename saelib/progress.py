"""Progress bars that never leave debris in an executed notebook.

Every bar in saelib comes from here: plain-text `tqdm.std` bars (no ipywidgets needed, so no TqdmWarning;
importing this module also silences the one TqdmWarning that tqdm.auto raises in libraries we call),
switched off entirely when the environment variable SAELIB_PROGRESS is "0" (run_all.sh sets it, so
papermill's saved outputs carry no progress text). In an interactive notebook or a terminal they behave as
usual.

    from saelib.progress import tqdm
    for batch in tqdm(batches, desc="training"): ...
"""
from __future__ import annotations

import os
import warnings
from typing import Any

from tqdm.std import TqdmWarning
from tqdm.std import tqdm as _std_tqdm

# Libraries we call (transformer_lens) import tqdm.auto, which warns in a Jupyter kernel without ipywidgets
# and then falls back to these same text bars; that one warning says nothing to a reader of a notebook.
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)


def progress_enabled() -> bool:
    """False when SAELIB_PROGRESS is "0", "false" or "no" (batch runs: run_all.sh, the notebook tests)."""
    return os.environ.get("SAELIB_PROGRESS", "1").strip().lower() not in ("0", "false", "no")


class tqdm(_std_tqdm):  # noqa: N801 - drop-in replacement for tqdm.tqdm
    """tqdm.std.tqdm, disabled whenever progress_enabled() is False."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not progress_enabled():
            kwargs["disable"] = True
        super().__init__(*args, **kwargs)
