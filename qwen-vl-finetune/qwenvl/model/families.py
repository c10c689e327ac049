"""The model-family table: everything that differs between Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5
and Qwen3.5-MoE.

Keyed by ``config.model_type`` (what a checkpoint's ``config.json`` says), never by a substring of the path:
upstream guessed the class from the checkpoint name, so a local folder without "qwen3" in it silently became
Qwen2-VL. Code asks the entry for a fact (box convention, rope rule, thinking, linear attention); nothing else
compares family names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qwenvl.cli import UserError


FamilyName = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]
# How a video token's temporal M-RoPE index is computed (see qwenvl.model.rope).
TemporalRope = Literal["group_index", "seconds", "timestamps"]
# Grounding coordinates: 0-1000 relative to the image, or pixels of the image as resized for the model.
BoxCoords = Literal["relative_1000", "resized_pixels"]
# Grounding markup in answers: JSON ``"bbox_2d": [...]`` objects, or Qwen2-VL's ``<|box_start|>(x1,y1),(x2,y2)``.
BoxMarkup = Literal["json", "box_tokens"]


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
        temporal_rope: the temporal M-RoPE index of video tokens: the frame-group index (Qwen2-VL), seconds times
            ``tokens_per_second`` (Qwen2.5-VL, which also needs ``second_per_grid_ts`` in every batch), or 0 with
            time carried by timestamp text (Qwen3-VL, Qwen3.5).
        box_coords: the grounding coordinate convention of the family's answers and training data.
        box_markup: how answers write boxes.
        default_system_prompt: whether the chat template inserts "You are a helpful assistant." (Qwen2/2.5-VL).
        thinks_by_default: whether the chat template opens ``<think>`` in the generation prompt (Qwen3.5), so the
            generated text holds reasoning, then ``</think>``, then the answer.
        linear_attention: whether some text layers are Gated DeltaNet linear attention (Qwen3.5), whose convolution
            and recurrent state must be reset at packed-sample boundaries (see qwenvl.model.linear_attention).
        hub_experts_transposed: whether the hub checkpoints store the fused expert weights (``mlp.experts.gate_up_proj``,
            ``mlp.experts.down_proj``) as the transpose of transformers' in-memory layout, which its
            ``save_pretrained`` keeps (Qwen3-VL-MoE; see :func:`qwenvl.model.loader.to_hub_layout`).
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
    temporal_rope: TemporalRope = "timestamps"
    box_coords: BoxCoords = "relative_1000"
    box_markup: BoxMarkup = "json"
    default_system_prompt: bool = False
    thinks_by_default: bool = False
    linear_attention: bool = False
    hub_experts_transposed: bool = False

    @property
    def video_timestamps(self) -> bool:
        """Whether video prompts carry ``<t seconds>`` text before each temporal patch (Qwen3-VL, Qwen3.5)."""
        return self.temporal_rope == "timestamps"

    @property
    def needs_second_per_grid_ts(self) -> bool:
        """Whether video batches carry ``second_per_grid_ts`` (read by the temporal rope rule)."""
        return self.temporal_rope == "seconds"

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
        temporal_rope="group_index",
        box_markup="box_tokens",
        default_system_prompt=True,
    ),
    "qwen2_5_vl": Family(
        model_type="qwen2_5_vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        config_class="Qwen2_5_VLConfig",
        processor_class="Qwen2_5_VLProcessor",
        video_processor_class="Qwen2VLVideoProcessor",
        patch_size=14,
        temporal_rope="seconds",
        box_coords="resized_pixels",
        default_system_prompt=True,
    ),
    "qwen3_vl": Family(
        model_type="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration",
        config_class="Qwen3VLConfig",
        processor_class="Qwen3VLProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        patch_size=16,
        deepstack=True,
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
        hub_experts_transposed=True,
    ),
    # Qwen3.5: the Qwen3-VL vision stack (no DeepStack) before a text model whose layers mix Gated DeltaNet linear
    # attention with full attention (three of four linear by default); checkpoints think by default.
    "qwen3_5": Family(
        model_type="qwen3_5",
        model_class="Qwen3_5ForConditionalGeneration",
        config_class="Qwen3_5Config",
        processor_class="Qwen3VLProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        patch_size=16,
        thinks_by_default=True,
        linear_attention=True,
    ),
    "qwen3_5_moe": Family(
        model_type="qwen3_5_moe",
        model_class="Qwen3_5MoeForConditionalGeneration",
        config_class="Qwen3_5MoeConfig",
        processor_class="Qwen3VLProcessor",
        video_processor_class="Qwen3VLVideoProcessor",
        patch_size=16,
        moe=True,
        thinks_by_default=True,
        linear_attention=True,
    ),
}


def get_family(model_type: str) -> Family:
    """Return the family for a ``config.model_type``, or raise naming the supported ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UserError(
            f"model_type {model_type!r} is not a Qwen-VL family this toolkit supports; "
            f"expected one of {sorted(FAMILIES)} (check the checkpoint's config.json)"
        ) from None


def transformers_attr(name: str) -> type:
    """Import a class from ``transformers`` by name (the table stores names so importing it is cheap)."""
    import transformers

    return getattr(transformers, name)
