#!/usr/bin/env bash
# Install what the tests need, lint (ruff check with pyproject.toml's rules, ruff format --check), then run
# the tests (unit + end-to-end against real Ray and a loopback S3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export RAY_USAGE_STATS_ENABLED=0
# Serial: two pytest-xdist workers (`scripts/test.sh -n 2 --dist loadgroup --no-loadscope-reorder`) took 583-631 s
# against 686 s serially on 2 quiet cores, and 976 s against 1020 s on a slower machine, where the suite is
# CPU-bound (docs/testing.md).
exec .venv/bin/python -m pytest -q --durations=15 "$@"
