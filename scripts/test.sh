#!/usr/bin/env bash
# Install what the tests need, then run them all (unit + end-to-end against real Ray and a loopback S3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q --durations=15 "$@"
