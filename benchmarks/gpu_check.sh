#!/usr/bin/env bash
# GPU check (5 minutes on one H100/H200): fc8 and cnn8 baselines on the whole GPU vs 4 spectral sub4
# branches as 4 Ray actors x 0.25 GPU; images/s, peak GPU memory per branch vs baseline, accuracy after
# the same epochs. See benchmarks/gpu_check.py for what is measured and how.
#
#   benchmarks/gpu_check.sh [OUT_DIR | FILE.json] [--cpu-smoke] [--epochs N] [--models fc8,cnn8] [--keep]
#
# JSON goes to OUT_DIR/gpu_check.json, else $OUT/gpu_check.json, else benchmarks/results/gpu_check.json.
# --cpu-smoke runs the same path in seconds on a CPU (one logical GPU); tests/test_gpu_check.py runs it.
# Python: $PYTHON, else the repository's .venv (scripts/setup.sh), else python3 (with the project installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
if ! "$PY" -c "import ray, torch" 2>/dev/null; then
    echo "gpu_check: $PY cannot import ray and torch; run scripts/setup.sh first (or set PYTHON)" >&2
    exit 2
fi
exec "$PY" -m benchmarks.gpu_check "$@"
