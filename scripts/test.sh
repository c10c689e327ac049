#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up (scripts/setup.sh), lint, then every test tier in one pytest
# process (slow, distributed, browser and vllm tests included; gpu tests skip without CUDA).
# Extra arguments go to pytest, e.g. scripts/test.sh -k smart_resize
set -euo pipefail
cd "$(dirname "$0")/.."
# The two set-ups are independent (separate virtualenvs): vLLM's installs beside the main one, its output kept in a
# log that is shown when it fails.
vllm_log=$(mktemp)
bash scripts/setup_vllm.sh >"$vllm_log" 2>&1 &   # vLLM on CPU, in its own virtualenv, for the vllm-marked tests
vllm_pid=$!
bash scripts/setup.sh
if ! wait "$vllm_pid"; then
  cat "$vllm_log" >&2
  echo "scripts/setup_vllm.sh failed (its output above)" >&2
  exit 1
fi
cat "$vllm_log"
rm -f "$vllm_log"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
