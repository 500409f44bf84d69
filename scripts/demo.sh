#!/usr/bin/env bash
# The main job on the embedded default: `pretrain run` on the generated tiny corpus, local Ray (CPU,
# loopback only) -> data stages -> MinHash -> held-out split -> tokenizer -> token shards -> two
# curriculum phases of a tiny model -> eval of every checkpoint + HF export -> runs/tiny/report/.
# Rerunning resumes (finished jobs are skipped); extra arguments are dotted overrides or --from JOB.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
.venv/bin/pretrain run configs/run_tiny.yaml "$@"
