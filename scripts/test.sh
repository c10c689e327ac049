#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up (scripts/setup.sh), lint, then every test tier in one pytest
# process (slow, distributed, browser and vllm tests included; gpu tests skip without CUDA).
# Extra arguments go to pytest, e.g. scripts/test.sh -k smart_resize
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_vllm.sh   # vLLM on CPU, in its own virtualenv, for the vllm-marked tests
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
