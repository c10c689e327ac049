"""Servers on 127.0.0.1 started and stopped around a block (benchmarks and tests share them): any command with a
``/health`` endpoint (:func:`serve`), ``transformers serve`` (:func:`transformers_serve`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import IO, Iterator


@contextlib.contextmanager
def serve(command: list[str], port: int, name: str, env: dict[str, str] | None = None, timeout: float = 180.0,
          log: IO[bytes] | None = None) -> Iterator[str]:  # fmt: skip
    """Run ``command`` (a server listening on 127.0.0.1:``port``) and yield its root URL (``http://127.0.0.1:PORT``)
    once ``/health`` answers; stop it after. Its output goes to ``log`` (a temporary file when None: a pipe would
    fill up and stall a long-lived server). Raises ``RuntimeError`` naming ``name`` with the end of the log when the
    server exits or is not ready within ``timeout`` seconds."""
    with contextlib.ExitStack() as stack:
        out = log if log is not None else stack.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        root = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.flush()
                    out.seek(0)
                    tail = out.read().decode(errors="replace")[-3000:]
                    state = "exited" if proc.poll() is not None else f"was not ready in {timeout:.0f} s"
                    raise RuntimeError(f"{name} {state}: {tail}")
                try:
                    with urllib.request.urlopen(f"{root}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield root
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def free_port() -> int:
    """A free TCP port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model: str, timeout: float = 180.0) -> Iterator[str]:
    """Serve ``model`` with ``transformers serve`` on a free port of 127.0.0.1 (CPU, float32, one torch thread) and
    yield its base URL (``http://127.0.0.1:PORT/v1``); see :func:`serve`."""
    exe = shutil.which("transformers", path=os.path.dirname(sys.executable))
    if exe is None:
        raise RuntimeError("the transformers CLI is not installed beside this Python")
    port = free_port()
    command = [exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    with serve(command, port, "transformers serve", dict(os.environ, OMP_NUM_THREADS="1"), timeout) as root:
        yield f"{root}/v1"
