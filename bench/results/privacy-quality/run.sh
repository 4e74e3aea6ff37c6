#!/usr/bin/env bash
# Secure aggregation and record-level DP against the plain run on the BBC News quality benchmark
# (issue 10; decisions 35 and 36). From the repository root:
#   flock /tmp/fedtune-heavy.lock bash bench/results/privacy-quality/run.sh
# Reduced schedule (time): fedprox mu=0.01, 3 rounds x 10 local steps x batch 16, MiniLM LoRA r=8,
# 8 sites, Dirichlet alpha 0.1, seed 0. No fedncm head round and no logit adjustment: secure aggregation
# refuses fedncm (its class sums are not a clipped weighted sum) and record-level DP refuses both.
# z = 1.4 and 7.0 give a largest-site epsilon of about 8 and 1 at delta 1e-5 over the 30 DP-SGD steps.
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=bench/results/privacy-quality
PY=${PYTHON:-.venv/bin/python}
COMMON=(--sites 8 --alpha 0.1 --seed 0 --rounds 3 --local-steps 10 --configs fedprox:mu=0.01 --methods lora
        --timeout 3600)
run() {  # run NAME ARGS...
  local name=$1; shift
  mkdir -p "$OUT/$name"
  echo "start $(date -u +%FT%TZ) load: $(cat /proc/loadavg)" > "$OUT/$name/load.txt"
  env PYTHONPATH="$PWD" "$PY" -m fedtune bench quality "${COMMON[@]}" "$@" --out "$OUT/$name" \
    > "$OUT/$name/run.log" 2>&1
  echo "end $(date -u +%FT%TZ) rc=$? load: $(cat /proc/loadavg)" >> "$OUT/$name/load.txt"
}
for name in ${RUNS:-plain secagg dp-eps8 dp-eps1}; do
  case $name in
    plain) run plain ;;
    secagg) run secagg --privacy secure_aggregation=true ;;
    dp-eps8) run dp-eps8 --dp-noise-multiplier 1.4 ;;
    dp-eps1) run dp-eps1 --dp-noise-multiplier 7.0 ;;
  esac
done
