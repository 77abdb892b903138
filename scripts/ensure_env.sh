#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install saelib with its extras.
# Re-installs only when pyproject.toml, the extras or the torch pin change.
# Usage: source scripts/ensure_env.sh  (sets $PY)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SAELIB_VENV:-$root/.venv}"
python_bin="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating virtual environment in $venv"
  "$python_bin" -m venv "$venv"
fi
extras="${SAELIB_EXTRAS:-dev}"          # e.g. SAELIB_EXTRAS=dev,bench adds sae-lens for the interop tests
# The exact torch this project is developed and measured on (pyproject.toml only asks for torch>=2.3).
# On a CUDA machine: SAELIB_TORCH=torch (keep an installed CUDA build) or a CUDA build's exact version.
torch_spec="${SAELIB_TORCH:-torch==2.13.0}"
stamp="$venv/.saelib-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $extras $torch_spec"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[env] installing saelib[$extras] ($torch_spec) into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$root[$extras]" "$torch_spec"
  "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
PY="$venv/bin/python"
export PY
