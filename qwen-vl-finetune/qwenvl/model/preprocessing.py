"""The preprocessing settings a checkpoint was trained with, in one file next to its weights.

``qwenvl_preprocessing.json`` holds the family, patch size and the pixel / frame budgets. Training writes it into
every checkpoint and the final output; MMMU and the demo read it, so a fine-tuned model is always fed images and
videos the way it was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


FILENAME = "qwenvl_preprocessing.json"


@dataclass
class PreprocessingSettings:
    """Budgets in qwen_vl_utils semantics (video pixel budgets are per frame)."""

    model_type: str
    patch_size: int
    max_pixels: int
    min_pixels: int
    video_max_pixels: int
    video_min_pixels: int
    video_fps: float
    video_max_frames: int
    video_min_frames: int
    model_max_length: int | None = None

    def image_item(self) -> dict[str, Any]:
        """Keys to merge into an image content item."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    def video_item(self) -> dict[str, Any]:
        """Keys to merge into a video content item."""
        return {
            "min_pixels": self.video_min_pixels,
            "max_pixels": self.video_max_pixels,
            "fps": self.video_fps,
            "min_frames": self.video_min_frames,
            "max_frames": self.video_max_frames,
        }


def save_preprocessing(settings: PreprocessingSettings, folder: str | Path) -> Path:
    path = Path(folder) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return path


def load_preprocessing(folder: str | Path) -> PreprocessingSettings | None:
    """The settings saved in ``folder``, or ``None`` for a checkpoint not trained with this toolkit."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    known = {f.name for f in fields(PreprocessingSettings)}
    return PreprocessingSettings(**{k: v for k, v in data.items() if k in known})
