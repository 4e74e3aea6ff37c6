#!/usr/bin/env bash
# BBC News, MiniLM LoRA r=8, ncm+fedprox mu=0.01, 8 sites, Dirichlet alpha 0.1, seed 0, logit adjustment 1.0,
# 1 fedncm head round + 2 finetune rounds x 10 local steps x batch 16, one run per upload encoding.
# HEAVY (8 worker processes, ~18 GB): one run at a time, on an otherwise idle machine. From the repository root:
#   flock /tmp/fedtune-heavy.lock bash bench/results/compression-quality/run.sh [NAME ...]
# NAME is one of fp32 topk10 int8 bf16 (default: all four, in that order).
set -uo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=bench/results/compression-quality
COMMON=(--sites 8 --alpha 0.1 --seed 0 --rounds 2 --local-steps 10 --logit-adjustment 1.0
        --configs ncm+fedprox:mu=0.01 --methods lora --timeout 5400)
declare -A TRANSPORT=(
  [fp32]=""
  [topk10]="topk_fraction=0.1"
  [int8]="update_encoding=int8,int8_block_size=256"
  [bf16]="update_encoding=bf16"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(fp32 topk10 int8 bf16)
for name in "${names[@]}"; do
  [ -n "${TRANSPORT[$name]+set}" ] || { echo "unknown run $name (fp32 topk10 int8 bf16)" >&2; exit 2; }
done
for name in "${names[@]}"; do
  mkdir -p "$OUT/$name"
  {
    echo "start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) load: $(cat /proc/loadavg)"
    env PYTHONPATH="$PWD" "$PY" -m fedtune bench quality "${COMMON[@]}" \
      --transport "${TRANSPORT[$name]}" --out "$OUT/$name"
    echo "end $(date -u +%FT%TZ) rc=$? load: $(cat /proc/loadavg)"
  } > "$OUT/$name/run.log" 2>&1
done
