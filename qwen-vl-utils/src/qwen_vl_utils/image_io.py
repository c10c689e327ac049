"""Image sources and decoding: paths, file:// and http(s) URLs, data: URIs, bytes and PIL images.

This module imports only PIL, numpy-free code and requests, so fetching images does not pay for torch.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import os
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

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
        total_timeout: seconds for the whole fetch (connection, retries, headers and body); a server that trickles
            bytes or never answers costs at most this.
        block_private: refuse URLs whose host resolves to a loopback, private, link-local or otherwise
            non-public address, redirects included (for servers that fetch URLs given by users).
        retries: retries on connection errors and 5xx / 429 responses (0 disables).
        backoff: base of the exponential backoff between retries, in seconds.
        max_bytes: largest body accepted; a larger one raises instead of filling memory.
        user_agent: the ``User-Agent`` header.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 30.0
    block_private: bool = False
    retries: int = 3
    backoff: float = 0.5
    max_bytes: int = 256 * 1024 * 1024
    user_agent: str = "qwen-vl-utils"


def _env_http_config() -> HttpConfig:
    cfg = HttpConfig()
    env = {
        "QWENVL_HTTP_CONNECT_TIMEOUT": ("connect_timeout", float),
        "QWENVL_HTTP_READ_TIMEOUT": ("read_timeout", float),
        "QWENVL_HTTP_TOTAL_TIMEOUT": ("total_timeout", float),
        "QWENVL_HTTP_BLOCK_PRIVATE": ("block_private", lambda v: v.strip().lower() in ("1", "true", "yes", "on")),
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


def check_public_url(url: str) -> None:
    """Raise :class:`VisionInputError` unless every address ``url``'s host resolves to is public (not loopback,
    private, link-local, multicast, reserved or unspecified)."""
    import ipaddress
    import socket

    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname
    if not host:
        raise VisionInputError(f"URL {url!r} has no host")
    try:
        infos = socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OSError as e:
        raise VisionInputError(f"could not fetch {url}: cannot resolve {host!r} ({e})") from e
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise VisionInputError(
                f"refused to fetch {url}: {host} resolves to the non-public address {address} "
                "(QWENVL_HTTP_BLOCK_PRIVATE is on)"
            )


def _fetch_once(url: str, cfg: HttpConfig, holder: dict[str, Any]) -> bytes:
    current = url
    for _ in range(6):  # redirects are followed here, so each hop is checked when private hosts are refused
        if cfg.block_private:
            check_public_url(current)
        resp = _session().get(
            current, stream=True, timeout=(cfg.connect_timeout, cfg.read_timeout), allow_redirects=False
        )
        holder["resp"] = resp
        with resp:
            if resp.is_redirect:
                current = urllib.parse.urljoin(current, resp.headers["Location"])
                continue
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
    raise VisionInputError(f"could not fetch {url}: more than 5 redirects")


def _abort(resp: Any) -> None:
    """Shut down the socket under a response that another thread is reading: its blocked read returns at once
    (closing the response instead would wait for the read, which holds the buffer's lock)."""
    import socket

    raw = getattr(resp, "raw", None)
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def fetch_url_bytes(url: str) -> bytes:
    """GET ``url`` with the configured timeouts, retries and size cap, within ``total_timeout`` in all.

    The fetch runs in a helper thread; when the total deadline passes, its connection is closed and the caller
    gets the error at once (a thread still waiting to connect ends by itself within its connect timeout).

    Raises:
        VisionInputError: unreachable, an http error status, a timeout, a body over ``max_bytes``, or (with
            ``block_private``) a non-public address.
    """
    import requests

    cfg = http_config()
    holder: dict[str, Any] = {}
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["data"] = _fetch_once(url, cfg, holder)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="qwen-vl-utils-fetch", daemon=True)
    worker.start()
    worker.join(cfg.total_timeout)
    if worker.is_alive():
        _abort(holder.get("resp"))
        raise VisionInputError(
            f"timed out fetching {url}: no complete answer within {cfg.total_timeout:g} s in all "
            "(raise QWENVL_HTTP_TOTAL_TIMEOUT or configure_http(total_timeout=...))"
        )
    error = outcome.get("error")
    if error is None:
        return outcome["data"]
    if isinstance(error, VisionInputError):
        raise error
    if isinstance(error, requests.RequestException):
        if not (isinstance(error, requests.Timeout) or "timed out" in str(error)):
            raise VisionInputError(f"could not fetch {url}: {error}") from error
        raise VisionInputError(
            f"timed out fetching {url} (connect {cfg.connect_timeout}s, read {cfg.read_timeout}s): {error}"
        ) from error
    raise VisionInputError(f"could not fetch {url}: {type(error).__name__}: {error}") from error


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
    except Image.DecompressionBombError as e:
        raise _bomb_error(source, e) from e
    except OSError as e:
        raise VisionInputError(f"cannot open image {describe(source)}: {e}") from e


class ImageTooLargeError(VisionInputError):
    """The image's declared size is over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""


def _bomb_error(source: Any, error: Exception) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image {describe(source)} is too large to decode safely ({error}); if you trust it, raise "
        "PIL.Image.MAX_IMAGE_PIXELS"
    )


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


def _draft_enabled() -> bool:
    return os.environ.get("QWENVL_JPEG_DRAFT", "1").strip().lower() not in ("0", "false", "no", "off")


def _uses_draft(image: Image.Image, target: tuple[int, int] | None) -> bool:
    if not (_draft_enabled() and target is not None and image.format == "JPEG"):
        return False
    if image.mode not in ("RGB", "L", "CMYK", "YCbCr"):
        return False
    return target[0] * 2 <= image.size[0] and target[1] * 2 <= image.size[1]


def decoded_pixels(image: Image.Image, target: tuple[int, int] | None) -> int:
    """Pixels :func:`decode_image` will hold: a reduced-scale JPEG decode holds the source divided by the largest
    DCT scale (2, 4 or 8) that still covers ``target``; everything else, the full source."""
    width, height = image.size
    if not _uses_draft(image, target):
        return width * height
    scale = next(s for s in (8, 4, 2, 1) if -(-width // s) >= target[0] and -(-height // s) >= target[1])
    return -(-width // scale) * -(-height // scale)


def decode_image(image: Image.Image, source: Any, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode an opened image to RGB; ``source`` is only used in error messages.

    With ``target=(width, height)`` a JPEG decodes at reduced DCT scale when the target is at most half the
    source, which is several times faster and stays within about 0.7/255 (mean) of a full decode + resize.
    """
    try:
        if _uses_draft(image, target):
            image.draft("RGB", target)
        image.load()
    except Image.DecompressionBombError as e:
        raise _bomb_error(source, e) from e
    except OSError as e:
        raise VisionInputError(f"cannot decode image {describe(source)} (corrupt or truncated?): {e}") from e
    return to_rgb(image)


class PixelGate:
    """Bounds the decoded pixels in flight across threads: ``hold(n)`` waits until ``n`` more pixels fit under
    ``limit`` (an item larger than the limit waits until it is alone). ``limit <= 0`` disables the gate."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if self.limit <= 0:
            yield
            return
        need = min(pixels, self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight + need <= self.limit)
            self.in_flight += need
        try:
            yield
        finally:
            if pixels >= TRIM_AFTER_PIXELS:
                release_free_memory()
            with self._cond:
                self.in_flight -= need
                self._cond.notify_all()


TRIM_AFTER_PIXELS = 16_000_000
_libc: Any = None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere). Each decoding thread has its
    own malloc arena, and the large blocks of a freed image stay in it: without this, 8 threads decoding huge
    images one after the other still end with 8 arenas of that size."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_gate_lock = threading.Lock()
_gate: PixelGate | None = None


def decode_gate() -> PixelGate:
    """The process-wide gate on decoded pixels in flight (``QWENVL_MAX_PIXELS_IN_FLIGHT``, default 128 million,
    about 0.5 GB of RGB: two 45-megapixel photos or ten 12-megapixel ones decode at once, a 144-megapixel PNG
    alone). A reduced-scale JPEG decode counts the pixels it really holds."""
    global _gate
    with _gate_lock:
        limit = int(os.environ.get("QWENVL_MAX_PIXELS_IN_FLIGHT", str(128_000_000)))
        if _gate is None or _gate.limit != limit:
            _gate = PixelGate(limit)
        return _gate


# PIL image blocks (16 MB each by default) kept for reuse while a batch is fetched: freed blocks of one photo are
# handed to the next instead of going back to the OS and being faulted in (and zeroed) again, which was about an
# eighth of the CPU time of 8 large photos (benchmarks/RESULTS.md). Bounded, and released when the batch ends.
REUSE_BLOCKS_BYTES = 256 * 1024 * 1024
_blocks_lock = threading.Lock()
_blocks_users = 0
_blocks_before = 0


@contextlib.contextmanager
def reuse_image_blocks() -> Iterator[None]:
    """Let PIL cache up to ``REUSE_BLOCKS_BYTES`` of freed image blocks for the duration of the block (a batch);
    nested and concurrent uses share one setting, and the caller's own setting is put back by the last to leave
    (which frees the cached blocks when that setting is smaller)."""
    global _blocks_users, _blocks_before
    core = Image.core
    if not (hasattr(core, "get_blocks_max") and hasattr(core, "set_blocks_max")):
        yield
        return
    with _blocks_lock:
        if _blocks_users == 0:
            _blocks_before = core.get_blocks_max()
            wanted = max(_blocks_before, REUSE_BLOCKS_BYTES // max(1, core.get_block_size()))
            core.set_blocks_max(wanted)
        _blocks_users += 1
    try:
        yield
    finally:
        with _blocks_lock:
            _blocks_users -= 1
            if _blocks_users == 0:
                core.set_blocks_max(_blocks_before)


_big_lock = threading.Lock()
_big_pool: Any = None


def _big_decoder() -> Any:
    global _big_pool
    with _big_lock:
        if _big_pool is None:
            import concurrent.futures

            _big_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-vl-utils-big")
        return _big_pool


def _decode_and_resize(
    header: Image.Image, source: Any, target: tuple[int, int] | None, size: tuple[int, int]
) -> Image.Image:
    image = decode_image(header, source, target)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


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
    # A caller's own PIL image is never decoded at reduced scale: draft() would shrink the caller's object.
    target = None if header is source else (resized_width, resized_height)
    size = (resized_width, resized_height)
    gate = decode_gate()
    pixels = decoded_pixels(header, target)
    with gate.hold(pixels):  # the decoded pixels live until the resize is done
        if gate.limit > 0 and pixels * 2 >= gate.limit:
            # Images too large to share the gate decode on one dedicated thread, so their memory is reused from
            # one malloc arena instead of growing one arena per fetch thread.
            image = _big_decoder().submit(_decode_and_resize, header, source, target, size).result()
        else:
            image = _decode_and_resize(header, source, target, size)
        header = None
    if image is source:
        image = image.copy()  # never hand back the caller's own object
    return image
