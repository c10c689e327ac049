"""Pure resize and frame-count arithmetic, shared by images and videos. No I/O, no torch.

Every function here reproduces upstream qwen-vl-utils 0.0.14 to the integer, including Python's
half-to-even ``round``, except where upstream has a listed bug (see README.md, "Deliberate differences").
"""

from __future__ import annotations

import math
import os
from typing import Any


MAX_RATIO = 200
SPATIAL_MERGE_SIZE = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384
VIDEO_MIN_TOKEN_NUM = 128
VIDEO_MAX_TOKEN_NUM = 768
FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
DEFAULT_MODEL_SEQ_LEN = 128000

# Legacy (<= 0.0.11, Qwen2.5-VL era) names, kept importable.
IMAGE_FACTOR = 28
MIN_PIXELS = IMAGE_MIN_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR
MAX_PIXELS = IMAGE_MAX_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR
VIDEO_MIN_PIXELS = VIDEO_MIN_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR
VIDEO_MAX_PIXELS = VIDEO_MAX_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR


def model_seq_len() -> int:
    """``MODEL_SEQ_LEN`` from the environment, read at call time (upstream froze it at import)."""
    raw = os.environ.get("MODEL_SEQ_LEN")
    if raw is None or raw == "":
        return DEFAULT_MODEL_SEQ_LEN
    try:
        return int(float(raw))
    except ValueError:
        raise ValueError(f"MODEL_SEQ_LEN={raw!r} is not a number; set it to the model's context length, e.g. 128000")


def round_by_factor(number: float, factor: int) -> int:
    """The multiple of ``factor`` closest to ``number`` (ties to even, like Python's ``round``)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    """The smallest multiple of ``factor`` that is >= ``number``."""
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    """The largest multiple of ``factor`` that is <= ``number``."""
    return math.floor(number / factor) * factor


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """Rescale ``(height, width)`` so both sides are multiples of ``factor`` and the area lies in the budget.

    1. Both sides are divisible by ``factor`` (28 for patch 14, 32 for patch 16).
    2. The area is brought within ``[min_pixels, max_pixels]`` (defaults ``4·factor²`` .. ``16384·factor²``).
    3. The aspect ratio is kept as closely as the grid allows.

    Unlike upstream 0.0.14, a side never becomes 0 when shrinking (it is clamped to ``factor``), and bad
    arguments raise ``ValueError`` instead of an ``AssertionError`` or ``ZeroDivisionError``.

    Returns:
        ``(resized_height, resized_width)``.

    Raises:
        ValueError: a side is not positive, ``min_pixels > max_pixels``, or the aspect ratio exceeds 200.
    """
    if max_pixels is None:
        max_pixels = IMAGE_MAX_TOKEN_NUM * factor * factor
    if min_pixels is None:
        min_pixels = IMAGE_MIN_TOKEN_NUM * factor * factor
    if max_pixels < min_pixels:
        raise ValueError(
            f"The max_pixels of image must be greater than or equal to min_pixels (got max_pixels={max_pixels}, "
            f"min_pixels={min_pixels}); lower min_pixels or raise max_pixels"
        )
    if not (height > 0 and width > 0):
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)} "
            f"(height={height}, width={width}); crop or pad the image"
        )
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, floor_by_factor(height / beta, factor))
        w_bar = max(factor, floor_by_factor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def image_target_size(height: int, width: int, ele: dict[str, Any], image_patch_size: int = 14) -> tuple[int, int]:
    """The size ``fetch_image`` resizes to, given the source size and the request's keys (upstream's rules)."""
    factor = int(image_patch_size * SPATIAL_MERGE_SIZE)
    if "resized_height" in ele and "resized_width" in ele:
        # Upstream snaps an explicit size to the grid with the *default* bounds and ignores min/max_pixels.
        return smart_resize(_number(ele, "resized_height"), _number(ele, "resized_width"), factor=factor)
    min_pixels = _number(ele, "min_pixels", IMAGE_MIN_TOKEN_NUM * factor * factor)
    max_pixels = _number(ele, "max_pixels", IMAGE_MAX_TOKEN_NUM * factor * factor)
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def video_target_size(
    height: int, width: int, nframes: int, ele: dict[str, Any], image_patch_size: int = 14
) -> tuple[int, int]:
    """The per-frame size ``fetch_video`` resizes to, from the frame size, frame count and budget keys.

    The per-frame cap is ``max(min(768·f², total_pixels / nframes · 2), int(min_pixels · 1.05))``; a user
    ``max_pixels`` can only lower it.
    """
    factor = int(image_patch_size * SPATIAL_MERGE_SIZE)
    if "resized_height" in ele and "resized_width" in ele:
        return smart_resize(_number(ele, "resized_height"), _number(ele, "resized_width"), factor=factor)
    min_pixels = _number(ele, "min_pixels", VIDEO_MIN_TOKEN_NUM * factor * factor)
    total_pixels = _number(ele, "total_pixels", model_seq_len() * factor * factor * 0.9)
    max_pixels = max(min(VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / nframes * 2), int(min_pixels * 1.05))
    max_pixels = min(_number(ele, "max_pixels", max_pixels), max_pixels)
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def smart_nframes(ele: dict[str, Any], total_frames: int, video_fps: int | float) -> int:
    """How many frames to sample from a clip of ``total_frames`` frames at ``video_fps``.

    ``nframes`` (rounded to an even count) or ``fps`` (default 2.0, bounded by ``min_frames``/``max_frames``)
    decide; the result is even and in ``[2, total_frames]``.

    Raises:
        ValueError: both ``fps`` and ``nframes`` are given, a value is not a positive number, or the result
            falls outside ``[2, total_frames]``.
    """
    if "fps" in ele and "nframes" in ele:
        raise ValueError("Only accept either `fps` or `nframes`, got both; remove one of them")
    if "nframes" in ele:
        nframes = round_by_factor(_number(ele, "nframes"), FRAME_FACTOR)
    else:
        fps = _number(ele, "fps", FPS)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        min_frames = ceil_by_factor(_number(ele, "min_frames", FPS_MIN_FRAMES), FRAME_FACTOR)
        max_frames = floor_by_factor(_number(ele, "max_frames", min(FPS_MAX_FRAMES, total_frames)), FRAME_FACTOR)
        nframes = total_frames / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
        nframes = floor_by_factor(nframes, FRAME_FACTOR)
    if not (FRAME_FACTOR <= nframes <= total_frames):
        raise ValueError(
            f"nframes should in interval [{FRAME_FACTOR}, {total_frames}], but got {nframes}. "
            "Ask for fewer frames (nframes / fps / min_frames) or use a longer clip."
        )
    return nframes


def calculate_video_frame_range(ele: dict[str, Any], total_frames: int, video_fps: float) -> tuple[int, int, int]:
    """First and last frame (inclusive, absolute) and their count for ``video_start``/``video_end`` (seconds)."""
    if video_fps <= 0:
        raise ValueError("video_fps must be a positive number")
    if total_frames <= 0:
        raise ValueError("total_frames must be a positive integer")
    video_start = ele.get("video_start")
    video_end = ele.get("video_end")
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    if video_start is not None:
        start_frame = math.ceil(max(0.0, min(float(video_start), max_duration)) * video_fps)
    else:
        start_frame = 0
    if video_end is not None:
        end_frame = min(math.floor(max(0.0, min(float(video_end), max_duration)) * video_fps), total_frames - 1)
    else:
        end_frame = total_frames - 1
    if start_frame >= end_frame:
        raise ValueError(
            f"Invalid time range: Start frame {start_frame} (at {start_frame / video_fps:.2f}s) exceeds end frame "
            f"{end_frame} (at {end_frame / video_fps:.2f}s). Video duration: {max_duration:.2f}s "
            f"({total_frames} frames @ {video_fps} fps)"
        )
    return start_frame, end_frame, end_frame - start_frame + 1


def _number(ele: dict[str, Any], key: str, default: Any = None) -> Any:
    """``ele[key]`` checked to be a real number (upstream let a string such as '1' crash later)."""
    if key not in ele:
        return default
    value = ele[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    if value != value:  # NaN
        raise ValueError(f"{key} must be a number, got NaN")
    return value
