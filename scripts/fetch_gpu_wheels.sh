#!/usr/bin/env bash
# Fetches, on a machine with a package index, the wheels that an offline GPU image lacks, into .whl/ (git-ignored):
# transformers at the version .venv (and so CI) uses, a regex new enough for it, and PyAV for video decoding, all for
# CPython 3.12 on x86-64 Linux. scripts/gpu_check.sh installs them there when .whl/ exists; the image must bring
# torch with CUDA, torchvision, tokenizers, huggingface-hub, safetensors, accelerate, pillow, numpy and pytest.
# About 50 MB. Override the target with PY_VERSION=3.11 etc.
set -euo pipefail
cd "$(dirname "$0")/.."
py_version="${PY_VERSION:-3.12}"
version_of() { .venv/bin/python -c "from importlib.metadata import version; print(version('$1'))"; }
[ -x .venv/bin/python ] || bash scripts/setup.sh
# flash-linear-attention: Qwen3.5's Gated DeltaNet kernels (pure Python + Triton). causal-conv1d has no wheel on PyPI
# (it compiles against CUDA): its source is fetched too, and gpu_check.sh builds it where nvcc exists.
wheels=("transformers==$(version_of transformers)" "regex==$(version_of regex)" "av==$(version_of av)"
        "flash-linear-attention==0.6.0")
rm -rf .whl && mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
  "${platforms[@]}" -d .whl "${wheels[@]}"
.venv/bin/python -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d .whl/src causal-conv1d \
  || echo "fetch_gpu_wheels: causal-conv1d source not fetched (the GPU check then measures fla without it)"
ls -la .whl
echo "fetch_gpu_wheels: carry .whl to the GPU machine beside the checkout, then run: bash scripts/gpu_check.sh"
