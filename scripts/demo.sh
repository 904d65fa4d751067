#!/usr/bin/env bash
# The main job on the embedded default: Fashion-MNIST (Debian package), sub4 DCT, fc8, local Ray,
# storage under ./runs/. Safe to run twice: finished steps are skipped. Extra args go to `spectral`,
# e.g. scripts/demo.sh --set train.epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
.venv/bin/spectral run --config configs/fashion_mnist.yaml "$@"
.venv/bin/spectral baseline --config configs/fashion_mnist.yaml "$@"
