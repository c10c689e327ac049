"""The one way to run a model: ``hf``, ``vllm`` and ``openai`` backends behind one protocol
(:class:`qwenvl.inference.base.Backend`), used by the demo, the evaluations and the quick-start job.

This module imports nothing heavy; :func:`load_backend` imports the chosen backend only.
"""

from __future__ import annotations

from typing import Any

from qwenvl.cli import UserError
from qwenvl.inference.config import BackendConfig


BACKENDS = ("hf", "vllm", "openai")


def load_backend(kind: str | BackendConfig, checkpoint: str | None = None, **options: Any) -> Any:
    """A loaded backend of ``kind``: a :class:`BackendConfig` (then ``options`` are ``budget`` and ``seed``), or a
    backend name with the checkpoint and that backend's options:

    * ``hf``: ``checkpoint`` plus ``dtype``, ``attn_implementation``, ``device`` (auto/cpu/cuda), ``budget``.
    * ``vllm``: ``checkpoint`` plus vLLM engine options (``tensor_parallel_size``, ``gpu_memory_utilization``,
      ``max_model_len``, ``dtype``, ``seed``, ``limit_images``, ``enforce_eager``), ``budget``.
    * ``openai``: ``api_base``, ``model``, ``api_key``, ``family``, ``concurrency``, ``video_frames``, ``budget``;
      ``checkpoint`` is an optional local copy of the served checkpoint.
    """
    if isinstance(kind, BackendConfig):
        return load_backend(kind.backend, kind.model_path, **kind.options(**options))
    if kind == "hf":
        from qwenvl.inference.hf import HFBackend

        return HFBackend(checkpoint, **options)
    if kind == "vllm":
        from qwenvl.inference.vllm_backend import VLLMBackend

        return VLLMBackend(checkpoint, **options)
    if kind == "openai":
        from qwenvl.inference.openai_backend import OpenAIBackend

        return OpenAIBackend(checkpoint=checkpoint, **options)
    raise UserError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
