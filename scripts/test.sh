#!/usr/bin/env bash
# Install what the tests need, lint (ruff check with pyproject.toml's rules, ruff format --check), then run
# the tests (unit + end-to-end against real Ray and a loopback S3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q --durations=15 "$@"
