"""qwen_vl_utils: image and video inputs for Qwen-VL models (drop-in for upstream qwen-vl-utils 0.0.14)."""

from qwen_vl_utils.image_io import HttpConfig, ImageTooLargeError, VisionInputError, configure_http, http_config
from qwen_vl_utils.vision_process import (
    extract_vision_info,
    fetch_image,
    fetch_video,
    get_video_reader_backend,
    process_vision_info,
    smart_nframes,
    smart_resize,
)


__version__ = "0.1.0"

__all__ = [
    "HttpConfig",
    "ImageTooLargeError",
    "VisionInputError",
    "configure_http",
    "extract_vision_info",
    "fetch_image",
    "fetch_video",
    "get_video_reader_backend",
    "http_config",
    "process_vision_info",
    "smart_nframes",
    "smart_resize",
]
