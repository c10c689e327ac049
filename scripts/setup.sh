#!/usr/bin/env bash
# Installs everything the toolkit, its tests and its demo need on a fresh Debian/Ubuntu machine (CPU is enough):
# apt packages (ffmpeg for video, chromium for the browser tests), a virtualenv in .venv with the pinned stack
# (torch==2.14.1, torchvision==0.29.1, transformers, peft, deepspeed, gradio, ...) and both packages editable.
# Safe to re-run: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_needed=()
command -v ffmpeg >/dev/null 2>&1 || apt_needed+=(ffmpeg)
[ -x /usr/bin/chromium ] || apt_needed+=(chromium)
if [ "${#apt_needed[@]}" -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "setup: apt-get install ${apt_needed[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_needed[@]}" >/dev/null
fi

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  if command -v python3.11 >/dev/null 2>&1; then python_bin=python3.11; else python_bin=python3; fi
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv

stamp_src=$(cat requirements/ci.txt qwen-vl-utils/pyproject.toml qwen-vl-finetune/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp_src" ]; then
  echo "setup: installing Python packages into .venv (first run takes several minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements/ci.txt
  # (flock: scripts/setup_vllm.sh may be building the same editable packages at the same time, see scripts/test.sh)
  flock "${TMPDIR:-/tmp}/qwenvl-editable-install.lock" \
    .venv/bin/python -m pip install -q -e "./qwen-vl-utils[decord,torchcodec]" -e "./qwen-vl-finetune[train,demo,eval]"
  echo "$stamp_src" > .venv/.setup-stamp
fi
