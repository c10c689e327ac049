"""Grounding markup in Qwen answers, shared by the demo (drawing boxes) and the dataset linter (checking them).

Qwen2.5-VL and Qwen3-VL write JSON objects with ``"bbox_2d": [x1, y1, x2, y2]`` (and ``"point_2d": [x, y]``),
usually with a ``"label"``; Qwen2-VL writes ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),
(x2,y2)<|box_end|>``. Coordinates are 0-1000 relative for Qwen2-VL and Qwen3-VL, pixels of the resized image for
Qwen2.5-VL. Which markup and which convention a family uses are its ``Family`` entry's ``box_markup`` and
``box_coords``; :func:`answer_boxes` follows them to boxes in the pixels of the original image, and
:func:`draw_boxes` draws those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from qwenvl.model.budget import MediaBudget
    from qwenvl.model.families import Family


# Special tokens that are part of an answer's text for families writing boxes as tokens (Qwen2-VL's
# ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``): kept when decoding.
GROUNDING_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                    "<|quad_end|>")  # fmt: skip
SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def keep_grounding_tokens(text: str) -> str:
    """``text`` (decoded with its special tokens) without the special tokens that are not grounding markup."""
    return SPECIAL_TOKEN_RE.sub(lambda m: m.group(0) if m.group(0) in GROUNDING_TOKENS else "", text)


_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SEP = r"\s*,\s*"
# JSON ("bbox_2d") and Python-repr ('bbox_2d') keys alike.
BBOX_RE = re.compile(r"[\"']bbox_2d[\"']\s*:\s*\[\s*" + _SEP.join([_NUMBER] * 4) + r"\s*\]")
POINT_RE = re.compile(r"[\"']point_2d[\"']\s*:\s*\[\s*" + _NUMBER + _SEP + _NUMBER + r"\s*\]")
QWEN2_BOX_RE = re.compile(
    r"(?:<\|object_ref_start\|>([^<]*)<\|object_ref_end\|>\s*)?<\|box_start\|>\(\s*" + _NUMBER + _SEP + _NUMBER
    + r"\s*\)" + _SEP + r"\(\s*" + _NUMBER + _SEP + _NUMBER + r"\s*\)<\|box_end\|>"
)  # fmt: skip
LABEL_RE = re.compile(r"[\"']label[\"']\s*:\s*(?:\"([^\"]*)\"|'([^']*)')")


def find_boxes(text: str) -> list[tuple[list[float], str]]:
    """JSON ``bbox_2d`` boxes of ``text`` and their labels ("" when the object has none)."""
    boxes = []
    for match in BBOX_RE.finditer(text):
        coords = [float(v) for v in match.groups()]
        # The label belongs to the same JSON object as the box: between the nearest braces around it.
        start = text.rfind("{", 0, match.start())
        end = text.find("}", match.end())
        label = LABEL_RE.search(text[max(start, 0) : end + 1 if end >= 0 else len(text)])
        boxes.append((coords, (label.group(1) if label.group(1) is not None else label.group(2)) if label else ""))
    return boxes


def find_qwen2_boxes(text: str) -> list[list[float]]:
    """Qwen2-VL ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` boxes of ``text``."""
    return [[float(v) for v in m.groups()[1:]] for m in QWEN2_BOX_RE.finditer(text)]


def find_points(text: str) -> list[list[float]]:
    """JSON ``point_2d`` points of ``text``."""
    return [[float(v) for v in m.groups()] for m in POINT_RE.finditer(text)]


@dataclass(frozen=True)
class Box:
    """A box in pixels of the image the user sent (its original size), with the answer's label ("" if none)."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""


def find_family_boxes(text: str, family: Family) -> list[tuple[list[float], str]]:
    """The boxes of an answer written in ``family``'s markup (``box_markup``), in the answer's own coordinates,
    with their labels."""
    if family.box_markup == "box_tokens":
        return [([float(v) for v in m.groups()[1:]], (m.group(1) or "").strip()) for m in QWEN2_BOX_RE.finditer(text)]
    return find_boxes(text)


def resized_size(width: int, height: int, family: Family, budget: MediaBudget) -> tuple[int, int]:
    """``(width, height)`` of an image of this size as the model saw it: qwen_vl_utils' resize under ``budget``."""
    from qwen_vl_utils.resize import image_target_size

    h, w = image_target_size(height, width, budget.image_item({"image": ""}), family.patch_size)
    return w, h


def answer_boxes(text: str, family: Family, image_size: tuple[int, int], budget: MediaBudget) -> list[Box]:
    """The boxes of an answer about an image of ``image_size`` (width, height), in that image's pixels: 0-1000
    relative coordinates (``box_coords == "relative_1000"``) are scaled by the image's size; pixels of the resized
    image (``"resized_pixels"``, Qwen2.5-VL) by original / resized size, the resized size being qwen_vl_utils'
    under the backend's ``budget``."""
    width, height = image_size
    if family.box_coords == "resized_pixels":
        rw, rh = resized_size(width, height, family, budget)
        sx, sy = width / rw, height / rh
    else:
        sx, sy = width / 1000, height / 1000
    return [
        Box(x1 * sx, y1 * sy, x2 * sx, y2 * sy, label) for (x1, y1, x2, y2), label in find_family_boxes(text, family)
    ]


def draw_boxes(image_path: str, boxes: list[Box], out_path: str) -> str:
    """A copy of the image at ``image_path`` with ``boxes`` drawn in red (and their labels), saved as PNG at
    ``out_path``; returns ``out_path``."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as source:
        image = source.convert("RGB")
    draw = ImageDraw.Draw(image)
    w = image.size[0]
    for box in boxes:
        rect = [box.x1, box.y1, box.x2, box.y2]
        draw.rectangle(rect, outline=(255, 0, 0), width=max(2, w // 200))
        if box.label:
            draw.text((box.x1 + 3, box.y1 + 3), box.label, fill=(255, 0, 0))
    image.save(out_path, format="PNG")
    return out_path
