#!/usr/bin/env bash
# Start C2S Studio on http://127.0.0.1:8501 with the embedded demo model and example data.
# Usage: bash scripts/run.sh [c2s app options, e.g. --port 8502]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# New browser sessions open on the example dataset (scanpy's pbmc68k_reduced); 0 turns it off.
export C2S_EXAMPLE_ON_START="${C2S_EXAMPLE_ON_START:-1}"
exec c2s app "$@"
