#!/usr/bin/env bash
# The one command to run on a GPU machine: the gpu-marked tests and the GPU benchmarks.
# Output (junit XML, logs, benchmark JSON) goes under $OUT when set, else ./gpu-check-out.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
bash scripts/setup.sh > "$out/setup.log" 2>&1 || { echo "setup failed, see $out/setup.log"; exit 1; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
status=0
.venv/bin/python -m pytest -m gpu --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log" || status=1
# GPU benchmarks: training throughput and MFU of a Qwen3-VL-2B-shaped model, padded vs packed.
.venv/bin/python benchmarks/bench_train.py --gpu --samples 64 --batch-size 8 --out "$out/train_gpu.json" 2>&1 \
  | tee "$out/train_gpu.log" || status=1
exit $status
