"""The committed notebooks (executed at default scale by run_all.sh) must read cleanly: no warnings,
tracebacks, path reprs or progress-bar debris in their outputs, and no volatile execution metadata (which
would make every rerun rewrite them). Fix a failure at its source (saelib.progress, saelib.lab.plotting,
scripts/clean_notebook.py), then rerun the notebook with run_all.sh."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

sys.path.insert(0, str(ROOT / "scripts"))
from clean_notebook import clean  # noqa: E402

WARNING = re.compile(r"\b[A-Z]\w*Warning\b[:(]|^\s*warnings\.warn\(", re.M)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*Error: ", re.M)
PATH_REPR = re.compile(r"\b(Posix|Windows|Pure\w*)Path\(")
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\|")


def _outputs(path: Path):
    """(cell index, output type, text) for every text-like output of every code cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            kind = out["output_type"]
            if kind == "stream":
                yield i, f"stream:{out['name']}", "".join(out["text"])
            elif kind == "error":
                yield i, "error", f"{out.get('ename')}: {out.get('evalue')}\n" + "\n".join(out.get("traceback", []))
            else:
                for mime, data in out.get("data", {}).items():
                    if mime.startswith("text/"):
                        yield i, f"{kind}:{mime}", "".join(data) if isinstance(data, list) else str(data)


def _hits(path: Path, pattern: re.Pattern) -> list[str]:
    return [f"{path.name} cell {i} ({kind}): {m.group(0)!r} in {text[max(0, m.start() - 60):m.end() + 60]!r}"
            for i, kind, text in _outputs(path) for m in [pattern.search(text)] if m]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_errors_or_tracebacks(path):
    errors = [f"{path.name} cell {i}: {text[:200]!r}" for i, kind, text in _outputs(path) if kind == "error"]
    assert not errors + _hits(path, TRACEBACK), "\n".join(errors + _hits(path, TRACEBACK))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_warnings(path):
    hits = _hits(path, WARNING)
    assert not hits, "warnings in committed outputs:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_path_reprs(path):
    hits = _hits(path, PATH_REPR)
    assert not hits, "print paths as text relative to the repo, not as reprs:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_progress_bar_debris(path):
    hits = _hits(path, PROGRESS_BAR)
    assert not hits, "progress bars in committed outputs (run_all.sh sets SAELIB_PROGRESS=0):\n" + "\n".join(hits)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_volatile_execution_metadata(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert clean(json.loads(json.dumps(nb))) == nb, (
        f"{path.name} carries timestamps/durations or unmerged streams: python scripts/clean_notebook.py {path}")


def test_the_checks_catch_what_they_are_for(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": [], "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stderr",
         "text": ["/x/tqdm/auto.py:21: TqdmWarning: IProgress not found.\n"]},
        {"output_type": "stream", "name": "stderr", "text": ["SAEs:  40%|████      | 2/5 [00:24<00:37]\n"]},
        {"output_type": "execute_result", "execution_count": 1, "metadata": {},
         "data": {"text/plain": ["PosixPath('/work/main/figures/x.png')"]}},
        {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": ["Traceback ..."]}]}],
        "metadata": {"papermill": {"duration": 1.0}}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "99_bad.ipynb"
    path.write_text(json.dumps(nb))
    assert _hits(path, WARNING) and _hits(path, PATH_REPR) and _hits(path, PROGRESS_BAR)
    assert any(kind == "error" for _, kind, _ in _outputs(path))
    assert clean(json.loads(path.read_text())) != json.loads(path.read_text())
