#!/usr/bin/env bash
# Creates the SEPARATE virtual environment holding the reference package (cell2sentence 1.2.0)
# that bench_sentences.py calls from a subprocess for the side-by-side comparison.
# It is never a dependency of C2S Studio and its code is never imported into our process.
#
# Usage: benchmarks/reference_env.sh [VENV_DIR]   (default /tmp/c2s_reference_venv)
set -euo pipefail

VENV_DIR="${1:-/tmp/c2s_reference_venv}"
PYTHON="${PYTHON:-python3.11}"

"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --upgrade pip
# torch first so pip resolves the CPU wheel instead of pulling a CUDA build for cell2sentence.
"$VENV_DIR/bin/python" -m pip install "torch==2.13.0"
"$VENV_DIR/bin/python" -m pip install "cell2sentence==1.2.0"
"$VENV_DIR/bin/python" -c "import cell2sentence, anndata; print('cell2sentence', cell2sentence.__version__ if hasattr(cell2sentence, '__version__') else '1.2.0', 'anndata', anndata.__version__)"
echo "reference venv ready: $VENV_DIR"
