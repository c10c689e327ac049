"""The pixel and frame budget of images and videos: one type for training, inference, evaluation and the demo.

A budget field set to ``None`` means "qwen_vl_utils' own default" (what upstream's inference uses: up to 16384
tokens per image, up to 768 tokens per video frame within a total video budget, fps 2, up to 768 frames). Two
budgets are defined here, once:

* ``TRAINING_BUDGET``: the defaults of the training flags (upstream's training scripts). Training saves the budget
  it used into every checkpoint (``qwenvl_preprocessing.json``), so a fine-tuned model is later fed media exactly
  as in training.
* ``INFERENCE_BUDGET``: for a checkpoint without saved settings (a released checkpoint such as
  ``Qwen/Qwen3-VL-8B-Instruct``): every field unset, i.e. qwen_vl_utils' defaults, as upstream's demo and
  evaluation feed it.

No torch import here, so command-line tools can add the budget flags before importing anything heavy.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from qwenvl.cli import UserError


@dataclass(frozen=True)
class MediaBudget:
    """Resolution and frame budgets applied to every image and video (an item's own keys take precedence).

    Video pixel budgets are per frame for every family (upstream used them per frame for Qwen2.5-VL but as a
    T·H·W total for Qwen3-VL).
    """

    max_pixels: int | None = None
    min_pixels: int | None = None
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None
    video_fps: float | None = None
    video_max_frames: int | None = None
    video_min_frames: int | None = None

    def __post_init__(self) -> None:
        for low, high in (("min_pixels", "max_pixels"), ("video_min_pixels", "video_max_pixels"),
                          ("video_min_frames", "video_max_frames")):  # fmt: skip
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise UserError(f"--{low} ({lo}) is larger than --{high} ({hi}); lower --{low} or raise --{high}")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise UserError(f"--{f.name} must be positive, got {value}")

    @classmethod
    def from_attrs(cls, source: Any) -> MediaBudget:
        """The budget read from any object with these attributes (parsed flags, DataArguments)."""
        return cls(**{f.name: getattr(source, f.name, None) for f in fields(cls)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaBudget:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def overridden(self, **values: Any) -> MediaBudget:
        """This budget with every non-None value of ``values`` replacing its field."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, defaults: MediaBudget | None = None) -> None:
        """One ``--<field>`` flag per budget field, defaulting to ``defaults``' value (unset: None)."""
        defaults = defaults or cls()
        for f in fields(cls):
            default = getattr(defaults, f.name)
            kind = float if f.name == "video_fps" else int
            shown = f"default {default}" if default is not None else "default: the checkpoint's saved budget"
            parser.add_argument(f"--{f.name}", type=kind, default=default, help=shown)

    def image_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` (a content item with an image) with the budget's keys added where it has none."""
        keys = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return {**{k: v for k, v in keys.items() if v is not None}, **item}

    def video_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` (a content item with a video) with the budget's keys added where it has none; an item that
        asks for ``nframes`` gets no ``fps`` (qwen_vl_utils accepts one or the other)."""
        keys = {
            "min_pixels": self.video_min_pixels,
            "max_pixels": self.video_max_pixels,
            "min_frames": self.video_min_frames,
            "max_frames": self.video_max_frames,
        }
        if "nframes" not in item:
            keys["fps"] = self.video_fps
        return {**{k: v for k, v in keys.items() if v is not None}, **item}

    def apply(self, conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A copy of ``conversation`` whose image and video items carry this budget."""
        out = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list):
                items = []
                for item in content:
                    if item.get("type") in ("image", "image_url") or "image" in item:
                        item = self.image_item(item)
                    elif item.get("type") == "video" or "video" in item:
                        item = self.video_item(item)
                    items.append(item)
                message = {**message, "content": items}
            out.append(message)
        return out

    def describe(self) -> str:
        """One line for reports: the set fields, or that qwen_vl_utils' defaults apply."""
        set_fields = {k: v for k, v in asdict(self).items() if v is not None}
        if not set_fields:
            return "qwen_vl_utils defaults"
        return ", ".join(f"{k}={v}" for k, v in set_fields.items())


TRAINING_BUDGET = MediaBudget(
    max_pixels=28 * 28 * 576,
    min_pixels=28 * 28 * 16,
    video_max_pixels=28 * 28 * 1024,
    video_min_pixels=28 * 28 * 256,
    video_fps=2.0,
    video_max_frames=8,
    video_min_frames=4,
)
INFERENCE_BUDGET = MediaBudget()
