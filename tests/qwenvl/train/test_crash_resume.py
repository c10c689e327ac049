"""Crash safety: training SIGKILLed at 8 points (between steps and at every stage of a checkpoint save), rerun
with the same command each time, ends with the uninterrupted run's global step and per-step losses (data order
included); under torchrun with ZeRO-2 too. Partial checkpoints are named and skipped, never resumed from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qwenvl.train.checkpoints import FAULT_ENV, find_resume_checkpoint, missing_parts
from tests.qwenvl.train.launch import run_training


pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).resolve().parents[3] / "qwen-vl-finetune" / "scripts"


def _flags(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--dataset_use", "demo_images,demo_messages", "--output_dir", str(out),
        "--use_cpu", "True", "--report_to", "none", "--per_device_train_batch_size", "1", "--learning_rate", "1e-3",
        "--model_max_length", "1024", "--logging_steps", "1", "--seed", "7", "--dataloader_num_workers", "0",
        "--max_steps", "8", "--save_steps", "1", "--save_total_limit", "2", "--tune_mm_vision", "True", *extra,
    ]  # fmt: skip


def _run(flags: list[str], fault: str | None = None, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return run_training(flags, nproc, env)


def _history(out: Path) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h["step"] for h in history if "loss" in h]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {h["step"]: h["loss"] for h in history if "loss" in h}


# Each kill lands at a later step than the newest checkpoint the previous kill left, so every run makes progress.
KILLS = [
    "step_end@2",  # after the optimizer step, before its checkpoint
    "save_begin@3",
    "after_model@4",  # weights written, no optimizer / trainer_state yet
    "after_optimizer@5",
    "after_rng@5",  # the same step again: the leftover staged folder is replaced
    "before_publish@6",  # everything written, not yet renamed
    "after_publish@6",  # renamed, older checkpoints not yet rotated out
    "after_rotate@7",
]


def test_sigkill_at_eight_points_resumes_to_the_uninterrupted_result(tiny_checkpoints, tmp_path):
    model = tiny_checkpoints["qwen3_vl"]
    reference = tmp_path / "reference"
    done = _run(_flags(model, reference))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _history(reference)
    assert sorted(expected) == list(range(1, 9))

    out = tmp_path / "crashed"
    for fault in KILLS:
        result = _run(_flags(model, out), fault)
        assert result.returncode == -9, f"{fault}: the run was not killed\n{result.stderr[-2000:]}"
        newest = find_resume_checkpoint(out)
        # Every visible checkpoint is complete: a crash never leaves a half-written one under its final name.
        for folder in out.glob("checkpoint-*"):
            assert missing_parts(folder) == [], f"after {fault}: {folder} is incomplete"
        assert newest is None or (newest / "qwenvl_preprocessing.json").is_file()
    assert (out / ".partial").is_dir()  # what the before_publish kill left
    final = _run(_flags(model, out))
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming from" in final.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8
    got = _history(out)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), f"step {step}"
    # save_total_limit 2 still holds after the crash in the middle of a rotation.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-7", "checkpoint-8"]


def test_incomplete_checkpoints_are_named_and_skipped(tmp_path, caplog):
    good = tmp_path / "checkpoint-2"
    good.mkdir()
    for name in ("model.safetensors", "trainer_state.json", "qwenvl_preprocessing.json", "optimizer.pt",
                 "scheduler.pt", "rng_state.pth"):  # fmt: skip
        (good / name).write_text("x")
    shutil.copytree(good, tmp_path / "checkpoint-3")
    (tmp_path / "checkpoint-3" / "trainer_state.json").unlink()  # as a crash of another tool would leave it
    (tmp_path / "checkpoint-4").mkdir()  # empty
    (tmp_path / ".partial" / "checkpoint-5").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(tmp_path) == good
    text = caplog.text
    assert "checkpoint-4: incomplete, lacks model weights" in text
    assert "checkpoint-3: incomplete, lacks trainer_state.json" in text
    assert ".partial/checkpoint-5" in text and "interrupted" in text
    assert (tmp_path / "checkpoint-4").is_dir() and (tmp_path / ".partial" / "checkpoint-5").is_dir()  # kept


@pytest.mark.distributed
def test_sigkill_under_zero2_resumes_to_the_same_losses(tiny_checkpoints, tmp_path):
    model = tiny_checkpoints["qwen2_5_vl"]
    extra = ["--deepspeed", str(SCRIPTS / "zero2.json"), "--max_steps", "4", "--ddp_find_unused_parameters", "False"]
    reference = tmp_path / "reference"
    done = _run(_flags(model, reference, *extra), nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "crashed"
    killed = _run(_flags(model, out, *extra), "after_optimizer@3:1", nproc=2)  # rank 1, inside the ZeRO save
    assert killed.returncode != 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    final = _run(_flags(model, out, *extra), nproc=2)
    assert final.returncode == 0, final.stderr[-3000:]
    expected, got = _history(reference), _history(out)
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), f"step {step}"
