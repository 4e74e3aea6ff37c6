#!/usr/bin/env bash
# The runs behind this folder's README, in the order they ran (2 CPU cores, one after another).
# From the repository root after `make install`:  bash bench/results/quality-2026-12-01/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=bench/results/quality-2026-12-01
COMMON=(--sites 8 --alpha 0.1 --rounds 6 --local-steps 10 --logit-adjustment 1.0)
run() {  # run NAME ARGS...: one `fedtune bench quality` invocation, its log beside its figures
  local name=$1; shift
  mkdir -p "$OUT/$name"
  .venv/bin/python -m fedtune bench quality "${COMMON[@]}" "$@" --out "$OUT/$name" 2>&1 | tee "$OUT/$name/run.log"
}
run pt-seed0 --seed 0 --configs centralized,local-only,ncm+fedavg --methods prompt_tuning
run lora-seed1 --seed 1 --configs centralized,ncm+fedprox:mu=0.01 --methods lora
run ffa-lora --seed 0 --configs ncm+fedprox:mu=0.01 --methods ffa_lora
run lora-no-head --seed 0 --configs fedprox:mu=0.01,fedavg_adaptive --methods lora
