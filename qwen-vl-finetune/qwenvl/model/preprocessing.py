"""The preprocessing settings a checkpoint was trained with, in one file next to its weights.

``qwenvl_preprocessing.json`` holds the family, patch size and the pixel / frame budget (flat keys, the fields of
:class:`qwenvl.model.budget.MediaBudget`). Training writes it into every checkpoint and the final output; every
tool that feeds a model (the demo, the evaluations, ``inspect_video``) reads it through :func:`checkpoint_budget`,
so a fine-tuned model is always fed images and videos the way it was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError
from qwenvl.model.budget import INFERENCE_BUDGET, MediaBudget


FILENAME = "qwenvl_preprocessing.json"


@dataclass
class PreprocessingSettings:
    """What a checkpoint was trained with: its family, patch size and media budget."""

    model_type: str
    patch_size: int
    budget: MediaBudget
    model_max_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "patch_size": self.patch_size,
            **self.budget.to_dict(),
            "model_max_length": self.model_max_length,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingSettings:
        return cls(
            model_type=data["model_type"],
            patch_size=int(data["patch_size"]),
            budget=MediaBudget.from_dict(data),
            model_max_length=data.get("model_max_length"),
        )


def save_preprocessing(settings: PreprocessingSettings, folder: str | Path) -> Path:
    path = Path(folder) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    return path


def load_preprocessing(folder: str | Path) -> PreprocessingSettings | None:
    """The settings saved in ``folder``, or ``None`` for a checkpoint not trained with this toolkit."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    try:
        return PreprocessingSettings.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a valid {FILENAME} ({e}); restore it from the training output") from None


def checkpoint_budget(checkpoint: str | Path | None, **overrides: Any) -> tuple[MediaBudget, str]:
    """The budget every tool uses for ``checkpoint``, and where it came from.

    The checkpoint's saved budget when it has ``qwenvl_preprocessing.json``, else ``INFERENCE_BUDGET``
    (qwen_vl_utils' defaults, as upstream feeds released checkpoints); non-None ``overrides`` (command-line flags)
    replace single fields.
    """
    saved = load_preprocessing(checkpoint) if checkpoint is not None and Path(checkpoint).is_dir() else None
    budget, source = (saved.budget, FILENAME) if saved is not None else (INFERENCE_BUDGET, "qwen_vl_utils defaults")
    changed = {k: v for k, v in overrides.items() if v is not None}
    if changed:
        budget = budget.overridden(**changed)
        source += " + flags " + ", ".join(f"--{k}" for k in changed)
    return budget, source
