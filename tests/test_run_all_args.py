"""run_all.sh refuses bad arguments with a message naming the allowed values (before running anything)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, expected", [
    (["--lanes", "0"], "--lanes '0' is not allowed; allowed values: an integer >= 1"),
    (["--lanes", "two"], "--lanes 'two' is not allowed; allowed values: an integer >= 1"),
    (["--scale", "huge"], "--scale 'huge' is not allowed; allowed values: smoke, default, long, paper"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_run_all_refuses_bad_arguments(args, expected, tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SAELIB_OUTPUT_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert not (tmp_path / "default").exists()          # nothing ran
