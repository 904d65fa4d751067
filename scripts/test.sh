#!/usr/bin/env bash
# Install what the tests need, lint (ruff check with pyproject.toml's rules, ruff format --check), then run
# the tests (unit + end-to-end against real Ray and a loopback S3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export RAY_USAGE_STATS_ENABLED=0
# Two pytest-xdist workers, each with its own local Ray: tests/conftest.py groups the tests that share a session
# fixture (built once per group) and orders the groups with the most end-to-end tests first, which
# --no-loadscope-reorder keeps (docs/testing.md). Arguments go on after these: `scripts/test.sh -n 0` runs serially.
exec .venv/bin/python -m pytest -q --durations=15 -n 2 --dist loadgroup --no-loadscope-reorder "$@"
