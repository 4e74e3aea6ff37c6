#!/usr/bin/env bash
# BBC News, MiniLM LoRA r=8, ncm+fedprox mu=0.01, 8 sites, Dirichlet alpha 0.1, seed 0, logit adjustment 1.0,
# 1 fedncm head round + 2 finetune rounds x 10 local steps x batch 16, one run per upload encoding.
# The four runs hold /tmp/fedtune-heavy.lock together (2 shared CPU cores). From the repository root:
#   flock /tmp/fedtune-heavy.lock bash bench/results/compression-quality/run.sh
set -uo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-/work/main/.venv/bin/python}
OUT=bench/results/compression-quality
COMMON=(--sites 8 --alpha 0.1 --seed 0 --rounds 2 --local-steps 10 --logit-adjustment 1.0
        --configs ncm+fedprox:mu=0.01 --methods lora --timeout 5400)
run() {  # run NAME TRANSPORT
  local name=$1 transport=$2
  mkdir -p "$OUT/$name"
  {
    echo "start $(date -u +%FT%TZ) load: $(cat /proc/loadavg)"
    env PYTHONPATH="$PWD" "$PY" -m fedtune bench quality "${COMMON[@]}" \
      --transport "$transport" --out "$OUT/$name"
    echo "end $(date -u +%FT%TZ) rc=$? load: $(cat /proc/loadavg)"
  } > "$OUT/$name/run.log" 2>&1
}
run fp32 ""
#un topk10 "topk_fraction=0.1"
#un int8 "update_encoding=int8,int8_block_size=256"
#un bf16 "update_encoding=bf16"
