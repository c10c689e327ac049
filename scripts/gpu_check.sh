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
shopt -s nullglob
for bench in benchmarks/gpu_*.py; do
  name=$(basename "$bench" .py)
  .venv/bin/python "$bench" --out "$out/$name.json" 2>&1 | tee "$out/$name.log" || status=1
done
exit $status
