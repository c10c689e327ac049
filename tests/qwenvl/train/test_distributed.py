"""torchrun with 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-3 and LoRA under DDP give the losses of one process
with the same global batch. The data mixes text-only and image samples, so ranks often disagree on whether a
batch has images: the vision tower must still run on both ranks (no hang, no unused-parameter error)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText


pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SCRIPTS = Path(__file__).resolve().parents[3] / "qwen-vl-finetune" / "scripts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(model: Path, out: Path, per_device: int, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--dataset_use", "demo_images,demo_messages", "--output_dir", str(out),
        "--use_cpu", "True", "--report_to", "none", "--per_device_train_batch_size", str(per_device),
        "--learning_rate", "1e-3", "--model_max_length", "1024", "--logging_steps", "1", "--max_steps", "4",
        "--seed", "5", "--dataloader_num_workers", "0", "--save_strategy", "no", "--tune_mm_vision", "True",
        "--ddp_find_unused_parameters", "False", *extra,
    ]  # fmt: skip


def _run(nproc: int, flags: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    if nproc == 1:
        cmd = [sys.executable, "-m", "qwenvl.train.train_qwen", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "-m", "qwenvl.train.train_qwen", *flags]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def single(tiny_checkpoints, tmp_path_factory):
    """One process, global batch 2, full fine-tune and LoRA."""
    root = tmp_path_factory.mktemp("single")
    model = tiny_checkpoints["qwen2_5_vl"]
    _run(1, _flags(model, root / "full", 2))
    _run(1, _flags(model, root / "lora", 2, "--lora_enable", "True", "--lora_r", "4", "--tune_mm_vision", "False"))
    return root


def test_ddp_matches_single_process(tiny_checkpoints, single, tmp_path):
    _run(2, _flags(tiny_checkpoints["qwen2_5_vl"], tmp_path, 1))
    expected, got = _losses(single / "full"), _losses(tmp_path)
    assert len(got) == 4
    assert got == pytest.approx(expected, abs=1e-4)


def test_lora_under_ddp_matches_single_process(tiny_checkpoints, single, tmp_path):
    _run(2, _flags(tiny_checkpoints["qwen2_5_vl"], tmp_path, 1, "--lora_enable", "True", "--lora_r", "4",
                   "--tune_mm_vision", "False"))  # fmt: skip
    assert _losses(tmp_path) == pytest.approx(_losses(single / "lora"), abs=1e-4)
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_zero3_matches_single_process_and_saves_a_full_model(tiny_checkpoints, single, tmp_path):
    model = tiny_checkpoints["qwen2_5_vl"]
    _run(2, _flags(model, tmp_path, 1, "--deepspeed", str(SCRIPTS / "zero3.json")))
    assert _losses(tmp_path) == pytest.approx(_losses(single / "full"), abs=1e-4)
    # The gathered ZeRO-3 save is a complete model: it loads with no missing or unexpected weights.
    saved, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    base = AutoModelForImageTextToText.from_pretrained(model)
    trained = dict(saved.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, trained[n])]
    assert any("visual" in n for n in changed) and any("language_model" in n for n in changed)
