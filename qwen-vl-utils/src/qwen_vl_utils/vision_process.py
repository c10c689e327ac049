"""The public API, under the module path upstream users import from (``qwen_vl_utils.vision_process``).

``process_vision_info`` turns the image and video items of one conversation (or a batch) into model-ready
inputs; items are fetched concurrently with a bounded thread pool and returned in order.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any

from PIL import Image

from qwen_vl_utils.image_io import (
    HttpConfig,
    VisionInputError,
    configure_http,
    fetch_image,
    file_url_to_path,
    http_config,
    image_source,
    reuse_image_blocks,
    to_rgb,
)
from qwen_vl_utils.resize import (
    FPS,
    FPS_MAX_FRAMES,
    FPS_MIN_FRAMES,
    FRAME_FACTOR,
    IMAGE_FACTOR,
    IMAGE_MAX_TOKEN_NUM,
    IMAGE_MIN_TOKEN_NUM,
    MAX_PIXELS,
    MAX_RATIO,
    MIN_PIXELS,
    SPATIAL_MERGE_SIZE,
    VIDEO_MAX_PIXELS,
    VIDEO_MAX_TOKEN_NUM,
    VIDEO_MIN_PIXELS,
    VIDEO_MIN_TOKEN_NUM,
    calculate_video_frame_range,
    ceil_by_factor,
    floor_by_factor,
    model_seq_len,
    round_by_factor,
    smart_nframes,
    smart_resize,
)
from qwen_vl_utils.video_io import (
    MAX_NUM_WORKERS_FETCH_VIDEO,
    get_video_reader_backend,
    read_frame_list,
    read_video,
)


__all__ = [
    "FPS",
    "FPS_MAX_FRAMES",
    "FPS_MIN_FRAMES",
    "FRAME_FACTOR",
    "HttpConfig",
    "IMAGE_FACTOR",
    "IMAGE_MAX_TOKEN_NUM",
    "IMAGE_MIN_TOKEN_NUM",
    "MAX_NUM_WORKERS_FETCH_VIDEO",
    "MAX_PIXELS",
    "MAX_RATIO",
    "MIN_PIXELS",
    "MODEL_SEQ_LEN",
    "SPATIAL_MERGE_SIZE",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MAX_TOKEN_NUM",
    "VIDEO_MIN_PIXELS",
    "VIDEO_MIN_TOKEN_NUM",
    "VisionInputError",
    "calculate_video_frame_range",
    "ceil_by_factor",
    "configure_http",
    "extract_vision_info",
    "fetch_image",
    "fetch_video",
    "floor_by_factor",
    "get_video_reader_backend",
    "http_config",
    "process_vision_info",
    "round_by_factor",
    "smart_nframes",
    "smart_resize",
    "to_rgb",
]

logger = logging.getLogger(__name__)

# Upstream exposes the value read at import; functions here re-read the environment at call time.
MODEL_SEQ_LEN = model_seq_len()


def fetch_video(
    ele: dict[str, Any],
    image_patch_size: int = 14,
    return_video_sample_fps: bool = False,
    return_video_metadata: bool = False,
) -> Any:
    """Load a video (path, URL, or list of frames), sample frames and resize them for a Qwen-VL model.

    Args:
        ele: a content item: ``video`` plus optional ``fps``/``nframes``, ``min_frames``/``max_frames``,
            ``video_start``/``video_end`` (seconds), ``min_pixels``/``max_pixels``/``total_pixels``,
            ``resized_height``/``resized_width``, ``video_reader_backend``, ``decode_timeout`` (seconds);
            for frame lists ``sample_fps``/``raw_fps``.
        image_patch_size: 14 for Qwen2/2.5-VL, 16 for Qwen3-VL.
        return_video_sample_fps: also return the fps of the sampled frames.
        return_video_metadata: also return the metadata dict (fps, frames_indices, total_num_frames, ...).

    Returns:
        A float32 ``(T, 3, H, W)`` tensor with values 0-255; ``(video, metadata)`` with metadata; wrapped as
        ``(that, sample_fps)`` with ``return_video_sample_fps``.

    Raises:
        VisionInputError (a ``ValueError``): missing/corrupt/unsupported input; ``ValueError`` for bad
            sampling options; ``DecodeTimeoutError`` (a ``VisionInputError``) when decoding exceeds ``decode_timeout``.
    """
    source = ele.get("video")
    if isinstance(source, (list, tuple)):
        video, metadata, sample_fps = read_frame_list(ele, image_patch_size)
    elif isinstance(source, str):
        video, metadata, sample_fps = read_video(ele, image_patch_size)
    else:
        raise VisionInputError(
            f"Unrecognized video input of type {type(source).__name__}; support a local path, file:// or "
            "http(s) URL, or a list of frames"
        )
    result: Any = (video, metadata) if return_video_metadata else video
    if return_video_sample_fps:
        return result, sample_fps
    return result


def _is_vision_item(item: Any) -> bool:
    return isinstance(item, dict) and (
        "image" in item
        or "image_url" in item
        or "video" in item
        or item.get("type", "text") in ("image", "image_url", "video")
    )


def extract_vision_info(conversations: list[dict] | list[list[dict]]) -> list[dict]:
    """All image/video items of a conversation or a batch of conversations, flattened in order."""
    if not conversations:
        return []
    batch = [conversations] if isinstance(conversations[0], dict) else conversations
    infos = []
    for conversation in batch:
        for message in conversation:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                infos.extend(item for item in content if _is_vision_item(item))
    return infos


def _source(info: dict) -> Any:
    """What an item fetches: its video, or its image source (``image_source`` unwraps ``{"url": ...}``)."""
    return info["video"] if "video" in info else image_source(info)


def _is_remote(info: dict) -> bool:
    source = _source(info)
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _fetch_workers(infos: list[dict]) -> int:
    """Threads for fetching ``infos``: one per core for local media (decoding is CPU-bound; more threads only
    interleave the same work and hold more images at once), two more when some item waits on the network."""
    raw = os.environ.get("QWENVL_FETCH_WORKERS")
    cores = os.cpu_count() or 2
    limit = int(raw) if raw else min(8, cores + 2 if any(_is_remote(info) for info in infos) else cores)
    return max(1, min(limit, len(infos)))


def _fetch_cost(info: dict) -> tuple[int, int]:
    """Sort key, most work first: network items and videos (long, or waiting on I/O) lead, then images by their
    encoded size on disk or in memory. Starting the big items first keeps every core busy to the end instead of
    leaving one large photo alone on one core while the others idle (largest-first scheduling)."""
    if "video" in info or _is_remote(info):
        return (0, 0)
    source = _source(info)
    size = 0
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    elif isinstance(source, Image.Image):
        size = source.width * source.height // 4  # a decoded photo, weighed like a JPEG of about 4:1
    elif isinstance(source, str) and source.startswith("data:"):
        size = len(source) * 3 // 4
    elif isinstance(source, (str, os.PathLike)):
        path = file_url_to_path(source) if str(source).startswith("file://") else source
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0  # fetch_image reports it
    return (1, -size)


def process_vision_info(
    conversations: list[dict] | list[list[dict]],
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
) -> tuple:
    """Fetch every image and video of ``conversations`` (one conversation or a batch), in order.

    Items are fetched concurrently (``QWENVL_FETCH_WORKERS`` threads at most; decoding releases the GIL).

    Returns:
        ``(images | None, videos | None)``, plus ``video_kwargs`` with ``return_video_kwargs``:
        ``{"do_sample_frames": False}`` and, unless ``return_video_metadata``, ``"fps": [sample fps per video]``.
        With ``return_video_metadata`` each video is a ``(tensor, metadata)`` tuple.
    """
    infos = extract_vision_info(conversations)
    for info in infos:
        if not ("image" in info or "image_url" in info or "video" in info):
            raise ValueError(f"image, image_url or video should in content; got an item with keys {sorted(info)}")

    def fetch(info: dict) -> Any:
        if "image" in info or "image_url" in info:
            return fetch_image(info, image_patch_size=image_patch_size)
        return fetch_video(
            info,
            image_patch_size=image_patch_size,
            return_video_sample_fps=True,
            return_video_metadata=return_video_metadata,
        )

    with reuse_image_blocks():
        if len(infos) <= 1:
            results = [fetch(info) for info in infos]
        else:
            order = sorted(range(len(infos)), key=lambda i: _fetch_cost(infos[i]))
            with concurrent.futures.ThreadPoolExecutor(max_workers=_fetch_workers(infos)) as pool:
                futures = {i: pool.submit(fetch, infos[i]) for i in order}
            results = [futures[i].result() for i in range(len(infos))]

    images, videos, fps_list = [], [], []
    for info, result in zip(infos, results):
        if "image" in info or "image_url" in info:
            images.append(result)
        else:
            video, sample_fps = result
            videos.append(video)
            fps_list.append(sample_fps)
    images_out = images if images else None
    videos_out = videos if videos else None
    if not return_video_kwargs:
        return images_out, videos_out
    video_kwargs: dict[str, Any] = {"do_sample_frames": False}
    if not return_video_metadata:
        video_kwargs["fps"] = fps_list
    return images_out, videos_out, video_kwargs
