#!/usr/bin/env bash
# Run every test: lint, unit and integration tests, and the real-browser test.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# The browser test drives Debian's chromium; install it when missing (needs root or sudo).
bash "$ROOT/scripts/ensure_chromium.sh"
echo "[test] ruff"
ruff check .
echo "[test] pytest"
python -m pytest "$@"
