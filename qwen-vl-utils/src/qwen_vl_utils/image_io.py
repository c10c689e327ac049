"""Image sources and decoding: paths, file:// and http(s) URLs, data: URIs, bytes and PIL images.

This module imports only PIL, numpy-free code and requests, so fetching images does not pay for torch.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from qwen_vl_utils.resize import image_target_size


logger = logging.getLogger(__name__)


class VisionInputError(ValueError):
    """A vision input could not be used; the message names the input and the reason."""


@dataclass(frozen=True)
class HttpConfig:
    """How http(s) media are fetched. Change it with :func:`configure_http`.

    Attributes:
        connect_timeout: seconds to wait for the TCP/TLS connection.
        read_timeout: seconds to wait between bytes of the response.
        retries: retries on connection errors and 5xx / 429 responses (0 disables).
        backoff: base of the exponential backoff between retries, in seconds.
        max_bytes: largest body accepted; a larger one raises instead of filling memory.
        user_agent: the ``User-Agent`` header.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    max_bytes: int = 256 * 1024 * 1024
    user_agent: str = "qwen-vl-utils"


def _env_http_config() -> HttpConfig:
    cfg = HttpConfig()
    env = {
        "QWENVL_HTTP_CONNECT_TIMEOUT": ("connect_timeout", float),
        "QWENVL_HTTP_READ_TIMEOUT": ("read_timeout", float),
        "QWENVL_HTTP_RETRIES": ("retries", int),
        "QWENVL_HTTP_MAX_BYTES": ("max_bytes", int),
    }
    for var, (field, cast) in env.items():
        if os.environ.get(var):
            cfg = replace(cfg, **{field: cast(os.environ[var])})
    return cfg


_http_lock = threading.Lock()
_http_config: HttpConfig | None = None
_http_session: Any = None


def configure_http(**changes: Any) -> HttpConfig:
    """Change the http settings (see :class:`HttpConfig`) for this process and return the new settings."""
    global _http_config, _http_session
    with _http_lock:
        _http_config = replace(_http_config or _env_http_config(), **changes)
        _http_session = None
        return _http_config


def http_config() -> HttpConfig:
    """The current http settings (env vars ``QWENVL_HTTP_*`` apply until :func:`configure_http` is called)."""
    return _http_config or _env_http_config()


def _session() -> Any:
    """One shared ``requests.Session`` with retries, so connections are pooled across fetches and threads."""
    global _http_session
    with _http_lock:
        if _http_session is None:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            cfg = _http_config or _env_http_config()
            retry = Retry(
                total=cfg.retries,
                connect=cfg.retries,
                read=cfg.retries,
                status=cfg.retries,
                backoff_factor=cfg.backoff,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=frozenset({"GET", "HEAD"}),
                raise_on_status=False,
            )
            session = requests.Session()
            adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = cfg.user_agent
            _http_session = session
        return _http_session


def fetch_url_bytes(url: str) -> bytes:
    """GET ``url`` with the configured timeouts, retries and size cap.

    Raises:
        VisionInputError: unreachable, an http error status, a timeout, or a body over ``max_bytes``.
    """
    import requests

    cfg = http_config()
    try:
        with _session().get(url, stream=True, timeout=(cfg.connect_timeout, cfg.read_timeout)) as resp:
            if resp.status_code >= 400:
                raise VisionInputError(f"could not fetch {url}: HTTP {resp.status_code} {resp.reason}")
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > cfg.max_bytes:
                raise VisionInputError(
                    f"{url} is {int(declared)} bytes, over the limit of {cfg.max_bytes}; "
                    "raise it with qwen_vl_utils.configure_http(max_bytes=...) or QWENVL_HTTP_MAX_BYTES"
                )
            buf = bytearray()
            for chunk in resp.iter_content(chunk_size=1 << 16):
                buf += chunk
                if len(buf) > cfg.max_bytes:
                    raise VisionInputError(
                        f"{url} sent more than {cfg.max_bytes} bytes; raise the limit with "
                        "qwen_vl_utils.configure_http(max_bytes=...) or QWENVL_HTTP_MAX_BYTES"
                    )
            return bytes(buf)
    except requests.RequestException as e:
        if not (isinstance(e, requests.Timeout) or "timed out" in str(e)):
            raise VisionInputError(f"could not fetch {url}: {e}") from e
        raise VisionInputError(
            f"timed out fetching {url} (connect {cfg.connect_timeout}s, read {cfg.read_timeout}s): {e}"
        ) from e


def file_url_to_path(url: str) -> str:
    """``file://`` URL to a local path, percent-decoding and handling Windows drive letters."""
    parsed = urllib.parse.urlparse(url)
    path = urllib.request.url2pathname(parsed.path)
    if parsed.netloc and parsed.netloc != "localhost":
        path = f"//{parsed.netloc}{path}"
    return path


def decode_data_url(url: str) -> bytes:
    """The payload of a ``data:`` URL (base64 or percent-encoded)."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise VisionInputError(f"data URL has no ',' separating header and payload: {url[:64]!r}...")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise VisionInputError(f"data URL has invalid base64 payload ({e}): {url[:64]!r}...") from e
    return urllib.parse.unquote_to_bytes(payload)


def describe(source: Any) -> str:
    """A short, log-safe description of an input (data URLs and bytes are not printed whole)."""
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, str) and source.startswith("data:"):
        return f"{source[:40]}...<{len(source)} chars>"
    if isinstance(source, Image.Image):
        return f"<PIL.Image mode={source.mode} size={source.size}>"
    return repr(source)


def image_source(ele: dict[str, Any]) -> Any:
    """The source of an image item: ``image`` or ``image_url`` (a string or OpenAI-style ``{"url": ...}``)."""
    if "image" in ele:
        source = ele["image"]
    elif "image_url" in ele:
        source = ele["image_url"]
    else:
        raise VisionInputError(f"image item has neither 'image' nor 'image_url': {sorted(ele)}")
    if isinstance(source, dict):
        if "url" not in source:
            raise VisionInputError(f"image_url dict must have a 'url' key, got keys {sorted(source)}")
        source = source["url"]
    return source


def open_image(source: Any) -> Image.Image:
    """Open ``source`` lazily (header only; pixels are decoded by :func:`decode_image`).

    Accepts a PIL image, bytes, a local path or ``Path``, a ``file://``/``http(s)://``/``data:`` URL.
    """
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(source)))
        if isinstance(source, Path):
            source = str(source)
        if not isinstance(source, str):
            raise VisionInputError(
                f"Unrecognized image input {describe(source)} of type {type(source).__name__}; "
                "support local path, file:// / http(s) URL, data URL, bytes and PIL.Image"
            )
        if source.startswith(("http://", "https://")):
            return Image.open(io.BytesIO(fetch_url_bytes(source)))
        if source.startswith("data:"):
            return Image.open(io.BytesIO(decode_data_url(source)))
        path = file_url_to_path(source) if source.startswith("file://") else source
        if not os.path.isfile(path):
            raise VisionInputError(f"image file not found: {path!r}")
        return Image.open(path)
    except UnidentifiedImageError as e:
        raise VisionInputError(f"cannot identify image {describe(source)}: not a supported image format") from e
    except OSError as e:
        raise VisionInputError(f"cannot open image {describe(source)}: {e}") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to RGB. Transparency (RGBA, LA, PA, P with tRNS) is composited on white; 16-bit is scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale 0..65535 to 0..255 (PIL's convert would clip everything above 255 to white).
        image = image.point(lambda v: v * (1 / 257)).convert("L")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def decode_image(image: Image.Image, source: Any, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode an opened image to RGB; ``source`` is only used in error messages.

    With ``target=(width, height)`` a JPEG decodes at reduced DCT scale when the target is at most half the
    source, which is several times faster and stays within about 0.7/255 (mean) of a full decode + resize.
    """
    try:
        if target is not None and image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
            w, h = image.size
            if target[0] * 2 <= w and target[1] * 2 <= h:
                image.draft("RGB", target)
        image.load()
    except OSError as e:
        raise VisionInputError(f"cannot decode image {describe(source)} (corrupt or truncated?): {e}") from e
    return to_rgb(image)


def fetch_image(ele: dict[str, Any], image_patch_size: int = 14) -> Image.Image:
    """Load the image of a message item and resize it for a Qwen-VL model.

    Args:
        ele: a content item with ``image`` or ``image_url`` and optionally ``min_pixels``/``max_pixels`` or
            ``resized_height``/``resized_width``.
        image_patch_size: 14 for Qwen2/2.5-VL, 16 for Qwen3-VL.

    Returns:
        An RGB ``PIL.Image`` whose sides are multiples of ``2 * image_patch_size``.

    Raises:
        VisionInputError (a ``ValueError``): missing file, unreachable URL, undecodable data, unsupported
            type, or an aspect ratio over 200; the message names the input.
    """
    source = image_source(ele)
    header = open_image(source)
    width, height = header.size
    try:
        resized_height, resized_width = image_target_size(height, width, ele, image_patch_size)
    except ValueError as e:
        raise VisionInputError(f"image {describe(source)}: {e}") from e
    image = decode_image(header, source, (resized_width, resized_height))
    if image.size != (resized_width, resized_height):
        image = image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)
    elif image is source:
        image = image.copy()  # never hand back the caller's own object
    return image
