#!/usr/bin/env bash
# The one command to run on a GPU machine: the gpu-marked tests and the GPU training benchmark.
# Output (versions, junit XML, logs, benchmark JSON) goes under $OUT when set, else ./gpu-check-out.
#
# Two set-ups:
#  * a machine that reaches a package index: scripts/setup.sh builds .venv as on the CPU;
#  * an offline GPU image whose python3 already holds torch with CUDA (as the lent H100/H200 machines do): run
#    scripts/fetch_gpu_wheels.sh beforehand where pip works, carry .whl/, and this script installs those wheels
#    into a scratch folder and puts the two packages of this repo on PYTHONPATH. Nothing is fetched.
# Each step has a time limit, so that the whole check ends within about 12 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  py="${PYTHON:-python3}"
  site="${TMPDIR:-/tmp}/qwenvl-gpu-site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    > "$out/setup.log" 2>&1 || { echo "installing .whl/ failed, see $out/setup.log"; tail -20 "$out/setup.log"; exit 1; }
  export PYTHONPATH="$site:$PWD/qwen-vl-utils/src:$PWD/qwen-vl-finetune:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if compgen -G ".whl/src/causal_conv1d-*" > /dev/null && command -v nvcc > /dev/null; then
    timeout 300 "$py" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" .whl/src/causal_conv1d-* \
      > "$out/causal_conv1d_build.log" 2>&1 || echo "causal-conv1d did not build (see $out/causal_conv1d_build.log)"
  fi
else
  bash scripts/setup.sh > "$out/setup.log" 2>&1 || { echo "setup failed, see $out/setup.log"; exit 1; }
  py=.venv/bin/python
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$py" - <<'PY' 2>&1 | tee "$out/versions.txt"
import importlib.metadata as md
import torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for name in ("transformers", "tokenizers", "accelerate", "av", "torchvision", "flash_attn", "peft",
             "flash-linear-attention", "causal_conv1d", "triton"):
    try:
        print(name, md.version(name.replace("_", "-")))
    except md.PackageNotFoundError:
        print(name, "-")
import qwen_vl_utils, qwenvl  # noqa: E401,F401  (fail here, not in the middle of a test, if the set-up is wrong)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "the Python set-up is broken, see $out/versions.txt"; exit 1; }
status=0
# -p no:cacheprovider: the checkout may be read-only or shared; tests/gpu only, so CPU-only extras (gradio,
# playwright, deepspeed) need not be importable.
timeout 240 "$py" -m pytest tests/gpu -m gpu -p no:cacheprovider -q --junitxml="$out/gpu-tests.xml" 2>&1 \
  | tee "$out/gpu-tests.log" || status=1
# Training throughput and MFU of a Qwen3-VL-2B-shaped model, padded vs packed.
timeout 240 "$py" benchmarks/bench_train.py --gpu --samples 256 --batch-size 16 --out "$out/train_gpu.json" 2>&1 \
  | tee "$out/train_gpu.log" || status=1
# Packed Qwen3.5 training step (tiny shape, bf16) with the linear-attention kernels (flash-linear-attention +
# causal-conv1d, when installed: .whl/ carries fla; causal-conv1d builds from source where nvcc exists) and without
# them (QWENVL_LINEAR_ATTENTION_KERNELS=0: each packed sample runs alone through the layer).
for kernels in 1 0; do
  QWENVL_LINEAR_ATTENTION_KERNELS=$kernels timeout 150 "$py" benchmarks/bench_train.py --family qwen3_5 --device cuda \
    --dtype bfloat16 --samples 128 --batch-size 16 --repeats 5 --out "$out/train_qwen3_5_kernels$kernels.json" 2>&1 \
    | tee "$out/train_qwen3_5_kernels$kernels.log" || status=1
done
exit $status
