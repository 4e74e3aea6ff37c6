#!/usr/bin/env bash
# Record-level DP (DP-SGD at every site) against no DP on the quality benchmark (decision 36).
# From the repository root:  flock /tmp/fedtune-heavy.lock bash bench/results/quality-dp/run.sh
# Reduced schedule (time): 3 rounds x 10 local steps x batch 16, not the 6 rounds of quality-2026-12-01.
# fedprox without the fedncm head round and without logit adjustment: both are refused with DP
# (feature sums are not covered by the noise; the label prior sits inside each record's loss).
# z = 1.4 and 7.0 give a largest-site epsilon of about 8 and 1 at delta 1e-5 over 30 DP-SGD steps
# (the smallest site, 52 articles, has q = 16/52; the median site's epsilon is much lower).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=bench/results/quality-dp
PY=${PYTHON:-/work/main/.venv/bin/python}
COMMON=(--sites 8 --alpha 0.1 --seed 0 --rounds 3 --local-steps 10 --configs fedprox:mu=0.01 --methods lora)
run() {  # run NAME ARGS...
  local name=$1; shift
  mkdir -p "$OUT/$name"
  echo "load before: $(cat /proc/loadavg)" > "$OUT/$name/load.txt"
  "$PY" -m fedtune bench quality "${COMMON[@]}" "$@" --out "$OUT/$name" > "$OUT/$name/run.log" 2>&1
  echo "load after: $(cat /proc/loadavg)" >> "$OUT/$name/load.txt"
}
run no-dp
run dp-eps8 --dp-noise-multiplier 1.4
run dp-eps1 --dp-noise-multiplier 7.0
