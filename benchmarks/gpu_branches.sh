#!/usr/bin/env bash
# Ray-free GPU check (target: under 8 minutes on one H200): the Fashion-MNIST baseline against 4 sub4
# branches as 4 processes sharing the GPU, cnn8 and resnet18, images/s, peak GPU memory, accuracy after the
# same epochs, and the exported ensemble's accuracy on CUDA. See benchmarks/gpu_branches.py.
#
#   benchmarks/gpu_branches.sh DATA_DIR [OUT.json] [more options of benchmarks.gpu_branches]
#
# DATA_DIR: what `python -m benchmarks.gpu_branches --prepare DATA_DIR` wrote (here, where Ray is).
# OUT.json: default $OUT/gpu_branches.json where $OUT is set, else benchmarks/results/gpu_branches.json.
# Python: $PYTHON, else the repository's .venv, else python3. Needs torch (>= 2.11), pyarrow, numpy and fsspec
# (which torch installs); never Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
DATA=${1:?usage: benchmarks/gpu_branches.sh DATA_DIR [OUT.json] [options]}
shift
OUTFILE=benchmarks/results/gpu_branches.json
[[ -n "${OUT:-}" ]] && OUTFILE=$OUT/gpu_branches.json
if [[ $# -gt 0 && $1 == *.json ]]; then OUTFILE=$1; shift; fi
if ! "$PY" -c "import torch, pyarrow" 2>/dev/null; then
    echo "gpu_branches: $PY cannot import torch and pyarrow (set PYTHON)" >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >&2
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} exec "$PY" -m benchmarks.gpu_branches --data "$DATA" --out "$OUTFILE" "$@"
