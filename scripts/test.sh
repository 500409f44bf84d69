#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): install, lint, check the floor plan
# (import-linter contracts in pyproject.toml), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
# Two workers, one test file per worker at a time (files share their fixtures); test_run.py, the
# longest file, runs beside the rest. The 25 slowest tests are listed at the end (CI's time).
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 tests "$@"
