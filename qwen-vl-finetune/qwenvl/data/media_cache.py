"""A disk cache of resized media, so that every epoch after the first skips decoding and resizing.

Training (``--media_cache DIR``) and ``qwenvl cache build`` (fill it before a multi-node job on a shared file
system) store each image and video item exactly as qwen_vl_utils hands it to the processor: the resized RGB image
(uint8) or the sampled, resized frames (float32 with integer values, kept as uint8 when that is exact, else as
float32) and the video's metadata. Model inputs are bit-identical with and without the cache.

Layout::

    DIR/
      CACHEDIR.TAG
      stat/ab/<sha256 of the absolute path>.json   # {size, mtime_ns, ino, sha256, hashed_ns}: the stat pre-key
      entries/cd/<entry key>.qvm                     # one resized image or video

An entry's key is the SHA-256 of: the file's content hash (SHA-256; looked up by the stat pre-key, and computed
again whenever the file's size, mtime or inode changed, or when the file was modified within two seconds of being
hashed), the preprocessing fingerprint a checkpoint carries (family, patch size and the whole ``MediaBudget``: see
:mod:`qwenvl.model.preprocessing`), the item's own options (``max_pixels``, ``fps``, ``video_start``, ...), the
environment that changes qwen_vl_utils' output (``QWENVL_JPEG_DRAFT``, the video backend, ``MODEL_SEQ_LEN``), the
qwen_vl_utils version and this format's version. A changed file, budget, family or option is therefore a different
key: a stale entry is never read (it ages out by LRU eviction).

An entry file::

    b"QVMCACHE" | u32 header length | u32 CRC-32 of the header | header (JSON) | payload

The header holds the key, kind, dtype, shape, codec, payload length and the payload's CRC-32 (and a video's
metadata); a truncated or corrupt entry fails one of these checks, is deleted and rebuilt from the file, and is
never handed to training. Writes go to a temporary file in the same folder, renamed into place (atomic on POSIX and
on NFS), so several workers and ranks may fill the same cache at once: the last rename wins and every version is
whole. A hit updates the entry's mtime (at most once a minute), and when the cache outgrows ``max_bytes`` the
least recently used entries are deleted down to 90%% of it.

Items whose source is not a local file (URLs, bytes, PIL images, frame lists) are loaded as usual and not cached
("bypassed" in the statistics).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qwenvl.model.preprocessing import PreprocessingSettings


logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"QVMCACHE"
_PREFIX = struct.Struct("<8sII")  # magic, header length, header CRC-32
Codec = Literal["auto", "none", "zlib", "zstd"]
Outcome = Literal["hit", "miss", "bypass"]
# Compression is kept only where it pays: at most this share of the raw size.
COMPRESSION_PAYS = 0.9
# A file modified this close to when it was hashed may change again within the same mtime tick: hash it again.
RACY_NS = 2_000_000_000
TOUCH_EVERY_S = 60.0
CACHEDIR_TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# qwenvl media cache (see qwenvl/data/media_cache.py)\n"


class CorruptEntry(Exception):
    """An entry file failed a check (magic, lengths, CRC, key); it is rebuilt."""


@dataclass
class CacheStats:
    """What this process did with the cache."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    corrupt: int = 0
    written_bytes: int = 0
    evicted: int = 0
    write_errors: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def local_path(source: Any) -> str | None:
    """The local file path of a media source, or None for URLs, in-memory data and frame lists."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        return None
    if source.startswith("file://"):
        from qwen_vl_utils.image_io import file_url_to_path

        return file_url_to_path(source)
    if source.startswith(("http://", "https://", "data:")):
        return None
    return source


def item_source(kind: str, item: dict[str, Any]) -> Any:
    if kind == "image":
        from qwen_vl_utils.image_io import image_source

        return image_source(item)
    return item.get("video")


def fetch_item(kind: str, item: dict[str, Any], patch_size: int) -> tuple[Any, dict[str, Any] | None]:
    """Load one item through qwen_vl_utils: ``(PIL image, None)`` or ``(float32 TCHW frames, metadata)``."""
    from qwen_vl_utils import fetch_image, fetch_video

    if kind == "image":
        return fetch_image(item, image_patch_size=patch_size), None
    video, metadata = fetch_video(item, patch_size, return_video_metadata=True)
    return video, metadata


def _environment(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """The settings outside the item and the budget that change qwen_vl_utils' output."""
    import qwen_vl_utils

    env: dict[str, Any] = {"qwen_vl_utils": qwen_vl_utils.__version__}
    if kind == "image":
        from qwen_vl_utils.image_io import _draft_enabled

        env["jpeg_draft"] = _draft_enabled()
    else:
        from qwen_vl_utils.video_io import get_video_reader_backend

        env["backend"] = get_video_reader_backend(item.get("video_reader_backend"))
        env["model_seq_len"] = os.environ.get("MODEL_SEQ_LEN")
    return env


class MediaCache:
    """Resized media on disk, keyed by content and preprocessing (see the module doc).

    Args:
        root: the cache folder (created).
        settings: the preprocessing fingerprint (family, patch size, budget) the media are resized for.
        max_bytes: size bound; None for no bound.
        codec: ``auto`` (zstd when the ``zstandard`` package is installed, else zlib), ``none``, ``zlib``, ``zstd``.
            Compressed payloads are kept only when at most 90%% of the raw size.
    """

    def __init__(
        self,
        root: str | Path,
        settings: PreprocessingSettings,
        max_bytes: int | None = None,
        codec: Codec = "auto",
    ) -> None:
        if codec not in ("auto", "none", "zlib", "zstd"):
            raise ValueError(f"codec must be auto, none, zlib or zstd, got {codec!r}")
        if codec == "zstd" and _zstd() is None:
            raise ValueError("codec zstd needs the zstandard package (pip install zstandard), or use zlib")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"the media cache size bound must be positive, got {max_bytes} bytes")
        self.root = Path(root)
        self.settings = settings
        self.max_bytes = max_bytes
        self.codec = ("zstd" if _zstd() is not None else "zlib") if codec == "auto" else codec
        fingerprint = settings.to_dict()
        fingerprint.pop("model_max_length", None)  # truncation happens after the media: not part of it
        self.fingerprint = fingerprint
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._hashes: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (stat triple, sha256)
        self._approx_bytes: int | None = None
        self._read_only = False
        (self.root / "entries").mkdir(parents=True, exist_ok=True)
        (self.root / "stat").mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            try:
                self._atomic_write(tag, CACHEDIR_TAG.encode())
            except OSError:
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ keys

    def content_hash(self, path: str) -> str:
        """SHA-256 of the file's bytes, looked up by its stat (size, mtime, inode) and computed when that changed."""
        path = os.path.abspath(path)
        st = os.stat(path)
        triple = (st.st_size, st.st_mtime_ns, st.st_ino)
        memo = self._hashes.get(path)
        if memo is not None and memo[0] == triple:
            return memo[1]
        name = hashlib.sha256(path.encode()).hexdigest()
        index = self.root / "stat" / name[:2] / f"{name}.json"
        try:
            saved = json.loads(index.read_text())
            if (
                saved.get("path") == path
                and (saved["size"], saved["mtime_ns"], saved["ino"]) == triple
                and saved["hashed_ns"] - saved["mtime_ns"] >= RACY_NS
            ):
                self._hashes[path] = (triple, saved["sha256"])
                return saved["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        hashed_ns = time.time_ns()
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ino) != triple:
            return digest  # changed while being read: use it, remember nothing
        record = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
                  "sha256": digest, "hashed_ns": hashed_ns}  # fmt: skip
        if hashed_ns - st.st_mtime_ns >= RACY_NS:
            self._hashes[path] = (triple, digest)
            try:
                index.parent.mkdir(exist_ok=True)
                self._atomic_write(index, json.dumps(record).encode())
            except OSError:
                pass  # a read-only cache: the hash is computed again next time
        return digest

    def key(self, kind: str, item: dict[str, Any], content: str) -> str:
        """The entry key of ``item`` (already carrying the budget) whose file has the content hash ``content``."""
        options = {k: v for k, v in item.items() if k not in ("image", "image_url", "video", "type")}
        blob = json.dumps(
            {"v": FORMAT_VERSION, "kind": kind, "content": content, "fingerprint": self.fingerprint,
             "options": options, "env": _environment(kind, item)},
            sort_keys=True, default=str,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / f"{key}.qvm"

    # ------------------------------------------------------------------------------------------------ load

    def load(self, kind: str, item: dict[str, Any]) -> tuple[Any, dict[str, Any] | None, Outcome]:
        """``item`` loaded (from the cache, or through qwen_vl_utils and then stored): ``(media, metadata,
        outcome)``. ``item`` must already carry the budget (``MediaBudget.image_item`` / ``video_item``)."""
        patch = self.settings.patch_size
        path = local_path(item_source(kind, item))
        if path is None or not os.path.isfile(path):
            media, metadata = fetch_item(kind, item, patch)  # a missing file raises here, as without the cache
            self._count("bypassed")
            return media, metadata, "bypass"
        key = self.key(kind, item, self.content_hash(path))
        entry = self.entry_path(key)
        try:
            media, metadata = self.read(entry, key)
        except FileNotFoundError:
            pass
        except (CorruptEntry, OSError, ValueError) as e:
            logger.warning("media cache: %s is corrupt (%s); rebuilding it from %s", entry, e, path)
            self._count("corrupt")
            try:
                entry.unlink()
            except OSError:
                pass
        else:
            self._count("hits")
            return media, metadata, "hit"
        media, metadata = fetch_item(kind, item, patch)
        self._count("misses")
        self.write(entry, key, kind, media, metadata)
        return media, metadata, "miss"

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    # ------------------------------------------------------------------------------------------------ entries

    def read(self, entry: Path, key: str) -> tuple[Any, dict[str, Any] | None]:
        """Decode an entry file, checking its magic, lengths, CRCs and key.

        Raises:
            FileNotFoundError: no such entry. CorruptEntry: the file fails a check.
        """
        import numpy as np

        with open(entry, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            got = f.readinto(data)
        if got != len(data) or len(data) < _PREFIX.size:
            raise CorruptEntry(f"truncated ({got} bytes)")
        magic, header_len, header_crc = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise CorruptEntry("bad magic")
        start = _PREFIX.size + header_len
        if start > len(data):
            raise CorruptEntry("truncated header")
        raw_header = bytes(data[_PREFIX.size : start])
        if zlib.crc32(raw_header) != header_crc:
            raise CorruptEntry("header checksum mismatch")
        header = json.loads(raw_header)
        if header.get("key") != key or header.get("version") != FORMAT_VERSION:
            raise CorruptEntry("key or version mismatch")
        payload = memoryview(data)[start:]
        if len(payload) != header["payload_len"]:
            raise CorruptEntry(f"payload is {len(payload)} bytes, header says {header['payload_len']}")
        if zlib.crc32(payload) != header["crc32"]:
            raise CorruptEntry("payload checksum mismatch")
        codec = header["codec"]
        if codec == "zlib":
            payload = memoryview(bytearray(zlib.decompress(payload)))
        elif codec == "zstd":
            zstd = _zstd()
            if zstd is None:
                raise CorruptEntry("entry is zstd-compressed but the zstandard package is not installed")
            payload = memoryview(bytearray(zstd.ZstdDecompressor().decompress(payload)))
        array = np.frombuffer(payload, dtype=header["dtype"])
        shape = tuple(header["shape"])
        if array.size != int(np.prod(shape)):
            raise CorruptEntry("payload size does not match the shape")
        array = array.reshape(shape)
        self._touch(entry)
        if header["kind"] == "image":
            from PIL import Image

            return Image.fromarray(array, header["mode"]), None
        import torch

        return torch.from_numpy(array).to(torch.float32), header["metadata"]

    def encode_entry(self, key: str, kind: str, media: Any, metadata: dict[str, Any] | None) -> bytes | None:
        """The bytes of an entry file, or None for media this format does not hold (an unusual image mode)."""
        import numpy as np

        header: dict[str, Any] = {"version": FORMAT_VERSION, "key": key, "kind": kind}
        if kind == "image":
            if media.mode not in ("RGB", "L", "RGBA"):
                return None
            array = np.asarray(media)
            header["mode"] = media.mode
        else:
            import torch

            as_u8 = media.to(torch.uint8)
            # Frames are float32 with integer values 0-255 (qwen_vl_utils rounds and clamps): uint8 is exact then.
            array = as_u8.numpy() if torch.equal(as_u8.to(media.dtype), media) else media.contiguous().numpy()
            header["metadata"] = json.loads(json.dumps(metadata, default=_jsonable))
        raw = np.ascontiguousarray(array)
        payload: bytes | memoryview = memoryview(raw).cast("B")
        header.update(dtype=str(raw.dtype), shape=list(raw.shape), codec="none")
        packed = self._compress(payload)
        if packed is not None and len(packed) <= COMPRESSION_PAYS * len(payload):
            payload, header["codec"] = packed, self.codec
        header.update(payload_len=len(payload), crc32=zlib.crc32(payload))
        raw_header = json.dumps(header).encode()
        return _PREFIX.pack(MAGIC, len(raw_header), zlib.crc32(raw_header)) + raw_header + bytes(payload)

    def _compress(self, payload: memoryview) -> bytes | None:
        """The compressed payload, or None when compression would not pay. Noisy photos hardly compress (zlib
        keeps ~95%% of their bytes) and compressing them costs more time than decoding them, so three 64 KB probes
        (start, middle, end) are compressed first and the whole only when they shrink to ``COMPRESSION_PAYS``."""
        if self.codec == "none":
            return None
        compress = (
            (lambda b: zlib.compress(b, 1)) if self.codec == "zlib" else _zstd().ZstdCompressor(level=3).compress
        )
        n, probe = len(payload), 1 << 16
        if n > 4 * probe:
            sample = b"".join(bytes(payload[i : i + probe]) for i in (0, n // 2, n - probe))
            if len(compress(sample)) > COMPRESSION_PAYS * len(sample):
                return None
        return compress(payload)

    def write(self, entry: Path, key: str, kind: str, media: Any, metadata: dict[str, Any] | None) -> None:
        """Store an entry atomically (tmp + rename), then evict if the cache outgrew its bound."""
        if self._read_only:
            return
        data = self.encode_entry(key, kind, media, metadata)
        if data is None:
            return
        try:
            entry.parent.mkdir(exist_ok=True)
            self._atomic_write(entry, data)
        except OSError as e:
            self._count("write_errors")
            if not self._read_only:
                logger.warning("media cache %s is not writable (%s); reading it only", self.root, e)
            self._read_only = True
            return
        self._count("written_bytes", len(data))
        if self.max_bytes is not None:
            with self._lock:
                if self._approx_bytes is None:
                    self._approx_bytes = self.disk_usage()
                else:
                    self._approx_bytes += len(data)
                over = self._approx_bytes > self.max_bytes
            if over:
                self.evict()

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise

    def _touch(self, entry: Path) -> None:
        """Mark an entry used (LRU by mtime; atime is often not kept), at most once a minute per entry."""
        try:
            if time.time() - entry.stat().st_mtime > TOUCH_EVERY_S:
                os.utime(entry)
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------------ size

    def _entry_files(self) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every entry; temporary files of writers dead for an hour are removed."""
        out = []
        now = time.time()
        for sub in os.scandir(self.root / "entries"):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if e.name.endswith(".tmp"):
                    if now - st.st_mtime > 3600:
                        try:
                            os.unlink(e.path)
                        except OSError:
                            pass
                    continue
                out.append((st.st_mtime, st.st_size, Path(e.path)))
        return out

    def disk_usage(self) -> int:
        """Bytes of entry files."""
        return sum(size for _, size, _ in self._entry_files())

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used entries until the cache holds at most ``target`` bytes (default 90%% of
        ``max_bytes``); returns how many were deleted. Safe while other processes read and write: a reader that
        opened an entry keeps reading it, and one that finds it gone loads the file again."""
        if target is None:
            if self.max_bytes is None:
                return 0
            target = int(self.max_bytes * 0.9)
        files = sorted(self._entry_files())
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, path in files:
            if total <= target:
                break
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass  # another process evicted it
            except OSError:
                break
            total -= size
        with self._lock:
            self._approx_bytes = total
        self._count("evicted", removed)
        if removed:
            logger.info("media cache: evicted %d least recently used entries; %.1f MB left", removed, total / 1e6)
        return removed


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
