"""Two "nodes" on this host: two torchrun processes with --nnodes 2 and a c10d rendezvous on 127.0.0.1 (gloo,
ZeRO-3, packed images and videos). The run gives the loss sequence of a 2-process single-node run, trains every
record once per epoch across the nodes, writes one checkpoint that loads alone, and when one node dies the other
exits with a clear message within the timeout; rerunning both nodes resumes from the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwenvl.train.checkpoints import FAULT_ENV, missing_parts


pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ZERO3 = Path(__file__).resolve().parents[3] / "qwen-vl-finetune" / "scripts" / "zero3.json"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--dataset_use", "demo_images,demo_video", "--output_dir", str(out),
        "--use_cpu", "True", "--report_to", "none", "--per_device_train_batch_size", "1", "--learning_rate", "1e-3",
        "--model_max_length", "1024", "--data_packing", "True", "--max_packed_tokens", "1024",
        "--logging_steps", "1", "--seed", "11", "--dataloader_num_workers", "0", "--max_steps", "5",
        "--deepspeed", str(ZERO3), "--ddp_find_unused_parameters", "False", "--ddp_timeout", "60", *extra,
    ]  # fmt: skip


def _env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return env


def _two_nodes(flags: list[str], fault_on_node1: str | None = None) -> list[subprocess.CompletedProcess]:
    """Start node 0 and node 1 (one process each) against one c10d rendezvous; wait for both."""
    endpoint = f"127.0.0.1:{_port()}"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
               "--rdzv_id", f"job-{endpoint}", "--max_restarts", "0", "-m", "qwenvl.train.train_qwen", *flags]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=_env(fault_on_node1 if node == 1 else None), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def reference(tiny_checkpoints, tmp_path_factory) -> Path:
    """The same job as one node with 2 processes."""
    out = tmp_path_factory.mktemp("single-node")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", f"--master_port={_port()}",
           "-m", "qwenvl.train.train_qwen", *_flags(tiny_checkpoints["qwen2_5_vl"], out, "--save_strategy", "no")]  # fmt: skip
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_two_nodes_match_one_node_and_cover_every_record(tiny_checkpoints, reference, tmp_path):
    results = _two_nodes(_flags(tiny_checkpoints["qwen2_5_vl"], tmp_path, "--save_strategy", "no"))
    for r in results:
        assert r.returncode == 0, r.stderr[-4000:]
    expected, got = _losses(reference), _losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    # 8 records in 2 packs, one pack per node per step: 5 steps = 5 epochs, each record trained 5 times, none more
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["usable_records"] == 8 and report["trained_counts_histogram"] == {"5": 8}


def test_a_dead_node_stops_the_other_and_both_resume(tiny_checkpoints, reference, tmp_path):
    model = tiny_checkpoints["qwen2_5_vl"]
    flags = _flags(model, tmp_path, "--save_steps", "3")
    started = time.monotonic()
    first = _two_nodes(flags, fault_on_node1="step_end@4:*")  # node 1's process dies after step 4's update
    elapsed = time.monotonic() - started
    assert first[1].returncode != 0 and first[0].returncode != 0
    assert "lost contact with another rank" in first[0].stderr, first[0].stderr[-3000:]
    assert "Rerun the same command on every node" in first[0].stderr
    assert elapsed < 240, f"the surviving node took {elapsed:.0f} s to stop"  # not the default 30 min timeout
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-3"]  # one checkpoint for the job, not one per node
    assert missing_parts(checkpoints[0]) == []
    from transformers import AutoModelForImageTextToText

    _, info = AutoModelForImageTextToText.from_pretrained(checkpoints[0], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the gathered ZeRO-3 weights load alone

    second = _two_nodes(flags)
    for r in second:
        assert r.returncode == 0, r.stderr[-4000:]
    assert any("resuming from" in r.stderr for r in second)
    expected, got = _losses(reference), _losses(tmp_path)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["trained_counts_histogram"] == {"2": 8}  # steps 4 and 5 after the resume
