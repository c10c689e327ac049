"""smart_resize / smart_nframes / frame ranges against upstream 0.0.14's vectors (spec 1.4, 1.7) and its known bugs."""

from __future__ import annotations

import pytest

from qwen_vl_utils import smart_nframes, smart_resize
from qwen_vl_utils.resize import (
    calculate_video_frame_range,
    image_target_size,
    round_by_factor,
    video_target_size,
)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1080, 1920, 32), (1088, 1920)),
        ((1080, 1920, 28), (1092, 1932)),
        ((480, 640, 32), (480, 640)),
        ((10, 10, 32), (64, 64)),  # rounds to 0 -> clamped to 32x32 < min -> upscaled
        ((4000, 3000, 32, None, 1280 * 32 * 32), (1312, 960)),
        ((100, 100, 32, 256 * 32 * 32, 1280 * 32 * 32), (512, 512)),
        ((428, 640, 28, 56 * 56, 14 * 14 * 4 * 1280), (420, 644)),
        ((3024, 4032, 32), (3008, 4032)),  # 94.5 rounds half to even -> 94
        ((20, 20, 28), (56, 56)),
        ((200, 1, 28, 1, 10**9), (196, 28)),  # ratio exactly 200 is accepted
    ],
)
def test_smart_resize_vectors(args, expected):
    assert smart_resize(*args) == expected


def test_smart_resize_never_returns_zero_side():
    # Upstream 0.0.14 returns (0, 896) here (the lost clamp, spec 7.1.8); a side is at least one factor.
    assert smart_resize(40, 8000, 32, 1024, 4096) == (32, 896)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 100, 28), "must be positive"),
        ((100, -1, 28), "must be positive"),
        ((100, 100, 28, 5000, 4000), "greater than or equal to min_pixels"),
        ((1, 201, 28), "aspect ratio must be smaller than 200"),
    ],
)
def test_smart_resize_errors(args, match):
    with pytest.raises(ValueError, match=match):
        smart_resize(*args)


def test_round_by_factor_is_half_to_even():
    assert round_by_factor(80, 32) == 64 and round_by_factor(48, 32) == 64 and round_by_factor(112, 32) == 128


@pytest.mark.parametrize(
    "ele, total, fps, expected",
    [
        ({}, 300, 30, 20),
        ({}, 3, 30, 2),
        ({}, 17937, 30, 768),
        ({"fps": 1}, 90, 30, 4),
        ({"nframes": 7}, 100, 30, 8),
        ({"nframes": 5}, 100, 30, 4),
        ({"nframes": 3}, 100, 30, 4),
        ({"fps": 2, "min_frames": 5}, 30, 30, 6),
        ({"fps": 2, "max_frames": 7}, 3000, 30, 6),
        ({"fps": 2}, 10, 1, 10),  # 1 fps clip asked at 2 fps: capped at the frame count
    ],
)
def test_smart_nframes_vectors(ele, total, fps, expected):
    assert smart_nframes(ele, total_frames=total, video_fps=fps) == expected


@pytest.mark.parametrize(
    "ele, total, match",
    [
        ({"nframes": 32}, 31, r"interval \[2, 31\], but got 32"),
        ({}, 1, r"interval \[2, 1\], but got 0"),
        ({"fps": 2, "nframes": 4}, 100, "either `fps` or `nframes`"),
        ({"fps": 0}, 100, "fps must be positive"),
        ({"fps": "2"}, 100, "fps must be a number"),
    ],
)
def test_smart_nframes_errors(ele, total, match):
    with pytest.raises(ValueError, match=match):
        smart_nframes(ele, total_frames=total, video_fps=30)


def test_frame_range():
    assert calculate_video_frame_range({}, 300, 30.0) == (0, 299, 300)
    assert calculate_video_frame_range({"video_start": 5.5}, 300, 30.0) == (165, 299, 135)
    assert calculate_video_frame_range({"video_start": 1.0, "video_end": 2.0}, 300, 30.0) == (30, 60, 31)
    assert calculate_video_frame_range({"video_end": 100.0}, 300, 30.0) == (0, 299, 300)
    with pytest.raises(ValueError, match="Invalid time range"):
        calculate_video_frame_range({"video_start": 5.0, "video_end": 4.0}, 300, 30.0)


def test_image_target_size_rules():
    # resized_height/width are snapped with the default bounds; min/max_pixels are then ignored.
    assert image_target_size(1000, 1000, {"resized_height": 301, "resized_width": 555, "max_pixels": 1}, 16) == (
        288,
        544,
    )
    # Only one of them: ignored, the real size is used.
    assert image_target_size(480, 640, {"resized_height": 100}, 16) == (480, 640)
    assert image_target_size(3024, 4032, {"max_pixels": 1280 * 28 * 28}, 14) == (840, 1148)


def test_video_target_size_budget(monkeypatch):
    # Per-frame cap 768 tokens; with many frames the total budget takes over.
    assert video_target_size(1080, 1920, 20, {}, 16) == (640, 1152)
    assert video_target_size(1080, 1920, 768, {}, 16) == (384, 736)
    # A user max_pixels can only lower the cap.
    assert video_target_size(1080, 1920, 20, {"max_pixels": 10**9}, 16) == (640, 1152)
    assert video_target_size(1080, 1920, 20, {"max_pixels": 256 * 32 * 32}, 16) == (384, 672)
    # MODEL_SEQ_LEN is read at call time, not import.
    monkeypatch.setenv("MODEL_SEQ_LEN", "8000")
    assert video_target_size(1080, 1920, 20, {}, 16) == (640, 1120)
