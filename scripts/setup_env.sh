#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install C2S Studio into it.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (it skips work already done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${C2S_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Re-install only when the dependency files changed since the last successful install.
STAMP="$VENV/.c2s-installed"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing dependencies (first run takes a few minutes)"
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first, pinned: a fresh CPU machine takes the local CPU wheel, a GPU machine the
  # CUDA build; every later range in requirements.txt is then already satisfied.
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    "$VPY" -m pip install -q --disable-pip-version-check "torch==${C2S_TORCH_VERSION:-2.13.0}"
  fi
  "$VPY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  "$VPY" -m pip install -q --disable-pip-version-check "pytest>=8,<10" "ruff>=0.6,<1" "playwright>=1.45,<2"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
