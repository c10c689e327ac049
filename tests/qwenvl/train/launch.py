"""How the training tests start train_qwen: one process, or torchrun on 127.0.0.1 with a free port (gloo, CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_training(flags: list[str], nproc: int = 1, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m qwenvl.train.train_qwen FLAGS`` (or under ``torchrun --nproc_per_node NPROC``), one thread per
    process, DeepSpeed on its CPU accelerator; returns the finished process (output captured)."""
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    if nproc == 1:
        cmd = [sys.executable, "-m", "qwenvl.train.train_qwen", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", "-m", "qwenvl.train.train_qwen", *flags]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
