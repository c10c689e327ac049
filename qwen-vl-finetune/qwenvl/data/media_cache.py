"""A disk cache of processed media, so that every epoch after the first skips decoding, resizing and patchifying.

Training (``--media_cache DIR``) and ``qwenvl cache build`` (fill it before a multi-node job on a shared file
system) store each image and video item as the checkpoint's processor turns it into model inputs: the item resized by
qwen_vl_utils under the budget, then normalised and cut into patches by the processor's image or video processor
(its rows of ``pixel_values`` / ``pixel_values_videos`` and its ``grid_thw``), with a video's metadata (the sampled
frames' indices and fps, from which the processor writes timestamps). On a hit the encoder hands these rows to the
processor in place of its pixel work (:func:`qwenvl.data.encode.SampleEncoder`), which still renders and tokenises the
text: model inputs are bit-identical with and without the cache (tested for every family).

The patches are float32, but each channel's values come from 256 pixel levels: they are stored as one byte per value
and a 256-entry table per channel (a "palette"), which is exact by construction: the table is checked to give back
every float bit for bit before an entry is written, and an item whose values it would not give back (another
normalisation) is stored as float32. A cached item therefore takes the bytes of its resized pixels.

Layout::

    DIR/
      CACHEDIR.TAG
      stat/ab/<sha256 of the absolute path>.json   # {size, mtime_ns, ino, sha256, hashed_ns}: the stat pre-key
      entries/cd/<entry key>.qvm                     # one processed image or video

An entry's key is the SHA-256 of: the file's content hash (SHA-256; looked up by the stat pre-key, and computed
again whenever the file's size, mtime or inode changed, or when the file was modified within two seconds of being
hashed), the preprocessing fingerprint a checkpoint carries (family, patch size and the whole ``MediaBudget``: see
:mod:`qwenvl.model.preprocessing`), the processor's image or video processor settings (normalisation, patch and
merge sizes) and the transformers version, the item's own options (``max_pixels``, ``fps``, ``video_start``, ...),
the environment that changes qwen_vl_utils' output (``QWENVL_JPEG_DRAFT``, the video backend, ``MODEL_SEQ_LEN``),
the qwen_vl_utils version and this format's version. A changed file, budget, family, processor or option is
therefore a different key: a stale entry is never read (it ages out by LRU eviction).

An entry file::

    b"QVMCACHE" | u32 header length | u32 CRC-32 of the header | header (JSON) | payload

The header holds the key, kind, grid, the patches' shape and layout (palette or float32), codec, payload length and
the payload's CRC-32 (and a video's metadata); a truncated or corrupt entry fails one of these checks, is deleted and
rebuilt from the file, and is never handed to training. Writes go to a temporary file in the same folder, renamed
into place (atomic on POSIX and on NFS), so several workers and ranks may fill the same cache at once: the last
rename wins and every version is whole. A hit updates the entry's mtime (at most once a minute), and when the cache
outgrows ``max_bytes`` the least recently used entries are deleted down to 90%% of it.

Items whose source is not a local file (URLs, bytes, PIL images, frame lists) are processed as usual and not cached
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

FORMAT_VERSION = 2
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


PIXEL_KEYS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


@dataclass
class ProcessedItem:
    """One image or video as the processor's image or video processor outputs it on its own: its rows of patches
    (``pixel_values`` / ``pixel_values_videos``), its ``grid_thw`` row (shape ``(1, 3)``) and, for a video, the
    metadata qwen_vl_utils returned (sampled frames' indices, fps), from which the processor writes timestamps."""

    kind: str
    pixels: Any  # torch.Tensor (rows, channels x temporal patch x patch x patch), float32
    grid: Any  # torch.Tensor (1, 3), int64
    metadata: dict[str, Any] | None = None


def sub_processor(processor: Any, kind: str) -> Any:
    """The processor's image or video processor."""
    return processor.image_processor if kind == "image" else processor.video_processor


def process_media(processor: Any, kind: str, media: Any, metadata: dict[str, Any] | None) -> ProcessedItem:
    """Patches of one resized image or video (what :class:`qwenvl.data.encode.SampleEncoder` feeds the processor:
    no resize, no frame sampling). Rows of a sample's items processed together are these rows concatenated."""
    pixels_key, grid_key = PIXEL_KEYS[kind]
    if kind == "image":
        out = processor.image_processor(images=[media], do_resize=False, return_tensors="pt")
    else:
        out = processor.video_processor(
            videos=[media], video_metadata=[metadata], do_sample_frames=False, do_resize=False, return_tensors="pt"
        )
    return ProcessedItem(kind, out[pixels_key], out[grid_key], metadata)


@dataclass
class Palette:
    """Patches as one byte per value (the pixel level) and how each channel's levels map to floats: ``(level -
    shift[c]) / divisor[c]`` in float32 when ``affine`` (the processor's own normalisation, so decoding is two
    vectorised operations), else a 256-entry ``table[c]``. ``repeat`` temporal slots share one set of indices when
    they are equal (an image's patches hold it once per temporal slot)."""

    table: Any  # (channels, 256) float32
    indices: Any  # (rows, channels, rest // repeat) uint8
    repeat: int = 1
    affine: tuple[list[float], list[float]] | None = None  # (shift, divisor) per channel

    def decode(self, rows: int, width: int) -> Any:
        """The float32 patches ``(rows, width)``."""
        import numpy as np
        import torch

        idx = self.indices if isinstance(self.indices, torch.Tensor) else torch.from_numpy(self.indices)
        channels = idx.shape[1]
        out = torch.empty((rows, channels, self.repeat, idx.shape[2]), dtype=torch.float32)
        first = out[:, :, 0]
        if self.affine is not None:
            shift, divisor = (torch.tensor(v, dtype=torch.float32).reshape(1, channels, 1) for v in self.affine)
            first.copy_(idx).sub_(shift).div_(divisor)
        else:
            table = self.table.numpy() if isinstance(self.table, torch.Tensor) else self.table
            flat, levels = first.numpy(), idx.numpy()
            block = max(1, (1 << 20) // max(1, width))
            for start in range(0, rows, block):
                for c in range(channels):
                    np.take(table[c], levels[start : start + block, c], out=flat[start : start + block, c])
        for t in range(1, self.repeat):
            out[:, :, t].copy_(first)
        return out.reshape(rows, width)


def palette_encode(pixels: Any, settings: Any) -> Palette | None:
    """The patches as a :class:`Palette` that gives them back bit for bit, or None when they are not 256 levels
    per channel (then they are stored as float32).

    ``pixels`` is ``(rows, channels x temporal x patch x patch)``, channel outermost in a row (the layout of Qwen's
    patches); ``settings`` the image or video processor, whose normalisation maps each pixel level to one float per
    channel. The indices are found by undoing the normalisation and rounding. The levels map back by that
    normalisation as the processor computes it (fused: ``(level - mean / rescale) / (std / rescale)``) or, if any
    value differs, by a table of the values seen at each index. Either way the decoded palette is compared with every
    value before it is used.
    """
    import torch

    mean_list = settings.image_mean if isinstance(settings.image_mean, (list, tuple)) else [settings.image_mean] * 3
    channels = len(mean_list)
    if pixels.dtype != torch.float32 or pixels.ndim != 2 or pixels.shape[1] % channels:
        return None
    n, width = pixels.shape
    rows = pixels.reshape(n, channels, -1)
    scale = settings.rescale_factor if settings.do_rescale else 1.0
    mean = torch.tensor(mean_list, dtype=torch.float32).reshape(1, channels, 1)
    std_list = settings.image_std if isinstance(settings.image_std, (list, tuple)) else [settings.image_std] * channels
    std = torch.tensor(std_list, dtype=torch.float32).reshape(1, channels, 1)
    if not settings.do_normalize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    levels = rows * std
    levels += mean
    levels /= scale
    indices = levels.round_().clamp_(0, 255).to(torch.uint8)
    del levels
    repeat = int(getattr(settings, "temporal_patch_size", 1) or 1)
    if repeat > 1 and rows.shape[2] % repeat == 0:
        slots = indices.reshape(n, channels, repeat, -1)
        if all(torch.equal(slots[:, :, 0], slots[:, :, t]) for t in range(1, repeat)):
            indices = slots[:, :, 0].contiguous()
        else:
            repeat = 1
    else:
        repeat = 1
    exact = pixels.view(torch.int32)
    shift, divisor = mean * (1.0 / scale), std * (1.0 / scale)
    ramp = torch.arange(256, dtype=torch.float32).reshape(1, 1, 256)
    table = ((ramp - shift) / divisor).reshape(channels, 256).contiguous()
    palette = Palette(table, indices, repeat, (shift.reshape(-1).tolist(), divisor.reshape(-1).tolist()))
    if palette.decode(n, width).view(torch.int32).equal(exact):
        return palette
    offsets = torch.arange(channels).reshape(1, channels, 1) * 256
    seen = torch.zeros(channels * 256, dtype=torch.float32)
    first = rows.reshape(n, channels, repeat, -1)[:, :, 0]
    seen.scatter_(0, (indices.to(torch.int64) + offsets).reshape(-1), first.reshape(-1))
    palette = Palette(seen.reshape(channels, 256), indices, repeat)
    if palette.decode(n, width).view(torch.int32).equal(exact):
        return palette
    return None


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
    """Processed media on disk, keyed by content, preprocessing and processor (see the module doc).

    Args:
        root: the cache folder (created).
        settings: the preprocessing fingerprint (family, patch size, budget) the media are resized for.
        processor: the checkpoint's processor, whose image and video processors cut the media into patches.
        max_bytes: size bound; None for no bound.
        codec: ``auto`` (zstd when the ``zstandard`` package is installed, else zlib), ``none``, ``zlib``, ``zstd``.
            Compressed payloads are kept only when at most 90%% of the raw size.
    """

    def __init__(
        self,
        root: str | Path,
        settings: PreprocessingSettings,
        processor: Any,
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
        self.processor = processor
        self.processor_fingerprint = {
            kind: _processor_fingerprint(sub_processor(processor, kind)) for kind in PIXEL_KEYS
        }
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
             "processor": self.processor_fingerprint[kind], "options": options, "env": _environment(kind, item)},
            sort_keys=True, default=str,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / f"{key}.qvm"

    # ------------------------------------------------------------------------------------------------ load

    def process(self, kind: str, item: dict[str, Any]) -> ProcessedItem:
        """``item`` loaded through qwen_vl_utils and processed, without the cache."""
        media, metadata = fetch_item(kind, item, self.settings.patch_size)
        return process_media(self.processor, kind, media, metadata)

    def load(self, kind: str, item: dict[str, Any]) -> tuple[ProcessedItem, Outcome]:
        """``item`` processed (from the cache, or through qwen_vl_utils and the processor, then stored):
        ``(processed item, outcome)``. ``item`` must already carry the budget (``MediaBudget.image_item`` /
        ``video_item``)."""
        path = local_path(item_source(kind, item))
        if path is None or not os.path.isfile(path):
            processed = self.process(kind, item)  # a missing file raises here, as without the cache
            self._count("bypassed")
            return processed, "bypass"
        key = self.key(kind, item, self.content_hash(path))
        entry = self.entry_path(key)
        try:
            processed = self.read(entry, key)
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
            return processed, "hit"
        processed = self.process(kind, item)
        self._count("misses")
        self.write(entry, key, processed)
        return processed, "miss"

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    # ------------------------------------------------------------------------------------------------ entries

    def read(self, entry: Path, key: str) -> ProcessedItem:
        """Decode an entry file, checking its magic, lengths, CRCs and key.

        Raises:
            FileNotFoundError: no such entry. CorruptEntry: the file fails a check.
        """
        import numpy as np
        import torch

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
        rows, width = header["shape"]
        if header["layout"] == "palette":
            channels, repeat = header["channels"], header["repeat"]
            table_len = channels * 256 * 4
            if width % (channels * repeat) or len(payload) != table_len + rows * width // repeat:
                raise CorruptEntry("payload size does not match the shape")
            table = np.frombuffer(payload[:table_len], dtype=np.float32).reshape(channels, 256).copy()
            indices = np.frombuffer(payload[table_len:], dtype=np.uint8).reshape(rows, channels, -1)
            affine = header.get("affine")
            pixels = Palette(table, indices, repeat, tuple(affine) if affine else None).decode(rows, width)
        else:
            if len(payload) != rows * width * 4:
                raise CorruptEntry("payload size does not match the shape")
            pixels = torch.from_numpy(np.frombuffer(payload, dtype=np.float32).reshape(rows, width).copy())
        grid = torch.tensor([header["grid"]], dtype=torch.int64)
        if int(grid.prod()) != rows:
            raise CorruptEntry(f"grid {header['grid']} does not match {rows} patch rows")
        self._touch(entry)
        return ProcessedItem(header["kind"], pixels, grid, header.get("metadata"))

    def encode_entry(self, key: str, processed: ProcessedItem) -> bytes:
        """The bytes of an entry file: the patches as a palette where that is exact, else as float32."""
        import numpy as np

        header: dict[str, Any] = {"version": FORMAT_VERSION, "key": key, "kind": processed.kind,
                                  "grid": [int(v) for v in processed.grid.reshape(-1).tolist()]}  # fmt: skip
        if processed.metadata is not None:
            header["metadata"] = json.loads(json.dumps(processed.metadata, default=_jsonable))
        pixels = processed.pixels.contiguous()
        header["shape"] = list(pixels.shape)
        palette = palette_encode(pixels, sub_processor(self.processor, processed.kind))
        payload: bytes | memoryview
        if palette is not None:
            header.update(layout="palette", channels=int(palette.table.shape[0]), repeat=palette.repeat,
                          affine=palette.affine)  # fmt: skip
            payload = memoryview(b"".join((memoryview(palette.table.numpy()).cast("B"),
                                           memoryview(np.ascontiguousarray(palette.indices.numpy())).cast("B"))))  # fmt: skip
        else:
            header["layout"] = "float32"
            payload = memoryview(pixels.numpy()).cast("B")
        header["codec"] = "none"
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

    def write(self, entry: Path, key: str, processed: ProcessedItem) -> None:
        """Store an entry atomically (tmp + rename), then evict if the cache outgrew its bound."""
        if self._read_only:
            return
        data = self.encode_entry(key, processed)
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


def _processor_fingerprint(settings: Any) -> dict[str, Any]:
    """What of an image or video processor changes its patches (all its settings), and the transformers version."""
    import transformers

    config = settings.to_dict() if hasattr(settings, "to_dict") else dict(vars(settings))
    return {"transformers": transformers.__version__, "class": type(settings).__name__,
            "config": json.loads(json.dumps(config, sort_keys=True, default=str))}  # fmt: skip


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
