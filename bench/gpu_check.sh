#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): a ~1B random Llama, bf16 LoRA vs 4-bit QLoRA, each with and
# without gradient checkpointing (tokens/s, peak GPU memory), and one federated round with two workers
# on this GPU through the real coordinator. Writes bench/results/gpu-check.json and .md.
# Needs a CUDA GPU, a CUDA build of torch and bitsandbytes (pip install 'fedtune[gpu]'); exits 2 at
# once, saying so, without them. Usage: bench/gpu_check.sh [--out-dir DIR] [--cpu-smoke]
# The interpreter: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
exec timeout --signal=TERM 600 "$PYTHON" -m bench.gpu_check "$@"
