#!/usr/bin/env bash
# The main job on the embedded default (no downloads): see qwen-vl-finetune/qwenvl/quickstart.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m qwenvl.quickstart "$@"
