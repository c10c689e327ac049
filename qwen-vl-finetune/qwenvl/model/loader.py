"""The one place that loads a Qwen-VL model and processor; training, MMMU and the demo all call it.

The class comes from ``config.json``'s ``model_type`` (see :mod:`qwenvl.model.families`), so any local folder
or hub id of the six families loads with the right class.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Literal

from qwenvl.cli import UserError
from qwenvl.model.families import Family, get_family, transformers_attr


logger = logging.getLogger(__name__)

AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2"]
DType = Literal["auto", "bfloat16", "float16", "float32"]


def check_checkpoint_path(model_name_or_path: str) -> None:
    """A local folder that is missing or has no ``config.json`` (a hub id is not checked: nothing is imported or
    downloaded here), as a :class:`qwenvl.cli.UserError`; cheap enough to run right after parsing the flags."""
    local = os.path.expanduser(model_name_or_path)
    if model_name_or_path.startswith(("/", "./", "../", "~")) and not os.path.isdir(local):
        raise UserError(f"model folder {model_name_or_path} does not exist; give a checkpoint folder or a hub id")
    if os.path.isdir(local) and not os.path.isfile(os.path.join(local, "config.json")):
        raise UserError(f"{model_name_or_path} has no config.json: it is not a model checkpoint folder")


def read_family(model_name_or_path: str, **hub_kwargs: Any) -> Family:
    """The family of a checkpoint, read from its config (no weights are loaded). A path or hub id that does not
    lead to a config raises :class:`qwenvl.cli.UserError` with one readable line."""
    from transformers import AutoConfig

    from qwenvl.cli import UserError

    check_checkpoint_path(model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, **hub_kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = " (HF_HUB_OFFLINE is set: hub ids must be in the local cache)" if os.environ.get(
            "HF_HUB_OFFLINE", "") not in ("", "0") else ""  # fmt: skip
        raise UserError(
            f"cannot load a model config from {model_name_or_path!r}: {first[:300]}. Give a local checkpoint folder "
            f"(with config.json) or a hub id such as Qwen/Qwen3-VL-8B-Instruct{offline}"
        ) from None
    return get_family(config.model_type)


def resolve_attn_implementation(requested: AttnImplementation = "auto", device: str | None = None) -> str:
    """``flash_attention_2`` when requested or (for ``auto``) when installed and on CUDA; else ``sdpa``."""
    import torch

    on_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if (on_cuda and has_fa2) else "sdpa"
    if requested == "flash_attention_2" and not (on_cuda and has_fa2):
        raise UserError(
            "attn_implementation=flash_attention_2 needs a CUDA device and the flash-attn package "
            "(pip install flash-attn --no-build-isolation); use sdpa otherwise"
        )
    return requested


def resolve_dtype(dtype: DType | Any = "auto") -> Any:
    """A torch dtype for ``dtype``; ``auto`` is bfloat16 on a bf16-capable GPU, else float32."""
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    except KeyError:
        raise UserError(f"dtype {dtype!r} is not one of auto, bfloat16, float16, float32") from None


def load_model(
    model_name_or_path: str,
    dtype: DType | Any = "auto",
    attn_implementation: AttnImplementation = "auto",
    device_map: str | dict | None = None,
    **hub_kwargs: Any,
) -> Any:
    """Load the ``...ForConditionalGeneration`` model of a checkpoint with the class its config names."""
    family = read_family(model_name_or_path, **hub_kwargs)
    model_cls = transformers_attr(family.model_class)
    device = device_map if isinstance(device_map, str) else None
    model = model_cls.from_pretrained(
        model_name_or_path,
        dtype=resolve_dtype(dtype),
        attn_implementation=resolve_attn_implementation(attn_implementation, device),
        device_map=device_map,
        **hub_kwargs,
    )
    logger.info("loaded %s from %s", type(model).__name__, model_name_or_path)
    if family.linear_attention:
        from qwenvl.model.linear_attention import isolate_packed_samples

        isolate_packed_samples(model)  # packed samples stay apart in the linear-attention layers too
    return model


def load_processor(model_name_or_path: str, **kwargs: Any) -> Any:
    """The checkpoint's processor (tokenizer, image and video processor, chat template)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_name_or_path, **kwargs)


HUB_TRANSPOSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def to_hub_layout(family: Family, weights: dict[str, Any]) -> dict[str, Any]:
    """Weights under ``save_pretrained``'s names, in the layout of the family's hub checkpoints (what vLLM and
    transformers load): fused expert weights transposed where ``family.hub_experts_transposed``."""
    if not family.hub_experts_transposed:
        return weights
    return {k: v.transpose(1, 2).contiguous() if k.endswith(HUB_TRANSPOSED_EXPERTS) else v for k, v in weights.items()}
