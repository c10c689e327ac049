"""Under CI (CI=true) every prerequisite of the test tiers is present: a broken set-up fails the run here instead of
turning the browser, vLLM or video tiers into skips. Outside CI this only reports what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import missing_prerequisite


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "what, present",
    [
        ("ffmpeg (apt)", lambda: shutil.which("ffmpeg") is not None),
        ("Chromium at /usr/bin/chromium (apt)", lambda: Path("/usr/bin/chromium").exists()),
        (".venv-vllm (scripts/setup_vllm.sh)", lambda: (ROOT / ".venv-vllm" / "bin" / "python").exists()),
        (
            "the pyav, torchcodec and decord video backends",
            lambda: all(
                __import__("qwen_vl_utils.video_io", fromlist=["x"]).is_backend_available(b)
                for b in ("pyav", "torchcodec", "decord")
            ),
        ),
    ],  # fmt: skip
    ids=["ffmpeg", "chromium", "vllm-venv", "video-backends"],
)
def test_prerequisite_is_present(what, present):
    if not present():
        missing_prerequisite(what)
