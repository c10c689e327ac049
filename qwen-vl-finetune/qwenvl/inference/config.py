"""How to run a model, as one dataclass: :class:`BackendConfig` owns its flags (``add_arguments``, ``from_args``)
and is the only thing :func:`qwenvl.inference.load_backend` needs, so every benchmark (and the demo, which keeps
its historical flag names as aliases: ``-c`` / ``--checkpoint-path``, ``--api-base``, ``--cpu-only``,
``--flash-attn2``) builds a backend the same way with the same flag names::

    parser = StrictParser()
    BackendConfig.add_arguments(parser)
    config = BackendConfig.from_args(parser.parse_args())
    backend = load_backend(config, budget=budget, seed=42)

Importing this module imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal

from qwenvl.cli import UserError


BackendKind = Literal["hf", "vllm", "openai"]


def _flag(help: str, *names: str, **kwargs: Any) -> Any:
    """A field whose flag is ``--field-name`` plus ``names`` (aliases), documented by ``help``."""
    default = kwargs.pop("default")
    return field(default=default, metadata={"help": help, "aliases": names, **kwargs})


@dataclass
class BackendConfig:
    """The backend, the checkpoint or server, and each backend's engine options."""

    backend: BackendKind = _flag(
        "hf (transformers) or vllm in this process, or openai: an OpenAI-compatible server",
        default="hf",
        choices=("hf", "vllm", "openai"),
    )
    model_path: str | None = _flag(
        "checkpoint, a folder or hub id (hf, vllm); openai: an optional local copy of the served one",
        "--checkpoint-path",
        "-c",
        default=None,
    )
    base_url: str | None = _flag(
        "openai backend: the server, e.g. http://127.0.0.1:8000/v1", "--api-base", default=None
    )
    model: str | None = _flag("openai backend: the served model's name (default: the only one)", default=None)
    api_key_env: str = _flag("openai backend: environment variable of the key", default="OPENAI_API_KEY")
    api_key: str | None = _flag("openai backend: the key itself (default: the value of --api-key-env)", default=None)
    family: str | None = _flag(
        "openai backend: the served model's family when its config cannot be read", default=None
    )
    video_frames: str = _flag(
        "openai backend: send each video as its file (the server samples frames) or as the frames qwen_vl_utils "
        "samples under the pixel budget, with their timestamps (sampled: a vLLM server started with "
        "--trust-request-mm-kwargs)",
        default="file",
        choices=("file", "sampled"),
    )
    concurrency: int = _flag(
        "requests in flight (openai backend; in the demo: answers generated at once, any backend)", default=8, type=int
    )
    tensor_parallel_size: int = _flag("vllm backend: GPUs per engine", default=1, type=int)
    gpu_memory_utilization: float = _flag("vllm backend: share of GPU memory to use", default=0.9, type=float)
    max_model_len: int | None = _flag("vllm backend (default: the model's)", default=None, type=int)
    max_images_per_prompt: int = _flag("vllm backend: images per prompt", default=10, type=int)
    enforce_eager: bool = _flag("vllm backend: no CUDA graphs / compilation", default=False, action="store_true")
    dtype: str = _flag(
        "hf / vllm weights (auto: bfloat16 on a bf16 GPU, else float32)",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
    )
    attn_implementation: str = _flag(
        "hf backend (auto: flash_attention_2 when installed on a GPU, else sdpa)",
        default="auto",
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
    )
    device: str = _flag("auto (the GPUs when there are), cpu or cuda; vllm on cpu: eager, float32 unless --dtype",
                        default="auto",
                        choices=("auto", "cpu", "cuda"))  # fmt: skip

    def __post_init__(self) -> None:
        if self.backend in ("hf", "vllm") and not self.model_path:
            raise UserError(f"--backend {self.backend} needs --model-path (a checkpoint folder or hub id)")
        if self.backend in ("hf", "vllm"):
            from qwenvl.model.loader import check_checkpoint_path

            check_checkpoint_path(self.model_path)
        if self.backend == "openai" and not self.base_url:
            raise UserError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1 of `vllm serve`)")

    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser, demo_aliases: bool = True, defaults: dict[str, Any] | None = None
    ) -> None:
        """The flags of every field (``--field-name``), with the demo's names as aliases when ``demo_aliases``;
        ``defaults`` replaces fields' defaults (the demo's: a hub checkpoint, a local server, one answer at once)."""
        defaults = defaults or {}
        unknown = set(defaults) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"BackendConfig has no field(s) {sorted(unknown)}")
        for f in fields(cls):
            meta = dict(f.metadata)
            names = [f"--{f.name.replace('_', '-')}", *(meta.pop("aliases") if demo_aliases else ())]
            default = defaults.get(f.name, f.default if f.default is not MISSING else None)
            if f.name in defaults:
                meta["help"] += f" (default {default})"
            parser.add_argument(*names, dest=f.name, default=default, **meta)
        if demo_aliases:  # the demo's switches, as values of the fields above
            parser.add_argument("--cpu-only", dest="device", action="store_const", const="cpu",
                                help="the demo's name for --device cpu")  # fmt: skip
            parser.add_argument("--flash-attn2", dest="attn_implementation", action="store_const",
                                const="flash_attention_2",
                                help="the demo's name for --attn-implementation flash_attention_2")  # fmt: skip

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BackendConfig:
        """The config of parsed flags (checked: a backend without its checkpoint or server is a UserError)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @staticmethod
    def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
        """The A/B flags: a second backend answering beside the first (see :meth:`compare_from_args`)."""
        parser.add_argument("--compare-checkpoint", default=None,
                            help="A/B mode: a second checkpoint answering beside the first (e.g. base vs fine-tuned)")  # fmt: skip
        parser.add_argument("--compare-backend", default=None, choices=("hf", "vllm", "openai"),
                            help="A/B mode: the second one's backend (default --backend); alone: two backends of "
                            "one checkpoint")  # fmt: skip

    def compared(self, checkpoint: str | None, backend: str | None) -> BackendConfig | None:
        """The A/B mode's second configuration: this one with another checkpoint and/or backend (for an openai
        server, ``checkpoint`` is also the served model's name), or None when neither is given."""
        if checkpoint is None and backend is None:
            return None
        changes: dict[str, Any] = {"backend": backend or self.backend, "model_path": checkpoint or self.model_path}
        if checkpoint is not None:
            changes["model"] = checkpoint
        return replace(self, **changes)

    def options(self, budget: Any = None, seed: int = 42) -> dict[str, Any]:
        """The keyword arguments of this backend's class (``--device cpu`` runs vLLM eagerly, in float32 unless
        ``--dtype`` says otherwise, as the hf backend does on a CPU)."""
        if self.backend == "openai":
            key = self.api_key if self.api_key is not None else os.environ.get(self.api_key_env, "EMPTY")
            return {"api_base": self.base_url, "model": self.model, "family": self.family, "budget": budget,
                    "api_key": key, "concurrency": self.concurrency, "video_frames": self.video_frames}  # fmt: skip
        if self.backend == "vllm":
            cpu = self.device == "cpu"
            return {"budget": budget, "tensor_parallel_size": self.tensor_parallel_size,
                    "gpu_memory_utilization": self.gpu_memory_utilization, "max_model_len": self.max_model_len,
                    "dtype": "float32" if cpu and self.dtype == "auto" else self.dtype, "seed": seed,
                    "limit_images": self.max_images_per_prompt, "enforce_eager": self.enforce_eager or cpu}  # fmt: skip
        return {"budget": budget, "dtype": self.dtype, "attn_implementation": self.attn_implementation,
                "device": self.device}  # fmt: skip
