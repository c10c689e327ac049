"""qwenvl dpo / grpo under torchrun (2 CPU ranks, gloo) and resumed after SIGKILL during rollouts or a save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qwenvl.train.launch import free_port
from tests.qwenvl.train.test_dpo import write_pairs
from tests.qwenvl.train.test_grpo import USER_REWARDS, write_prompts


def _run(
    tool: str,
    flags: list[str],
    nproc: int = 1,
    fault: str | None = None,
    pythonpath: Path | None = None,
    env: dict[str, str] | None = None,
):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", **(env or {}))
    env.pop("QWENVL_FAULT_INJECT", None)
    if fault:
        env["QWENVL_FAULT_INJECT"] = fault
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    module = f"qwenvl.train.{tool}"
    if nproc == 1:
        cmd = [sys.executable, "-m", module, *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", "-m", module, *flags]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _flags(model: Path, data: Path, out: Path, per_device: int, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--dataset_use", str(data), "--output_dir", str(out), "--use_cpu", "True",
        "--report_to", "none", "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-2",
        "--model_max_length", "2048", "--logging_steps", "1", "--seed", "3", "--dataloader_num_workers", "0",
        "--video_max_pixels", str(64 * 64), "--video_min_pixels", str(32 * 32), "--video_max_frames", "4",
        "--lora_enable", "True", "--lora_r", "8", *extra,
    ]  # fmt: skip


def _losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


@pytest.mark.slow
@pytest.mark.distributed
def test_dpo_two_ranks_match_one_process(tiny_checkpoints, tmp_path):
    """An image pair on one rank and a video pair on the other (the dummy media keep both ranks in step): the
    losses equal one process training both pairs per step."""
    data = write_pairs(tmp_path)
    model = tiny_checkpoints["qwen3_vl"]
    single = _run("dpo", _flags(model, data, tmp_path / "one", 2, "--max_steps", "2"))
    assert single.returncode == 0, single.stderr[-3000:]
    double = _run("dpo", _flags(model, data, tmp_path / "two", 1, "--max_steps", "2"), nproc=2)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in two] == [1, 2] and [x for _, x in two] == pytest.approx([x for _, x in one], abs=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
def test_grpo_two_ranks_under_zero3(tiny_checkpoints, tmp_path):
    """GRPO with DeepSpeed ZeRO-3 on 2 ranks (an image prompt on one, a video prompt on the other): rollouts
    generate with weights partitioned across ranks (generate keeps every rank stepping until all are done), two
    passes over each rollout batch, and the run reaches max_steps and saves the adapters."""
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    out = tmp_path / "out"
    zero3 = Path(__file__).resolve().parents[3] / "qwen-vl-finetune" / "scripts" / "zero3.json"
    flags = _flags(tiny_checkpoints["qwen3_vl"], write_prompts(tmp_path), out, 1, "--max_steps", "2", "--deepspeed",
                   str(zero3), "--rewards", "my_rewards:vowels", "--num_generations", "2", "--max_completion_length",
                   "4", "--num_iterations", "2")  # fmt: skip
    run = _run("grpo", flags, nproc=2, pythonpath=tmp_path, env={"DS_ACCELERATOR": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert [s for s, _ in _losses(out)] == [1, 2]
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {1} and len(rows) == 2  # rank 0's prompt, sampled once, trained twice
    assert (out / "adapter_model.safetensors").is_file() and (out / "grpo_summary.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    # (a DPO save is the SFT checkpoint machinery, which test_crash_resume kills at every save stage)
    "tool, fault",
    [("grpo", "rollout@3"), ("grpo", "after_model@2")],
)
def test_sigkill_during_rollouts_or_a_save_resumes_to_max_steps(tiny_checkpoints, tmp_path, tool, fault):
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    data = write_prompts(tmp_path) if tool == "grpo" else write_pairs(tmp_path)
    extra = ["--rewards", "my_rewards:vowels", "--num_generations", "2", "--max_completion_length", "4"]
    out = tmp_path / "out"
    flags = _flags(tiny_checkpoints["qwen3_vl"], data, out, 1, "--max_steps", "4", "--save_steps", "1",
                   *(extra if tool == "grpo" else []))  # fmt: skip
    killed = _run(tool, flags, fault=fault, pythonpath=tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (out / "checkpoint-4").exists()
    resumed = _run(tool, flags, pythonpath=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    newest = "checkpoint-2" if fault.startswith("rollout") else "checkpoint-1"
    assert "resuming from it" in resumed.stderr and newest in resumed.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [s for s, _ in _losses(out)] == [1, 2, 3, 4]
    assert (out / f"{tool}_summary.json").is_file()
