#!/usr/bin/env bash
# Second lane, started at 22:36 UTC next to run.sh's fp32 run (same settings) while run.sh holds
# /tmp/fedtune-heavy.lock: the shared machine was at load ~30, too slow for four runs in a row.
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
    echo "end $(date -u +%FT%TZ) load: $(cat /proc/loadavg)"
  } > "$OUT/$name/run.log" 2>&1
}
run topk10 "topk_fraction=0.1"
run int8 "update_encoding=int8,int8_block_size=256"
