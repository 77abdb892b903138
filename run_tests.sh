#!/usr/bin/env bash
# The test command: sets up .venv on a fresh machine if needed, then runs the whole pytest suite
# (unit tests + every notebook at smoke scale) on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
export CUDA_VISIBLE_DEVICES=""          # tests never depend on a GPU
exec "$PY" -m pytest -n 2 --dist loadgroup "$@"
