"""examples/*.yaml: every recipe parses, and each one runs for 2 steps on CPU with a tiny checkpoint of its family
(the DeepSpeed ones under torchrun with ``--no-python qwenvl train``, as the recipes say to run them)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples").glob("*.yaml"))
# Longest prefix first: qwen3_5_moe_lora is a Qwen3.5-MoE recipe, not a Qwen3.5 one.
FAMILY = {"qwen2vl": "qwen2_vl", "qwen2_5vl": "qwen2_5_vl", "qwen3vl_moe": "qwen3_vl_moe", "qwen3vl": "qwen3_vl",
          "qwen3_5_moe": "qwen3_5_moe", "qwen3_5": "qwen3_5"}  # fmt: skip


def _family(recipe: Path) -> str:
    return next(family for prefix, family in FAMILY.items() if recipe.stem.startswith(prefix + "_"))


# What a recipe run in CI changes, and why; every other key runs as shipped (bf16, batch sizes, workers, DeepSpeed
# config...). On a machine without a GPU the training entry point itself switches to the CPU (use_cpu, float32).
CHANGED = {
    "model_name_or_path": "the tiny checkpoint of the recipe's family (tests are offline)",
    "output_dir": "a temporary folder",
    "max_steps": "2 steps, to keep CI short",
}


def _changes(model: Path, out: Path) -> list[str]:
    values = {"model_name_or_path": str(model), "output_dir": str(out), "max_steps": "2"}
    assert values.keys() == CHANGED.keys()
    return [token for key, value in values.items() for token in (f"--{key}", value)]


def test_there_is_a_recipe_for_each_kind():
    names = {r.stem for r in RECIPES}
    for prefix in FAMILY:
        assert {f"{prefix}_full", f"{prefix}_lora", f"{prefix}_lora_merger"} <= names
    assert {"qwen3vl_zero2", "qwen3vl_zero3", "qwen3vl_zero3_offload", "qwen3vl_packing", "qwen3vl_video"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.stem)
def test_recipe_parses_with_its_values(recipe, tmp_path):
    from qwenvl.train.arguments import parse_args

    values = yaml.safe_load(recipe.read_text())
    model_args, data_args, args = parse_args([str(recipe), "--output_dir", str(tmp_path)])
    assert model_args.model_name_or_path == values["model_name_or_path"]
    assert args.learning_rate == pytest.approx(values["learning_rate"])
    assert args.lora_enable == values.get("lora_enable", False)
    assert data_args.data_packing == values.get("data_packing", False)
    if "deepspeed" in values:
        assert Path(args.deepspeed).is_file()  # resolved beside the recipe, from any working directory


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in RECIPES if "deepspeed" not in r.read_text()], ids=lambda r: r.stem)
def test_recipe_runs_two_steps_on_cpu(recipe, tiny_checkpoints, tmp_path):
    from qwenvl.train.train_qwen import train

    overrides = _changes(tiny_checkpoints[_family(recipe)], tmp_path)
    metrics = train([str(recipe), *overrides])
    assert metrics["train_runtime"] > 0
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert all(h["loss"] == h["loss"] for h in state["log_history"] if "loss" in h)  # finite, not NaN
    saved = "adapter_model.safetensors" if "lora" in recipe.stem else "model.safetensors"
    assert (tmp_path / saved).is_file()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("recipe", [r for r in RECIPES if "deepspeed" in r.read_text()], ids=lambda r: r.stem)
def test_deepspeed_recipe_runs_under_torchrun(recipe, tiny_checkpoints, tmp_path):
    import torch

    # Two processes: two GPUs where there are, else two CPU processes (gloo).
    nproc = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2
    exe = Path(sys.executable).with_name("qwenvl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           "--no-python", str(exe), "train", str(recipe), *_changes(tiny_checkpoints[_family(recipe)], tmp_path)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    if torch.cuda.is_available():
        env.pop("DS_ACCELERATOR")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.slow
def test_deepspeed_recipe_runs_in_one_process_without_a_launcher(tiny_checkpoints, tmp_path):
    """``qwenvl train examples/qwen3vl_zero2.yaml``, as the recipe says for one GPU: no torchrun, so DeepSpeed must
    not go looking for MPI (mpi4py)."""
    recipe = ROOT / "examples" / "qwen3vl_zero2.yaml"
    cmd = [sys.executable, "-m", "qwenvl.cli", "train", str(recipe), *_changes(tiny_checkpoints["qwen3_vl"], tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "mpi4py" not in result.stderr
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 2
    import torch

    if not torch.cuda.is_available():
        assert "no GPU found: training on the CPU in float32 (--use_cpu True, --bf16 False)" in result.stderr
