"""Grounding markup in Qwen answers, shared by the demo (drawing boxes) and the dataset linter (checking them).

Qwen2.5-VL and Qwen3-VL write JSON objects with ``"bbox_2d": [x1, y1, x2, y2]`` (and ``"point_2d": [x, y]``),
usually with a ``"label"``; Qwen2-VL writes ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``. Coordinates are 0-1000
relative for Qwen2-VL and Qwen3-VL, pixels of the resized image for Qwen2.5-VL.
"""

from __future__ import annotations

import re


_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SEP = r"\s*,\s*"
# JSON ("bbox_2d") and Python-repr ('bbox_2d') keys alike.
BBOX_RE = re.compile(r"[\"']bbox_2d[\"']\s*:\s*\[\s*" + _SEP.join([_NUMBER] * 4) + r"\s*\]")
POINT_RE = re.compile(r"[\"']point_2d[\"']\s*:\s*\[\s*" + _NUMBER + _SEP + _NUMBER + r"\s*\]")
QWEN2_BOX_RE = re.compile(r"<\|box_start\|>\(\s*" + _NUMBER + _SEP + _NUMBER + r"\s*\)" + _SEP + r"\(\s*" + _NUMBER
                          + _SEP + _NUMBER + r"\s*\)<\|box_end\|>")  # fmt: skip
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
    return [[float(v) for v in m.groups()] for m in QWEN2_BOX_RE.finditer(text)]


def find_points(text: str) -> list[list[float]]:
    """JSON ``point_2d`` points of ``text``."""
    return [[float(v) for v in m.groups()] for m in POINT_RE.finditer(text)]
