"""A fingerprint of the library code that produces a trained SAE, part of every run's cache key
(saelib.lab.experiments.run_key): edit a model, a training step or a metric and the old runs are no
longer loaded; they are retrained on the next call.

What is hashed (CODE_FILES): every module of saelib/models (architectures, losses, kernels, straight-through
estimators), saelib/fast (the sparse training steps), the training modules that change what is learned
(saelib/training/{loop,batches,schedules,resampling}.py) and saelib/eval/metrics.py (the metrics stored with
each run). Not hashed: the notebook layer (saelib/lab), plotting, I/O, checkpointing and distributed plumbing,
which do not change a run's numbers (a change to the training *settings* is already in the key through the
TrainConfig).

Each file is hashed through its syntax tree with docstrings removed, so comments, docstrings and formatting
do not invalidate the cache; any change to code does.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]                  # saelib/
CODE_FILES = ("models/*.py", "fast/*.py", "training/loop.py", "training/batches.py", "training/schedules.py",
              "training/resampling.py", "eval/metrics.py")


def normalized_source(text: str) -> str:
    """The code of a module without comments, docstrings or formatting (ast.dump of the stripped tree)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def code_files(root: Path = PACKAGE_ROOT) -> list[Path]:
    files: set[Path] = set()
    for pattern in CODE_FILES:
        files.update(root.glob(pattern))
    return sorted(files)


@lru_cache(maxsize=4)
def code_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    """16 hex digits identifying the code in CODE_FILES (computed once per process)."""
    digest = hashlib.sha256()
    for path in code_files(root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(normalized_source(path.read_text()).encode())
    return digest.hexdigest()[:16]
