"""Upstream's six ``qwen-vl-finetune/scripts/sft*.sh`` command lines (spec: upstream.md §2.12) work with their own
flags: each parses, and one per family and DeepSpeed stage trains 2 steps under torchrun (CPU). Only what
the test machine requires is swapped (:data:`SWAPPED`): the model for the tiny checkpoint of its family, the
placeholder datasets, paths, and ``--report_to wandb`` where wandb is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwenvl.train.arguments import parse_args
from tests.qwenvl.train.launch import free_port


FINETUNE = Path(__file__).resolve().parents[3] / "qwen-vl-finetune"

# The flags every script passes (besides the per-script ones below).
COMMON = [
    "--dataset_use", "public_dataset1,public_dataset2", "--output_dir", "./output", "--data_flatten", "True",
    "--tune_mm_vision", "False", "--tune_mm_mlp", "True", "--tune_mm_llm", "True", "--bf16", "--num_train_epochs",
    "0.5", "--max_pixels", "50176", "--min_pixels", "784", "--eval_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "1000", "--save_total_limit", "1", "--weight_decay", "0", "--warmup_ratio", "0.03",
    "--max_grad_norm", "1", "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--model_max_length", "8192",
    "--gradient_checkpointing", "True", "--dataloader_num_workers", "4", "--report_to", "wandb",
]  # fmt: skip

# script: (model, family of its tiny stand-in, deepspeed config, lr, batch size, grad accumulation, run name, extra)
SCRIPTS = {
    "sft.sh": ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "zero3.json", "2e-7", 4, 4, "qwen2vl-baseline", []),
    "sft_7b.sh": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "zero3.json", "2e-7", 4, 4, "qwen2vl-baseline", []),
    "sft_32b.sh": ("Qwen/Qwen2.5-VL-32B-Instruct", "qwen2_5_vl", "zero3.json", "2e-7", 2, 8, "qwen2vl-baseline", []),
    "sft_qwen3_4b.sh": ("Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl", "zero3.json", "1e-5", 4, 4, "qwen3vl", []),
    "sft_30a3b.sh": ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_moe", "zero2.json", "1e-5", 1, 4, "qwen3vl-moe", []),
    "sft_30a3b_lora.sh": ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_moe", "zero2.json", "1e-5", 1, 4,
                          "qwen3vl-moe-lora", ["--lora_enable", "True"]),
}  # fmt: skip

SWAPPED = {
    "model_name_or_path": "the tiny checkpoint of the script's family (tests are offline)",
    "dataset_use": "upstream's placeholders public_dataset1,public_dataset2 -> the bundled demo_images",
    "output_dir": "a temporary folder",
    "deepspeed": "upstream's ./scripts/<config> -> the same file of this repository, by absolute path",
    "report_to": "wandb -> none, only where wandb is not installed",
}


def upstream_command(script: str) -> list[str]:
    """The script's train_qwen.py flags, as upstream wrote them."""
    model, _, deepspeed, lr, batch, accumulation, run_name, extra = SCRIPTS[script]
    return [
        "--model_name_or_path", model, *COMMON, "--per_device_train_batch_size", str(batch),
        "--per_device_eval_batch_size", str(batch * 2), "--gradient_accumulation_steps", str(accumulation),
        "--learning_rate", lr, "--run_name", run_name, "--deepspeed", f"./scripts/{deepspeed}", *extra,
    ]  # fmt: skip


def swapped(command: list[str], model: Path, out: Path) -> list[str]:
    """``command`` with the values of :data:`SWAPPED` replaced (and nothing else)."""
    values = {
        "model_name_or_path": str(model), "dataset_use": "demo_images", "output_dir": str(out),
        "deepspeed": str(FINETUNE / command[command.index("--deepspeed") + 1]),
        "report_to": "wandb" if importlib.util.find_spec("wandb") else "none",
    }  # fmt: skip
    assert values.keys() == SWAPPED.keys()
    result = list(command)
    for key, value in values.items():
        result[result.index(f"--{key}") + 1] = value
    return result


@pytest.mark.parametrize("script", SCRIPTS)
def test_upstream_script_parses_with_its_flags(script, tiny_checkpoints, tmp_path):
    model, family, deepspeed, lr, batch, accumulation, run_name, extra = SCRIPTS[script]
    model_args, data_args, args = parse_args(swapped(upstream_command(script), tiny_checkpoints[family], tmp_path))
    assert args.learning_rate == float(lr) and args.per_device_train_batch_size == batch
    assert args.gradient_accumulation_steps == accumulation and args.run_name == run_name
    assert Path(args.deepspeed).name == deepspeed and data_args.data_flatten
    assert args.num_train_epochs == 0.5 and args.get_warmup_steps(100) == 3
    assert (model_args.tune_mm_vision, model_args.tune_mm_mlp) == (False, True)
    # Under LoRA the LLM trains through its adapters (upstream ignores --tune_mm_llm there).
    assert args.lora_enable == bool(extra) and model_args.tune_mm_llm == (not extra)


# Trained: one per family and DeepSpeed stage. Once the model is swapped, sft_7b.sh is sft.sh, and sft_32b.sh /
# sft_30a3b.sh differ from sft.sh / sft_30a3b_lora.sh only in batch numbers and LoRA (each is parsed above).
TRAINED = ["sft.sh", "sft_qwen3_4b.sh", "sft_30a3b_lora.sh"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("script", TRAINED)
def test_upstream_script_trains_two_steps_under_torchrun(script, tiny_checkpoints, tmp_path):
    family = SCRIPTS[script][1]
    flags = swapped(upstream_command(script), tiny_checkpoints[family], tmp_path) + ["--max_steps", "2"]
    # NPROC_PER_NODE is never set by upstream's scripts; one process here.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
           "-m", "qwenvl.train.train_qwen", *flags]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=FINETUNE)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    saved = "adapter_model.safetensors" if "lora" in script else "model.safetensors"
    assert (tmp_path / saved).is_file()
