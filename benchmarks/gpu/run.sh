#!/usr/bin/env bash
# The prepared GPU benchmark, one command (<= 8 min on one H100/H200/A100): JSON + Markdown table under
# benchmarks/results/gpu/<gpu name>/ (or --out DIR). `--dry-run` builds every model at tiny size on the CPU (CI).
#   bash benchmarks/gpu/run.sh             # on a GPU machine
#   bash benchmarks/gpu/run.sh --dry-run   # anywhere
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec timeout 480 "$PY" benchmarks/gpu/run.py "$@"
