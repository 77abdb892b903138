"""Strip what changes on every execution from executed notebooks, so that a rerun with unchanged results
leaves the committed notebooks byte for byte unchanged (run_all.sh calls this after papermill).

    python scripts/clean_notebook.py notebooks/04_shrinkage.ipynb [more.ipynb ...]   # rewrites in place
    python scripts/clean_notebook.py --check notebooks/*.ipynb      # exit 1 if any would change

Removed: papermill's notebook and cell metadata (start/end times, durations, status, input/output paths),
Jupyter's cell "execution" timestamps, and widget state. Normalised: consecutive stream outputs of one cell
(stdout, stderr) are merged into one (papermill splits them at timing-dependent points), the injected
parameters cell gets a fixed id, and the file is written with nbformat's usual layout (indent 1, sorted keys,
UTF-8, trailing newline). Outputs themselves (text, tables, figures) are kept as they are.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from saelib.files import atomic_write_text

VOLATILE_CELL_METADATA = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")
VOLATILE_NOTEBOOK_METADATA = ("papermill", "widgets", "toc-autonumbering")


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def merge_streams(outputs: list[dict]) -> list[dict]:
    """Consecutive stream outputs with the same name become one output."""
    merged: list[dict] = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")):
            merged[-1]["text"] = _lines(_text(merged[-1]["text"]) + _text(out["text"]))
        else:
            if out.get("output_type") == "stream":
                out = dict(out, text=_lines(_text(out["text"])))
            merged.append(out)
    return merged


def clean(nb: dict) -> dict:
    meta = nb.get("metadata", {})
    for key in VOLATILE_NOTEBOOK_METADATA:
        meta.pop(key, None)
    for cell in nb.get("cells", []):
        cmeta = cell.get("metadata", {})
        for key in VOLATILE_CELL_METADATA:
            cmeta.pop(key, None)
        if "injected-parameters" in cmeta.get("tags", []):
            cell["id"] = "injected-parameters"
        if cell.get("cell_type") == "code":
            cell["outputs"] = merge_streams(cell.get("outputs", []))
            for out in cell["outputs"]:
                out.get("metadata", {}).pop("execution", None)
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks that would change")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.notebooks:
        before = path.read_text(encoding="utf-8")
        after = dumps(clean(json.loads(before)))
        if after != before:
            dirty.append(path)
            if not args.check:
                atomic_write_text(path, after)            # never half a notebook (saelib.files)
    if args.check and dirty:
        print("would clean: " + ", ".join(map(str, dirty)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
