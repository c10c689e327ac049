"""The model-family table: everything that differs between Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE.

Keyed by ``config.model_type`` (what a checkpoint's ``config.json`` says), never by a substring of the path:
upstream guessed the class from the checkpoint name, so a local folder without "qwen3" in it silently became
Qwen2-VL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


FamilyName = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"]


@dataclass(frozen=True)
class Family:
    """Static facts about one model family.

    Attributes:
        model_type: ``config.model_type`` of the composite model.
        model_class: name of the ``transformers`` class for ``...ForConditionalGeneration``.
        config_class: name of the ``transformers`` config class.
        processor_class: name of the ``transformers`` processor class.
        video_processor_class: name of the ``transformers`` video processor class.
        patch_size: vision patch size (14 or 16); the resize factor is ``patch_size * spatial_merge_size``.
        spatial_merge_size: side of the square of patches merged into one LLM token.
        temporal_patch_size: frames per temporal patch.
        deepstack: whether the vision tower feeds extra features into early LLM layers (Qwen3-VL).
        moe: whether the LLM is a mixture of experts.
        video_timestamps: whether video prompts carry ``<t seconds>`` text per temporal patch (Qwen3-VL).
    """

    model_type: FamilyName
    model_class: str
    config_class: str
    processor_class: str
    video_processor_class: str
    patch_size: int
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    deepstack: bool = False
    moe: bool = False
    video_timestamps: bool = False

    @property
    def image_factor(self) -> int:
        """Pixels per side of one merged LLM token (28 for patch 14, 32 for patch 16)."""
        return self.patch_size * self.spatial_merge_size


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family(
        model_type="qwen2_vl",
        model_class="Qwen2VLForConditionalGeneration",
        config_class="Qwen2VLConfig",
        processor_class="Qwen2VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        patch_size=14,
    ),
    "qwen2_5_vl": Family(
        model_type="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        config_class="Qwen2_5_VLConfig",
        processor_class="Qwen2_5_VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        patch_size=14,
    ),
    "qwen3_vl": Family(
        model_type="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration",
        config_class="Qwen3VLConfig",
        processor_class="Qwen3VLProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        patch_size=16,
        deepstack=True,
        video_timestamps=True,
    ),
    "qwen3_vl_moe": Family(
        model_type="qwen3_vl_moe",
        model_class="Qwen3VLMoeForConditionalGeneration",
        config_class="Qwen3VLMoeConfig",
        processor_class="Qwen3VLProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        patch_size=16,
        deepstack=True,
        moe=True,
        video_timestamps=True,
    ),
}


def get_family(model_type: str) -> Family:
    """Return the family for a ``config.model_type``, or raise naming the supported ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not a Qwen-VL family this toolkit supports; "
            f"expected one of {sorted(FAMILIES)} (check the checkpoint's config.json)"
        ) from None


def transformers_attr(name: str) -> type:
    """Import a class from ``transformers`` by name (the table stores names so importing it is cheap)."""
    import transformers

    return getattr(transformers, name)
