#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): install, lint, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q tests "$@"
