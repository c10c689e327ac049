"""A real ``transformers serve`` on 127.0.0.1, started and stopped around a block (benchmarks and tests share it)."""

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
from typing import Iterator


@contextlib.contextmanager
def transformers_serve(model: str, timeout: float = 180.0) -> Iterator[str]:
    """Serve ``model`` on a free port of 127.0.0.1 (CPU, float32, one torch thread) and yield its base URL
    (``http://127.0.0.1:PORT/v1``) once ``/health`` answers; raise ``RuntimeError`` with the end of the server's log
    when the CLI is missing, the server exits or it is not ready within ``timeout`` seconds."""
    exe = shutil.which("transformers", path=os.path.dirname(sys.executable))
    if exe is None:
        raise RuntimeError("the transformers CLI is not installed beside this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryFile() as log:  # a pipe would fill up and stall a long-lived server
        proc = subprocess.Popen(
            [exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
            stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, OMP_NUM_THREADS="1"),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    state = "exited" if proc.poll() is not None else f"was not ready in {timeout:.0f} s"
                    raise RuntimeError(f"transformers serve {state}: {tail}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
