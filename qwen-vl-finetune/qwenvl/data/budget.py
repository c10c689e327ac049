"""The pixel and frame budget of images and videos (no torch import, so command-line tools can add its flags
before importing anything heavy)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class MediaBudget:
    """Resolution and frame budgets applied to every image and video (an item's own keys take precedence)."""

    max_pixels: int = 28 * 28 * 576
    min_pixels: int = 28 * 28 * 16
    video_max_pixels: int = 28 * 28 * 1024
    video_min_pixels: int = 28 * 28 * 256
    video_fps: float = 2.0
    video_max_frames: int = 8
    video_min_frames: int = 4

    def __post_init__(self) -> None:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"--min_pixels ({self.min_pixels}) is larger than --max_pixels ({self.max_pixels})")
        if self.video_min_pixels > self.video_max_pixels:
            raise ValueError(
                f"--video_min_pixels ({self.video_min_pixels}) is larger than --video_max_pixels "
                f"({self.video_max_pixels})"
            )
        if self.video_min_frames > self.video_max_frames:
            raise ValueError(
                f"--video_min_frames ({self.video_min_frames}) is larger than --video_max_frames "
                f"({self.video_max_frames})"
            )
        if self.video_fps <= 0:
            raise ValueError(f"--video_fps must be positive, got {self.video_fps}")

    @classmethod
    def from_attrs(cls, source: Any) -> MediaBudget:
        """The budget read from any object with these attributes (parsed flags, DataArguments, saved settings)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, unset: bool = False) -> None:
        """One ``--<field>`` flag per budget field, defaulting to the field's default (``unset``: to None)."""
        for f in fields(cls):
            default = None if unset else f.default
            parser.add_argument(f"--{f.name}", type=type(f.default), default=default, help=f"default {f.default}")

    def image_item(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, **item}

    def video_item(self, item: dict[str, Any]) -> dict[str, Any]:
        ele = {
            "min_pixels": self.video_min_pixels,
            "max_pixels": self.video_max_pixels,
            "min_frames": self.video_min_frames,
            "max_frames": self.video_max_frames,
            **item,
        }
        if "nframes" not in ele:
            ele.setdefault("fps", self.video_fps)
        return ele
