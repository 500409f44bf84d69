#!/usr/bin/env bash
# The main job on the embedded default: generate the tiny corpus, then run the data pipeline on a
# local Ray (CPU, loopback only). Rerunning resumes; outputs land in runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
[ -f runs/corpus/truth.jsonl ] || .venv/bin/pretrain data generate-corpus --out runs/corpus > /dev/null
.venv/bin/pretrain data run --config configs/data_tiny.yaml "$@"
# How the run did against the corpus's planted ground truth (fates, PII recall, toxicity P/R).
.venv/bin/pretrain data score --corpus runs/corpus --run runs/data
