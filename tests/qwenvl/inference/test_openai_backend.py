"""The openai backend's request building without a server (the real vLLM server's rendering of these requests is
tested in tests/qwenvl/train/test_rollout_server.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from qwenvl.cli import UserError
from qwenvl.data.registry import DEMO_DIR
from qwenvl.inference.openai_backend import OpenAIBackend
from qwenvl.model.budget import MediaBudget


VIDEO = str(DEMO_DIR / "videos" / "moving_blue.mp4")
BUDGET = {"video_min_pixels": 3136, "video_max_pixels": 50176, "video_min_frames": 4, "video_max_frames": 4,
          "video_fps": 2.0}  # fmt: skip


def _video(**options):
    return {"role": "user", "content": [{"type": "video", "video": VIDEO, **options}, {"type": "text", "text": "q"}]}


def test_sampled_video_frames_are_qwen_vl_utils_frames_sent_losslessly_with_their_sampling():
    """video_frames="sampled": each frame decoded as vLLM decodes a data:video/jpeg list (split at commas, PIL reads
    the format from the bytes) is qwen_vl_utils' frame pixel for pixel, and media_io_kwargs carries its sampling; two
    videos sampled differently cannot share the one media_io_kwargs of a request (one line naming the fix)."""
    from qwen_vl_utils import fetch_video

    backend = OpenAIBackend("http://127.0.0.1:9/v1", model="m", family="qwen3_vl", budget=MediaBudget(**BUDGET),
                            check=False, video_frames="sampled")  # fmt: skip
    messages, body = backend.encode([_video()])
    head, _, data = messages[0]["content"][0]["video_url"]["url"].partition(",")
    assert head == "data:video/jpeg;base64"
    sent = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(part))).convert("RGB"))
                     for part in data.split(",")])  # fmt: skip
    item = {"video": VIDEO, "min_pixels": 3136, "max_pixels": 50176, "min_frames": 4, "max_frames": 4, "fps": 2.0}
    frames, metadata = fetch_video(item, 16, return_video_metadata=True)
    assert np.array_equal(sent, frames.permute(0, 2, 3, 1).numpy())
    assert body == {"media_io_kwargs": {"video": {"num_frames": -1, "fps": metadata["fps"],
                                                  "frames_indices": metadata["frames_indices"],
                                                  "total_num_frames": metadata["total_num_frames"],
                                                  "duration": metadata["duration"]}}}  # fmt: skip

    same, _ = backend.encode([_video(), _video()])  # the same sampling twice: one media_io_kwargs fits both
    assert len(same) == 2
    with pytest.raises(UserError, match="sampled differently .* put one video in each conversation"):
        backend.encode([_video(), _video(nframes=2)])
    file_messages, file_body = OpenAIBackend("http://127.0.0.1:9/v1", model="m", family="qwen3_vl",
                                             check=False).encode([_video()])  # fmt: skip
    assert file_body == {} and file_messages[0]["content"][0]["video_url"]["url"].startswith("data:video/mp4;base64,")
