"""Video decoding with bounded memory: only the sampled frames are decoded, and each is resized as it arrives.

Backends: ``torchcodec``, ``decord`` and ``pyav`` (PyAV is a required dependency, so one always exists), and
``torchvision`` where the installed release still has ``torchvision.io.read_video`` (before 0.22; forcing it on a
newer release raises a clear error; it is never picked automatically). Every backend is fed the same probe (frame count, fps, size, rotation from PyAV) and
the same frame indices, so the returned frames and metadata do not depend on the backend.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import importlib.util
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from qwen_vl_utils.image_io import (
    VisionInputError,
    decode_image,
    describe,
    fetch_url_bytes,
    file_url_to_path,
    open_image,
)
from qwen_vl_utils.resize import (
    FPS,
    FRAME_FACTOR,
    calculate_video_frame_range,
    ceil_by_factor,
    image_target_size,
    smart_nframes,
    video_target_size,
)


logger = logging.getLogger(__name__)

BACKENDS = ("torchcodec", "decord", "pyav", "torchvision")
# Tried in this order when no backend is named. PyAV comes first: it decodes the same 8-bit frames as torchcodec
# bit for bit, converts 10-bit sources more accurately, and skips the non-reference frames that no sample needs,
# which makes it the fastest here (benchmarks/RESULTS.md). Upstream's order was torchcodec, decord, torchvision.
AUTO_ORDER = ("pyav", "torchcodec", "decord")
MAX_NUM_WORKERS_FETCH_VIDEO = 8
# Frames per torchcodec/decord call; decoding runs one such chunk ahead of the resize. 2 rather than 8: the 300 s
# video on decord peaked at 3.05 GB with 8 and 2.75 GB with 2, in the same time (torchcodec 2.90 / 2.88 GB).
DECODE_CHUNK = 2
# Decoded full-resolution frames (6 MB each at 1080p) a single PyAV decoder may run ahead of the resize.
PREFETCH_FRAMES = 8
# PyAV decoders run at once on separate keyframe intervals (QWENVL_DECODE_WORKERS overrides; 1: one decoder).
DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class VideoProbe:
    """What a video file holds, as every backend will see it (rotation already applied to width/height)."""

    total_frames: int
    fps: float
    width: int
    height: int
    rotation: int
    # The packet scan behind total_frames and fps: presentation timestamps in order and keyframe indices (reused by
    # the PyAV decoder, so the file's packets are read once); empty when the probe did not scan.
    frame_pts: tuple[int, ...] = field(default=(), repr=False)
    keyframes: tuple[int, ...] = field(default=(), repr=False)


class DecodeTimeoutError(VisionInputError):
    """Decoding a video took longer than ``decode_timeout`` (or ``QWENVL_VIDEO_DECODE_TIMEOUT``)."""


class _Deadline:
    """A cooperative decode timeout, checked between frames."""

    def __init__(self, seconds: float | None, what: str) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise DecodeTimeoutError(
                f"decoding {self.what} took longer than {self.seconds}s; raise ele['decode_timeout'] or "
                "QWENVL_VIDEO_DECODE_TIMEOUT"
            )


# ----------------------------------------------------------------------------------------------------------------
# Backend selection


def _backend_available(name: str) -> bool:
    if name == "pyav":
        return importlib.util.find_spec("av") is not None
    if name == "decord":
        return importlib.util.find_spec("decord") is not None
    if name == "torchcodec":
        if importlib.util.find_spec("torchcodec") is None:
            return False
        try:  # the wheel links the system FFmpeg; a missing library only shows at import
            importlib.import_module("torchcodec.decoders")
        except Exception as e:  # noqa: BLE001 - any load failure means "not usable here"
            logger.info("torchcodec is installed but cannot load (%s); it will not be used", e)
            return False
        return True
    if name == "torchvision":
        try:
            import torchvision.io
        except ImportError:
            return False
        return hasattr(torchvision.io, "read_video")
    return False


_availability: dict[str, bool] = {}


def is_backend_available(name: str) -> bool:
    """Whether a backend can be used in this environment (memoised per process)."""
    if name not in _availability:
        _availability[name] = _backend_available(name)
    return _availability[name]


_INSTALL_HINT = {
    "torchcodec": "pip install 'qwen-vl-utils[torchcodec]' (and FFmpeg 4-8 libraries, e.g. apt-get install ffmpeg)",
    "decord": "pip install 'qwen-vl-utils[decord]'",
    "pyav": "pip install av",
    "torchvision": "install a torchvision release that still has torchvision.io.read_video (< 0.22), "
    "or use torchcodec / decord / pyav",
}


def get_video_reader_backend(requested: str | None = None) -> str:
    """The backend to use: ``requested``, else ``FORCE_QWENVL_VIDEO_READER`` (read now), else the first of
    ``AUTO_ORDER`` (pyav, torchcodec, decord) that works here.

    Raises:
        ValueError: an unknown backend name.
        ImportError: the named backend is not usable here (the message says how to install it).
    """
    forced = requested or os.environ.get("FORCE_QWENVL_VIDEO_READER") or None
    if forced is not None:
        if forced not in BACKENDS:
            raise ValueError(f"unknown video reader backend {forced!r}; choose one of {', '.join(BACKENDS)}")
        if not is_backend_available(forced):
            raise ImportError(f"video reader backend {forced!r} is not usable here: {_INSTALL_HINT[forced]}")
        return forced
    for name in AUTO_ORDER:
        if is_backend_available(name):
            return name
    raise ImportError("no video reader backend is usable: " + _INSTALL_HINT["pyav"])


def _fallback_backend(failed: str) -> str | None:
    """The next usable backend after ``failed`` in ``AUTO_ORDER``, for one retry after a decoder failure."""
    later = AUTO_ORDER[AUTO_ORDER.index(failed) + 1 :] if failed in AUTO_ORDER else ()
    return next((name for name in later if is_backend_available(name)), None)


# ----------------------------------------------------------------------------------------------------------------
# Probe and decode


def probe_video(path: str) -> VideoProbe:
    """Frame count, average fps, display size and rotation of the first video stream, via PyAV.

    The count and fps come from the stream's packets (no decoding), the way upstream's default reader (torchcodec,
    which scans the file) gets them: the frames are the packets, and the fps is their number over the span from the
    first presentation timestamp to the end of the last frame. The header's average rate, which is what a VFR clip
    differs on (a 60 s clip: 19.83 against 19.72, and 118 sampled frames instead of upstream's 120), is used only
    when the packets carry no timing."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VisionInputError(f"{path!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            header_fps = float(rate) if rate else 0.0
            pts, keyframes, span = _scan_packets(container, stream)
            container.seek(0)
            first = next(container.decode(stream), None)
            if first is None:
                raise VisionInputError(f"{path!r} has no decodable video frames")
            rotation = int(getattr(first, "rotation", 0) or 0) % 360
            width, height = first.width, first.height
            header_frames, duration, time_base = stream.frames, stream.duration, stream.time_base
    except av.FFmpegError as e:
        raise VisionInputError(f"cannot read video {path!r} (corrupt, truncated or unsupported?): {e}") from e
    if rotation in (90, 270):
        width, height = height, width
    total = len(pts) or header_frames
    fps = total / span if span > 0 else header_fps
    if fps <= 0 and duration and time_base:
        fps = total / float(duration * time_base)
    if fps <= 0 or total <= 0:
        raise VisionInputError(f"video {path!r} reports fps={fps} and {total} frames; it cannot be sampled")
    return VideoProbe(
        total_frames=int(total), fps=fps, width=int(width), height=int(height), rotation=rotation,
        frame_pts=tuple(pts), keyframes=tuple(keyframes),
    )  # fmt: skip


def frame_indices(start: int, end: int, nframes: int) -> list[int]:
    """Evenly spaced frame indices, computed exactly as upstream (float32 ``torch.linspace`` rounded half-to-even)."""
    import torch

    return torch.linspace(start, end, nframes).round().long().tolist()


class _FrameResizer:
    """Bicubic + antialias resize of uint8 CHW frames into float32 slots with integer values: exactly the ops
    upstream's ``torchvision.transforms.functional.resize`` applies to the whole stack (uint8 -> float32,
    ``interpolate`` bicubic with antialias, clamp to 0..255, round), then its ``.float()``, without importing
    torchvision (about 170 MB and half a second) and without the uint8 round trip.

    The full-resolution float32 frame (25 MB at 1080p) is one buffer reused for every frame, and the kernel writes
    straight into the output slot: allocating those per frame let the C allocator return them to the kernel and
    fault them back in on some runs (4x the page faults, a 1.4x slower call, benchmarks/RESULTS.md)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.planar: Any = None

    def into(self, slot: Any, frame: Any) -> None:
        import torch

        if tuple(frame.shape[-2:]) == self.size:
            slot.copy_(frame)
            return
        if self.planar is None or self.planar.shape != frame.shape:
            self.planar = torch.empty(frame.shape, dtype=torch.float32)
        # Planar, converted in one pass: PyAV and decord give HWC frames (a CHW view of them is strided), and the
        # kernel runs about a fifth slower on that layout (same result, bit for bit).
        self.planar.copy_(frame)
        # F.interpolate(..., mode="bicubic", antialias=True) with a size and no scale factor, written into the slot.
        torch.ops.aten._upsample_bicubic2d_aa.out(self.planar[None], list(self.size), False, None, None,
                                                  out=slot[None])  # fmt: skip
        slot.clamp_(0, 255).round_()


def _decode_torchcodec(path: str, indices: list[int], probe: VideoProbe, deadline: _Deadline) -> Iterator[Any]:
    from torchcodec.decoders import VideoDecoder

    threads = int(os.environ.get("TORCHCODEC_NUM_THREADS", 8))
    decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NCHW")
    for i in range(0, len(indices), DECODE_CHUNK):
        deadline.check()
        batch = decoder.get_frames_at(indices=indices[i : i + DECODE_CHUNK]).data
        yield from batch


def _decode_decord(path: str, indices: list[int], probe: VideoProbe, deadline: _Deadline) -> Iterator[Any]:
    import decord
    import torch

    reader = decord.VideoReader(path, num_threads=0)
    for i in range(0, len(indices), DECODE_CHUNK):
        deadline.check()
        batch = torch.from_numpy(reader.get_batch(indices[i : i + DECODE_CHUNK]).asnumpy())
        yield from batch.permute(0, 3, 1, 2)


def _scan_packets(container: Any, stream: Any) -> tuple[list[int], list[int], float]:
    """From packets only: the presentation timestamps of every frame in order, the indices of the keyframes, and the
    span in seconds from the first timestamp to the end of the last frame (timestamp + duration), as torchcodec's
    scan measures it."""
    pts, key_pts = [], set()
    start = end = None
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            key_pts.add(packet.pts)
        start = packet.pts if start is None else min(start, packet.pts)
        stop = packet.pts + (packet.duration or 0)
        end = stop if end is None else max(end, stop)
    pts.sort()
    index_of = {p: i for i, p in enumerate(pts)}
    span = float((end - start) * stream.time_base) if pts and stream.time_base else 0.0
    return pts, sorted(index_of[p] for p in key_pts) or [0], span


def _rotate(frame: Any, rotation: int) -> Any:
    import torch

    return torch.rot90(frame, k=rotation // 90, dims=(1, 2)) if rotation else frame


def _decode_skipping(container: Any, stream: Any, seek_pts: int, wanted: set[int]) -> Iterator[Any]:
    """Frames from the keyframe at or before ``seek_pts`` on. A packet whose frame no sample needs is decoded with
    ``skip_frame=NONREF``: the decoder drops it unless other frames reference it (most B-frames go), so the wanted
    frames come out exactly as in a full decode while a large share of the decoding work is never done."""
    container.seek(seek_pts, stream=stream, backward=True, any_frame=False)  # also flushes the decoder
    context = stream.codec_context
    for packet in container.demux(stream):
        context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
        yield from packet.decode()


def _keyframe_before(keyframes: list[int], index: int) -> int:
    """The last keyframe at or before frame ``index`` (sorted ``keyframes``; the first if none is)."""
    import bisect

    return keyframes[max(0, bisect.bisect_right(keyframes, index) - 1)]


def _pyav_table(path: str, probe: VideoProbe | None = None) -> tuple[list[int], list[int]]:
    """Frame timestamps and keyframe indices: the probe's scan when it has one, else a scan of ``path``."""
    if probe is not None and probe.frame_pts:
        return list(probe.frame_pts), list(probe.keyframes)
    import av

    with av.open(path) as container:
        pts, keyframes, _ = _scan_packets(container, container.streams.video[0])
        return pts, keyframes


def _pyav_targets(
    path: str,
    table: tuple[list[int], list[int]],
    targets: list[int],
    wanted_pts: set[int],
    rotation: int,
    deadline: _Deadline,
    threads: int = 0,
) -> Iterator[tuple[int, Any]]:
    """``(index, uint8 CHW frame)`` for each of the sorted, distinct frame ``targets``, in order: decoding seeks to
    the keyframe before a target when that skips work, and skips unneeded non-reference frames (see
    ``_decode_skipping``). ``threads`` is the decoder's thread count (0: FFmpeg's choice)."""
    import av
    import torch

    pts, keyframes = table
    index_of = {p: i for i, p in enumerate(pts)}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        # Opened before the first packet, with nothing skipped: some decoders read skip_frame only when they open
        # (libdav1d), and a decoder opened at a non-wanted packet under NONREF would skip wanted AV1 frames for good.
        stream.codec_context.skip_frame = "DEFAULT"
        stream.codec_context.open()
        decoded: Iterator[Any] | None = None
        position = -1  # index of the last decoded frame
        for target in targets:
            if target >= len(pts):
                raise VisionInputError(f"frame {target} is beyond the {len(pts)} frames found in {path!r}")
            keyframe = _keyframe_before(keyframes, target)
            if decoded is None or keyframe > position:
                decoded = _decode_skipping(container, stream, pts[keyframe], wanted_pts)
            for frame in decoded:
                deadline.check()
                if frame.pts not in index_of:
                    continue
                position = index_of[frame.pts]
                if position >= target:
                    break
            else:
                raise VisionInputError(f"video {path!r} ended before frame {target} (truncated?)")
            if position != target:
                raise VisionInputError(f"decoder skipped frame {target} of {path!r} (got frame {position})")
            yield target, _rotate(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1), rotation)


def _split_by_keyframe(targets: list[int], keyframes: list[int], parts: int) -> list[list[int]]:
    """Split sorted ``targets`` into at most ``parts`` contiguous runs, cut only where a new keyframe starts (so
    no frame is decoded twice) and balanced by the frames each run must decode (keyframe to last target)."""
    runs: list[tuple[int, list[int]]] = []  # (keyframe, targets decoded from it)
    for target in targets:
        key = _keyframe_before(keyframes, target)
        if runs and runs[-1][0] == key:
            runs[-1][1].append(target)
        else:
            runs.append((key, [target]))
    costs = [group[-1] - key + 1 for key, group in runs]
    total, acc = sum(costs), 0
    split: list[list[int]] = [[]]
    for (_, group), cost in zip(runs, costs):
        # Start the next part once this run's midpoint would pass the current part's share of the total.
        if split[-1] and len(split) < parts and acc + cost / 2 > total * len(split) / parts:
            split.append([])
        split[-1].extend(group)
        acc += cost
    return split


def _fill_pyav(
    path: str, indices: list[int], probe: VideoProbe, deadline: _Deadline, out: Any, size: tuple[int, int]
) -> None:
    """Decode and resize ``indices`` into ``out`` with up to ``DECODE_WORKERS`` PyAV decoders at once, each on its
    own stretch of keyframe intervals (independent by construction) and each resizing its own frames on one torch
    thread: on 2 cores that keeps both busy where one frame-threaded decoder plus a resize left a third idle. A
    video with one keyframe interval (a screen recording, a short clip) gets one decoder with FFmpeg's threads."""
    from collections import defaultdict

    table = _pyav_table(path, probe)
    slots: dict[int, list[int]] = defaultdict(list)
    for position, index in enumerate(indices):
        slots[index].append(position)
    targets = sorted(slots)
    wanted = {table[0][i] for i in targets if i < len(table[0])}
    workers = int(os.environ.get("QWENVL_DECODE_WORKERS", DECODE_WORKERS))
    parts = _split_by_keyframe(targets, table[1], max(1, workers))
    threads = 0 if len(parts) == 1 else max(1, (os.cpu_count() or 1) // len(parts))
    failed = threading.Event()

    def fill(frames: Iterator[tuple[int, Any]]) -> None:
        resizer = _FrameResizer(size)
        try:
            for index, frame in frames:
                if failed.is_set():  # another decoder failed: its error is the one raised
                    return
                for position in slots[index]:
                    resizer.into(out[position], frame)
        except BaseException:
            failed.set()
            raise

    if len(parts) == 1:  # one decoder: it runs ahead in a thread while this one resizes
        fill(_prefetched(_pyav_targets(path, table, targets, wanted, probe.rotation, deadline), PREFETCH_FRAMES))
        return
    # The pool's threads start inside _one_intraop_thread's window, so their torch ops run on one thread each.
    with concurrent.futures.ThreadPoolExecutor(len(parts), "qwen-vl-utils-decode") as pool:
        futures = [
            pool.submit(fill, _pyav_targets(path, table, part, wanted, probe.rotation, deadline, threads))
            for part in parts
        ]
    for future in futures:
        future.result()


def _decode_torchvision(path: str, indices: list[int], probe: VideoProbe, deadline: _Deadline) -> Iterator[Any]:
    """torchvision releases that still have ``io.read_video``: one call per sampled frame, bounded to that frame's
    timestamp, so only the sampled frames (and the run from their keyframe) are decoded."""
    import torchvision.io

    pts, _ = _pyav_table(path, probe)
    for index in indices:
        deadline.check()
        if index >= len(pts):
            raise VisionInputError(f"frame {index} is beyond the {len(pts)} frames found in {path!r}")
        frames, _, _ = torchvision.io.read_video(
            path, start_pts=pts[index], end_pts=pts[index], pts_unit="pts", output_format="TCHW"
        )
        if len(frames) == 0:
            raise VisionInputError(f"torchvision returned no frame {index} from {path!r} (truncated?)")
        yield _rotate(frames[0], probe.rotation)


# In-order frame iterators of the other backends (PyAV fills the output itself: _fill_pyav).
_DECODERS: dict[str, Callable[[str, list[int], VideoProbe, _Deadline], Iterator[Any]]] = {
    "torchcodec": _decode_torchcodec,
    "decord": _decode_decord,
    "torchvision": _decode_torchvision,
}


def _local_video_path(source: str) -> tuple[str, str | None]:
    """A local path for ``source``; http(s) videos are downloaded (with the http limits) to a temp file."""
    if source.startswith(("http://", "https://")):
        data = fetch_url_bytes(source)
        suffix = os.path.splitext(source.split("?", 1)[0])[1][:8]
        fd, tmp = tempfile.mkstemp(suffix=suffix or ".mp4", prefix="qwenvl-video-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return tmp, tmp
    path = file_url_to_path(source) if source.startswith("file://") else source
    if not os.path.isfile(path):
        raise VisionInputError(f"video file not found: {path!r}")
    return path, None


def _decode_timeout(ele: dict[str, Any]) -> float | None:
    value = ele.get("decode_timeout", os.environ.get("QWENVL_VIDEO_DECODE_TIMEOUT"))
    if value is None or value == "":
        return None
    return float(value)


@dataclass(frozen=True)
class VideoPlan:
    """What ``fetch_video`` will do with a local video: which frames, at which size (no pixel decoded)."""

    probe: VideoProbe
    start: int
    end: int
    count: int
    nframes: int
    indices: list[int]
    height: int
    width: int
    backend: str | None = None  # the backend whose frame count and fps the plan uses (None: the probe's)


def backend_probe(path: str, probe: VideoProbe, backend: str | None) -> VideoProbe:
    """``probe`` with the frame count and fps that ``backend`` reports for the file, as upstream's reader of that
    backend takes them: decord's own ``len(vr)`` and ``vr.get_avg_fps()`` (on a variable-frame-rate clip its
    average rate is not the packets' timing, e.g. 20.1342 against 20.0445); torchcodec's scan and PyAV's packets
    are the probe's own numbers."""
    if backend != "decord":
        return probe
    import dataclasses

    import decord

    reader = decord.VideoReader(path, num_threads=0)
    total, fps = len(reader), float(reader.get_avg_fps())
    del reader
    if fps <= 0 or total <= 0:
        raise VisionInputError(f"decord reports fps={fps} and {total} frames for {path!r}; it cannot be sampled")
    return dataclasses.replace(probe, total_frames=total, fps=fps)


def plan_video(path: str, ele: dict[str, Any], image_patch_size: int = 14, backend: str | None = None) -> VideoPlan:
    """The sampling and resize decisions for a local video file under ``ele``'s options (probe only), with the frame
    count and fps of ``backend`` (default: the one ``fetch_video`` would use for ``ele``), so the plan is the
    frames that backend's ``fetch_video`` returns."""
    backend = backend or get_video_reader_backend(ele.get("video_reader_backend"))
    probe = backend_probe(path, probe_video(path), backend)
    start, end, count = calculate_video_frame_range(ele, probe.total_frames, probe.fps)
    nframes = smart_nframes(ele, total_frames=count, video_fps=probe.fps)
    height, width = video_target_size(probe.height, probe.width, nframes, ele, image_patch_size)
    indices = frame_indices(start, end, nframes)
    return VideoPlan(probe, start, end, count, nframes, indices, height, width, backend)


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of an error, without the C++ source paths some decoders append."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def read_video(ele: dict[str, Any], image_patch_size: int = 14) -> tuple[Any, dict[str, Any], float]:
    """Decode the sampled frames of ``ele['video']`` (a path or URL), resized, as float32 TCHW.

    Returns:
        ``(video, metadata, sample_fps)``; metadata has ``fps``, ``frames_indices`` (absolute),
        ``total_num_frames`` and ``duration`` (of the sampled range), ``width``, ``height`` and ``video_backend``.
    """
    import torch

    source = ele["video"]
    path, tmp = _local_video_path(source)
    try:
        requested = ele.get("video_reader_backend")
        backend = get_video_reader_backend(requested)
        plan = plan_video(path, ele, image_patch_size, backend)
        probe, count, nframes, indices = plan.probe, plan.count, plan.nframes, plan.indices
        height, width = plan.height, plan.width
        deadline = _Deadline(_decode_timeout(ele), f"video {source!r}")
        started = time.monotonic()
        try:
            video = _decode_resized(path, indices, probe, backend, (height, width), deadline)
        except VisionInputError:
            raise
        except Exception as e:  # noqa: BLE001 - a decoder failure, not a user error (those were checked above)
            fallback = None if requested or os.environ.get("FORCE_QWENVL_VIDEO_READER") else _fallback_backend(backend)
            if fallback is None:
                raise VisionInputError(f"{backend} failed to decode {source!r}: {_first_line(e)}") from e
            logger.warning("%s failed to decode %r (%s); decoding with %s instead", backend, source, e, fallback)
            try:
                if backend_probe(path, probe, fallback) != probe:  # decord: its own frame count and fps
                    plan = plan_video(path, ele, image_patch_size, fallback)
                    probe, count, nframes, indices = plan.probe, plan.count, plan.nframes, plan.indices
                    height, width = plan.height, plan.width
                video = _decode_resized(path, indices, probe, fallback, (height, width), deadline)
            except DecodeTimeoutError:
                raise
            except Exception as e2:  # noqa: BLE001 - both decoders failed: one error naming both
                raise VisionInputError(
                    f"cannot decode video {source!r}: {backend} failed ({_first_line(e)}), and {fallback} failed "
                    f"too ({_first_line(e2)})"
                ) from e2
            backend = fallback
        logger.debug(
            "%s: video=%s total_frames=%d fps=%.3f nframes=%d size=%dx%d time=%.3fs",
            backend, describe(source), probe.total_frames, probe.fps, nframes, width, height,
            time.monotonic() - started,
        )  # fmt: skip
    finally:
        if tmp is not None:
            os.unlink(tmp)
    metadata = {
        "fps": probe.fps,
        "frames_indices": indices,
        # The sampled range, as upstream's decord/torchcodec readers report it: HF processors compute the sampled
        # fps as len(frames_indices) / total_num_frames * fps (Qwen2.5-VL's second_per_grid_ts).
        "total_num_frames": count,
        "duration": count / probe.fps,
        "width": probe.width,
        "height": probe.height,
        "video_backend": backend,
    }
    sample_fps = nframes / max(count, 1e-6) * probe.fps
    assert video.dtype == torch.float32 and video.shape[0] == nframes
    return video, metadata, sample_fps


def _prefetched(frames: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``frames`` in a background thread, at most ``depth`` decoded frames ahead, so decoding (native code
    that releases the GIL) overlaps with resizing; exceptions are re-raised in the caller's thread."""
    import queue

    done = object()
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                while not stop.is_set():
                    try:
                        q.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextlib.contextmanager
def _one_intraop_thread() -> Iterator[None]:
    """Run the calling thread's torch ops on one thread while it resizes beside a decoder.

    The decoder's own threads already keep the cores busy; a second OpenMP team for each resize competed with them
    and spun while waiting (1.3x the CPU time and a slower call on 2 cores, benchmarks/RESULTS.md). torch has no
    per-call setting, so the thread's count is set to 1 and put back afterwards; the count that new threads start
    with is left as the first of overlapping calls found it."""
    import torch

    global _threads_users, _threads_before
    mine = torch.get_num_threads()
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = mine
        _threads_users += 1
    torch.set_num_threads(1)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            torch.set_num_threads(_threads_before if _threads_users == 0 else mine)


def _decode_resized(
    path: str, indices: list[int], probe: VideoProbe, backend: str, size: tuple[int, int], deadline: _Deadline
) -> Any:
    """Fill a preallocated float32 (T, 3, H, W) tensor frame by frame, so memory is the output plus a few decoded
    frames (decoding runs ahead of resizing, in a thread; resizing runs on one torch thread meanwhile)."""
    import torch

    out = torch.empty((len(indices), 3, *size), dtype=torch.float32)
    if backend == "pyav":
        with _one_intraop_thread():
            _fill_pyav(path, list(indices), probe, deadline, out, size)
        return out
    resizer = _FrameResizer(size)
    n = 0
    with _one_intraop_thread():
        for frame in _prefetched(_DECODERS[backend](path, list(indices), probe, deadline), DECODE_CHUNK):
            if n >= len(indices):
                raise RuntimeError(f"{backend} returned more frames than the {len(indices)} requested")
            resizer.into(out[n], frame)
            n += 1
    if n != len(indices):
        raise VisionInputError(f"{backend} returned {n} of {len(indices)} requested frames from {path!r}")
    return out


def read_frame_list(ele: dict[str, Any], image_patch_size: int = 14) -> tuple[Any, dict[str, Any], float]:
    """A video given as a list of images: each frame is decoded and resized once, straight to the final size."""
    import numpy as np
    import torch

    frames: Sequence[Any] = ele["video"]
    if len(frames) == 0:
        raise VisionInputError("video frame list is empty")
    info = {k: v for k, v in ele.items() if k not in ("type", "video")}
    sample_fps = info.get("sample_fps", FPS)
    if isinstance(sample_fps, bool) or not isinstance(sample_fps, (int, float)) or sample_fps <= 0:
        raise VisionInputError(f"sample_fps must be a positive number, got {sample_fps!r}")
    raw_fps = info.get("raw_fps", sample_fps)
    nframes = ceil_by_factor(len(frames), FRAME_FACTOR)

    def final_size(header: Any, source: Any) -> tuple[int, int]:
        w, h = header.size
        try:
            # Upstream (git HEAD) first fits each frame as an image, then fits the stack to the video budget.
            h1, w1 = image_target_size(h, w, info, image_patch_size)
            return video_target_size(h1, w1, nframes, info, image_patch_size)
        except ValueError as e:
            raise VisionInputError(f"video frame {describe(source)}: {e}") from e

    headers = [open_image(f) for f in frames]
    sizes = [final_size(hd, src) for hd, src in zip(headers, frames)]
    if len(set(sizes)) > 1:
        raise VisionInputError(
            f"video frames resize to different sizes {sorted(set(sizes))}; all frames of a video must have the "
            "same size (crop or resize them first)"
        )
    height, width = sizes[0]
    out = torch.empty((nframes, 3, height, width), dtype=torch.float32)

    def load(i: int) -> None:
        # No target for a caller's own PIL image: a draft() would shrink the caller's object.
        image = decode_image(headers[i], frames[i], None if headers[i] is frames[i] else (width, height))
        if image.size != (width, height):
            from PIL import Image

            image = image.resize((width, height), Image.Resampling.BICUBIC)
        out[i].copy_(torch.from_numpy(np.array(image)).permute(2, 0, 1))

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_NUM_WORKERS_FETCH_VIDEO, len(frames))) as pool:
        list(pool.map(load, range(len(frames))))
    if nframes > len(frames):
        out[len(frames) :] = out[len(frames) - 1]
    metadata = {
        "fps": raw_fps,
        "frames_indices": list(range(nframes)),
        "total_num_frames": round(nframes / sample_fps * raw_fps),
        "video_backend": "frames",
    }
    return out, metadata, float(sample_fps)
