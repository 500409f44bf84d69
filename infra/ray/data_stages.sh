#!/usr/bin/env bash
# The data stages as one Ray job, in order: clean (data_pipeline run) -> MinHash near-duplicate
# removal -> BPE tokenizer training -> encoding into token shards.
#
#   ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env infra/ray/runtime_env.yaml \
#       -- bash infra/ray/data_stages.sh /shared/raw /shared/runs
#
# Under `ray job submit` (and a KubeRay RayJob) RAY_ADDRESS is set, so every stage joins the cluster
# instead of starting a local Ray. RAW and OUT must be on storage every node sees. Every stage
# resumes from its own outputs, so resubmitting after a failure continues where it stopped.
# Optional environment: DATA_CONFIG, MINHASH_CONFIG, TOKENIZER_CONFIG (YAML files, paths relative to
# the repo root), PYTHON (the interpreter; default `python`).
set -euo pipefail

RAW=${1:?usage: data_stages.sh RAW_INPUT OUT_ROOT}
OUT=${2:?usage: data_stages.sh RAW_INPUT OUT_ROOT}
DATA_CONFIG=${DATA_CONFIG:-infra/configs/data_cluster.yaml}
MINHASH_CONFIG=${MINHASH_CONFIG:-infra/configs/minhash_cluster.yaml}
PY=${PYTHON:-python}
tokenizer_config=()
if [ -n "${TOKENIZER_CONFIG:-}" ]; then tokenizer_config=(--config "$TOKENIZER_CONFIG"); fi

# The repo root: the uploaded working_dir under `ray job submit`, the image's checkout under KubeRay.
cd "$(dirname "$0")/../.."
echo "data_stages: raw=$RAW out=$OUT data_config=$DATA_CONFIG TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-unset}"

"$PY" -m data_pipeline run --config "$DATA_CONFIG" "input.paths=[$RAW]" "output_dir=$OUT/data"
"$PY" -m data_pipeline minhash --config "$MINHASH_CONFIG" --input "$OUT/data" --output "$OUT/dedup"
"$PY" -m tokenizer train --input "$OUT/dedup" --out "$OUT/tokenizer" "${tokenizer_config[@]}"
"$PY" -m tokenizer encode --input "$OUT/dedup" --tokenizer "$OUT/tokenizer" --output "$OUT/tokens"
echo "data_stages: token shards in $OUT/tokens, tokenizer in $OUT/tokenizer"
