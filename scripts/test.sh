#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): install, lint, check the floor plan
# (import-linter contracts in pyproject.toml), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
# Two workers, one test file per worker at a time (files share their fixtures); test_run.py, the
# longest file, runs beside the rest.
.venv/bin/python -m pytest -q -n 2 --dist loadfile tests "$@"
