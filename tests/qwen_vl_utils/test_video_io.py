"""fetch_video on generated clips with every backend that installs here: same frames, indices and metadata
across backends, upstream's algorithm as an oracle, frame lists, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_vl_utils import VisionInputError, fetch_video, get_video_reader_backend, process_vision_info
from qwen_vl_utils.video_io import is_backend_available
from tests.conftest import missing_prerequisite


BACKENDS = [b for b in ("torchcodec", "decord", "pyav") if is_backend_available(b)]


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        missing_prerequisite("ffmpeg is not installed (scripts/setup.sh installs it)")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {
        "plain": root / "plain.mp4",  # 320x240, 4 s at 30 fps, GOP 30, B-frames (libx264 default)
        "rotated": root / "rotated.mp4",
        "fps25": root / "fps25.mp4",
        "truncated": root / "truncated.mp4",
        # Variable frame rate, 6 s: decord's average rate (21.0) is not the packets' timing (20.28)
        "vfr": root / "vfr.mp4",
    }
    src = "testsrc2=size=320x240:rate=30:duration=4"
    _ffmpeg("-f", "lavfi", "-i", src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "30", str(out["plain"]))
    _ffmpeg("-i", str(out["plain"]), "-c", "copy", "-metadata:s:v", "rotate=90", str(out["rotated"]))
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=256x144:rate=25:duration=3", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        str(out["fps25"]),
    )  # fmt: skip
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=6", "-vf", "select='lt(mod(n,30),18)+eq(mod(n,7),0)'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", str(out["vfr"]),
    )  # fmt: skip
    data = out["plain"].read_bytes()
    out["truncated"].write_bytes(data[: len(data) // 3])
    return out


def _upstream_oracle(path: Path, ele: dict, patch: int = 14) -> tuple[torch.Tensor, list[int]]:
    """Upstream 0.0.14's torchcodec path re-stated: decode the sampled frames as one stack, resize it whole."""
    from torchcodec.decoders import VideoDecoder
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from qwen_vl_utils.resize import calculate_video_frame_range, smart_nframes, video_target_size

    decoder = VideoDecoder(str(path))
    total, fps = decoder.metadata.num_frames, decoder.metadata.average_fps
    start, end, count = calculate_video_frame_range(ele, total, fps)
    n = smart_nframes(ele, total_frames=count, video_fps=fps)
    idx = torch.linspace(start, end, n).round().long().tolist()
    stack = decoder.get_frames_at(indices=idx).data
    h, w = video_target_size(stack.shape[2], stack.shape[3], n, ele, patch)
    return TF.resize(stack, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float(), idx


@pytest.mark.skipif("torchcodec" not in BACKENDS, reason="torchcodec not usable here")
@pytest.mark.parametrize("backend", ["torchcodec", "pyav"])
@pytest.mark.parametrize(
    "ele",
    [{}, {"fps": 4.0}, {"nframes": 6}, {"video_start": 1.0, "video_end": 3.0}, {"max_pixels": 200 * 28 * 28}],
)
def test_matches_upstream_algorithm_bit_for_bit(videos, ele, backend):
    # PyAV (the default) converts 8-bit YUV to RGB exactly as torchcodec does, and skipping unneeded
    # non-reference frames changes nothing: the output is upstream's to the bit.
    expected, idx = _upstream_oracle(videos["plain"], ele)
    video, meta = fetch_video({"video": str(videos["plain"]), "video_reader_backend": backend, **ele}, 14, False, True)
    assert meta["frames_indices"] == idx
    assert video.dtype == torch.float32
    assert video.shape == expected.shape
    assert torch.equal(video, expected)


@pytest.mark.parametrize("name", ["plain", "rotated", "fps25"])
@pytest.mark.parametrize("ele", [{}, {"nframes": 4}, {"video_start": 0.5, "video_end": 2.5, "fps": 3.0}])
def test_backends_agree(videos, name, ele):
    results = {}
    for backend in BACKENDS:
        (video, meta), sample_fps = fetch_video(
            {"video": str(videos[name]), "video_reader_backend": backend, **ele},
            image_patch_size=16,
            return_video_sample_fps=True,
            return_video_metadata=True,
        )
        assert meta.pop("video_backend") == backend
        results[backend] = (video, meta, sample_fps)
    ref_video, ref_meta, ref_fps = results[BACKENDS[0]]
    for backend, (video, meta, sample_fps) in results.items():
        assert meta == ref_meta, backend
        assert sample_fps == pytest.approx(ref_fps)
        assert video.shape == ref_video.shape, backend
        # Decoders convert YUV->RGB with slightly different rounding; the content must be the same frames.
        assert (video - ref_video).abs().mean() < 3.0, backend
    assert all(isinstance(i, int) for i in ref_meta["frames_indices"])
    if name == "rotated":
        assert ref_meta["width"] == 240 and ref_meta["height"] == 320
        assert ref_video.shape[2] > ref_video.shape[3]


@pytest.mark.skipif("decord" not in BACKENDS, reason="decord not usable here")
@pytest.mark.parametrize(
    "ele, same_frames",
    [({"fps": 2.0}, True), ({"nframes": 6}, True), ({"video_start": 1.0, "video_end": 5.0, "fps": 2.0}, False)],
)
def test_decord_reports_its_own_frame_rate_on_a_variable_frame_rate_clip(videos, ele, same_frames):
    """Upstream 0.0.14's decord reader takes the frame count and rate from decord (``len(vr)``,
    ``vr.get_avg_fps()``); on a VFR clip that rate is not the packets' timing the other backends use."""
    import decord
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from qwen_vl_utils.resize import calculate_video_frame_range, smart_nframes, video_target_size

    path = str(videos["vfr"])
    reader = decord.VideoReader(path)
    total, fps = len(reader), reader.get_avg_fps()
    (video, meta), sample_fps = fetch_video({"video": path, "video_reader_backend": "decord", **ele}, 14, True, True)
    _, pyav_meta = fetch_video({"video": path, "video_reader_backend": "pyav", **ele}, 14, False, True)
    assert meta["fps"] == fps and meta["video_backend"] == "decord"
    assert pyav_meta["fps"] != pytest.approx(fps, abs=0.1)  # the clip tells the two rates apart
    # Upstream's decord reader re-stated: decord's count and rate, its frames, the stack resized whole.
    start, end, count = calculate_video_frame_range(ele, total, fps)
    n = smart_nframes(ele, total_frames=count, video_fps=fps)
    idx = torch.linspace(start, end, n).round().long().tolist()
    stack = torch.from_numpy(reader.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)
    h, w = video_target_size(stack.shape[2], stack.shape[3], n, ele, 14)
    expected = TF.resize(stack, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    assert meta["frames_indices"] == idx and meta["total_num_frames"] == count
    assert meta["duration"] == pytest.approx(count / fps) and sample_fps == pytest.approx(n / count * fps)
    assert torch.equal(video, expected)
    if same_frames:  # where the rate does not change the sampling, the frames are those every backend picks
        assert meta["frames_indices"] == pyav_meta["frames_indices"]


def test_metadata_is_absolute_and_complete(videos):
    (video, meta), sample_fps = fetch_video(
        {"video": str(videos["plain"]), "video_start": 1.0, "video_end": 3.0}, 14, True, True
    )
    assert meta["fps"] == 30.0 and meta["total_num_frames"] == 61 and meta["duration"] == pytest.approx(61 / 30)
    assert meta["frames_indices"][0] == 30 and meta["frames_indices"][-1] == 90
    assert len(meta["frames_indices"]) == video.shape[0] == 4
    assert sample_fps == pytest.approx(4 / 61 * 30)
    from transformers.video_utils import VideoMetadata

    # Every key is one the HF processors understand, and their sampled fps is ours.
    assert VideoMetadata(**meta).sampled_fps == pytest.approx(sample_fps)


def test_default_backend_and_env_read_at_call_time(videos, monkeypatch):
    monkeypatch.delenv("FORCE_QWENVL_VIDEO_READER", raising=False)
    assert get_video_reader_backend() == "pyav"  # a dependency, so always usable, and first in AUTO_ORDER
    _, meta = fetch_video({"video": str(videos["plain"])}, return_video_metadata=True)
    assert meta["video_backend"] == "pyav"
    forced = BACKENDS[0]
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", forced)
    _, meta = fetch_video({"video": str(videos["plain"])}, return_video_metadata=True)
    assert meta["video_backend"] == forced
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "betamax")
    with pytest.raises(ValueError, match="unknown video reader backend 'betamax'"):
        fetch_video({"video": str(videos["plain"])})
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "torchvision")
    with pytest.raises(ImportError, match="torchvision.*no longer|read_video"):
        fetch_video({"video": str(videos["plain"])})


def test_user_errors_are_raised_not_hidden(videos):
    with pytest.raises(ValueError, match=r"interval \[2, 120\], but got 200"):
        fetch_video({"video": str(videos["plain"]), "nframes": 200})
    with pytest.raises(ValueError, match="fps must be positive"):
        fetch_video({"video": str(videos["plain"]), "fps": -1})
    with pytest.raises(ValueError, match="Invalid time range"):
        fetch_video({"video": str(videos["plain"]), "video_start": 3.0, "video_end": 1.0})
    with pytest.raises(VisionInputError, match="not found.*missing.mp4"):
        fetch_video({"video": "/nonexistent/missing.mp4"})
    with pytest.raises(VisionInputError, match="Unrecognized video input"):
        fetch_video({"video": 3})
    with pytest.raises(VisionInputError, match="longer than"):
        fetch_video({"video": str(videos["plain"]), "decode_timeout": 1e-9})


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_or_corrupt_video_is_an_error(videos, tmp_path, backend):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 5000)
    with pytest.raises(VisionInputError, match="junk.mp4"):
        fetch_video({"video": str(junk), "video_reader_backend": backend})
    # A file cut to a third: either refused at the probe, or decoding stops short -> never fewer frames silently.
    try:
        video = fetch_video({"video": str(videos["truncated"]), "video_reader_backend": backend, "nframes": 8})
    except VisionInputError as e:
        assert "truncated" in str(e)
    else:
        pytest.fail(f"{backend} returned {tuple(video.shape)} from a truncated file")


def _frames(n: int, size: tuple[int, int] = (200, 150)) -> list[Image.Image]:
    return [Image.new("RGB", size, (10 * i, 255 - 10 * i, 128)) for i in range(n)]


def test_frame_list_video():
    (video, meta), sample_fps = fetch_video({"video": _frames(5), "sample_fps": 1.0}, 16, True, True)
    # Upstream git HEAD: each frame fit as an image (200x150 -> 192x160), then to the video budget (min 128
    # tokens per frame -> upscaled to 416x352); 5 frames padded to 6 by repeating the last one.
    assert tuple(video.shape) == (6, 3, 352, 416)
    assert torch.equal(video[5], video[4]) and not torch.equal(video[4], video[3])
    assert meta["frames_indices"] == list(range(6)) and meta["fps"] == 1.0 and meta["total_num_frames"] == 6
    assert sample_fps == 1.0
    assert video[0, :, 10, 10].tolist() == [0.0, 255.0, 128.0]


def test_frame_list_leaves_the_callers_own_jpeg_images_unchanged(tmp_path):
    """Frames given as opened (not yet decoded) PIL JPEGs are the caller's objects: no reduced-scale decoding may
    shrink them, though their paths would be decoded at reduced scale (the target is under half the source)."""
    paths = []
    for i, frame in enumerate(_frames(4, (1600, 1200))):
        frame.save(tmp_path / f"{i}.jpg", quality=90)
        paths.append(str(tmp_path / f"{i}.jpg"))
    ele = {"sample_fps": 1.0, "max_pixels": 128 * 28 * 28}
    opened = [Image.open(p) for p in paths]
    from_images = fetch_video({"video": opened, **ele})
    assert [im.size for im in opened] == [(1600, 1200)] * 4
    from_paths = fetch_video({"video": paths, **ele})
    assert from_images.shape == from_paths.shape and tuple(from_images.shape[-2:]) == (280, 392)


def test_frame_list_errors():
    with pytest.raises(VisionInputError, match="sample_fps must be a positive number, got '1'"):
        fetch_video({"video": _frames(2), "sample_fps": "1"})
    mixed = _frames(1, (200, 150)) + _frames(1, (640, 480))
    with pytest.raises(VisionInputError, match="different sizes"):
        fetch_video({"video": mixed})
    with pytest.raises(VisionInputError, match="empty"):
        fetch_video({"video": []})


def test_process_vision_info_keeps_order_and_shapes(videos, tmp_path):
    images = [Image.new("RGB", (100 + 40 * i, 100), (i * 20, 0, 0)) for i in range(6)]
    conversation = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                *[{"type": "image", "image": im} for im in images[:3]],
                {"type": "video", "video": str(videos["plain"]), "nframes": 4},
                {"type": "text", "text": "hi"},
            ],
        },
        {"role": "user", "content": [{"type": "image", "image": im} for im in images[3:]]},
    ]
    out_images, out_videos, kwargs = process_vision_info(conversation, return_video_kwargs=True)
    assert [im.size for im in out_images] == [
        __import__("qwen_vl_utils").fetch_image({"image": im}).size for im in images
    ]
    assert [int(np.asarray(im)[5, 5, 0]) for im in out_images] == [i * 20 for i in range(6)]
    assert len(out_videos) == 1 and out_videos[0].shape[0] == 4
    assert kwargs == {"do_sample_frames": False, "fps": [pytest.approx(4 / 120 * 30)]}
    # Batch of conversations: flat, in order; with metadata there is no "fps" key.
    batch = [conversation, [{"role": "user", "content": [{"type": "image", "image": images[0]}]}]]
    out_images, out_videos, kwargs = process_vision_info(batch, return_video_kwargs=True, return_video_metadata=True)
    assert len(out_images) == 7 and isinstance(out_videos[0], tuple) and kwargs == {"do_sample_frames": False}
    assert process_vision_info([{"role": "user", "content": "text only"}]) == (None, None)
    with pytest.raises(ValueError, match="image, image_url or video should in content"):
        process_vision_info([{"role": "user", "content": [{"type": "video", "path": "x.mp4"}]}])


OLD_TORCHVISION_PYTHON = os.environ.get("QWENVL_OLD_TORCHVISION_PYTHON")


@pytest.mark.skipif(
    not OLD_TORCHVISION_PYTHON,
    reason="set QWENVL_OLD_TORCHVISION_PYTHON to a python with torchvision < 0.22 (it cannot install beside the "
    "pinned torch 2.14.1)",
)
def test_torchvision_backend_on_a_release_that_still_reads_video(videos):
    """The torchvision backend, in an interpreter whose torchvision still has io.read_video, returns the same frame
    indices, metadata and (within decoder rounding) pixels as PyAV here."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[2]); from qwen_vl_utils import fetch_video; "
        "v, m = fetch_video({'video': sys.argv[1], 'nframes': 6, 'video_reader_backend': 'torchvision'}, 14, False, True); "
        "print(json.dumps({'shape': list(v.shape), 'meta': m, 'mean': [float(f.mean()) for f in v]}))"
    )
    src = str(Path(__file__).resolve().parents[2] / "qwen-vl-utils" / "src")
    # (Unrotated clips only: such old environments ship PyAV < 14, which does not report display rotation.)
    for name in ("plain", "fps25"):
        out = subprocess.run(
            [OLD_TORCHVISION_PYTHON, "-c", script, str(videos[name]), src], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        ref, ref_meta = fetch_video(
            {"video": str(videos[name]), "nframes": 6, "video_reader_backend": "pyav"}, 14, False, True
        )
        assert got["shape"] == list(ref.shape)
        assert got["meta"]["frames_indices"] == ref_meta["frames_indices"] and got["meta"]["fps"] == ref_meta["fps"]
        assert got["meta"]["video_backend"] == "torchvision"
        assert max(abs(a - float(b.mean())) for a, b in zip(got["mean"], ref)) < 3.0


@pytest.mark.skipif("pyav" not in BACKENDS, reason="PyAV not usable here")
@pytest.mark.parametrize("step", [1, 2, 7, 45])
def test_pyav_skips_unneeded_non_reference_frames_without_changing_wanted_ones(videos, step):
    import av

    from qwen_vl_utils.video_io import _decode_skipping, _scan_packets

    with av.open(str(videos["plain"])) as container:
        stream = container.streams.video[0]
        pts, _, _ = _scan_packets(container, stream)
        container.seek(pts[0], stream=stream)
        full = {f.pts: f.to_ndarray(format="rgb24") for f in container.decode(stream)}
        wanted = set(pts[::step]) | {pts[-1]}
        seen = {f.pts: f.to_ndarray(format="rgb24") for f in _decode_skipping(container, stream, pts[0], wanted)}
    assert len(full) == len(pts) == 120
    assert wanted <= seen.keys()
    for p in wanted:
        np.testing.assert_array_equal(seen[p], full[p])
    if step > 1:  # libx264's default B-frames are partly non-reference: those not wanted are never decoded
        assert len(seen) < len(pts)
    else:
        assert len(seen) == len(pts)


def test_a_failed_auto_backend_is_retried_with_the_next_one_in_order():
    from qwen_vl_utils.video_io import AUTO_ORDER, _fallback_backend

    usable = [b for b in AUTO_ORDER if b in BACKENDS]
    for failed, expected in zip(usable, usable[1:] + [None]):
        assert _fallback_backend(failed) == expected
    assert _fallback_backend("torchvision") is None  # only ever forced, never retried


def test_a_retry_that_fails_too_reports_both_decoders_as_one_vision_input_error(videos, monkeypatch):
    """Decoders (the dependency) fail as torchcodec does, with a RuntimeError carrying a C++ source path; what
    read_video makes of it (retry, then one VisionInputError naming both) is what is tested."""
    import qwen_vl_utils.video_io as video_io

    calls: list[str] = []

    def failing(path, indices, probe, backend, size, deadline):
        calls.append(backend)
        raise RuntimeError(f"{backend} could not seek\nException raised from seek at /src/{backend}/Decoder.cpp:512")

    monkeypatch.delenv("FORCE_QWENVL_VIDEO_READER", raising=False)
    monkeypatch.setattr(video_io, "_decode_resized", failing)
    first = video_io.get_video_reader_backend()
    second = video_io._fallback_backend(first)
    if second is None:
        pytest.skip("only one video backend is usable here")
    with pytest.raises(VisionInputError) as info:
        fetch_video({"video": str(videos["plain"]), "nframes": 4})
    message = str(info.value)
    assert calls == [first, second]
    assert f"{first} failed (RuntimeError: {first} could not seek)" in message
    assert f"{second} failed too (RuntimeError: {second} could not seek)" in message
    assert ".cpp" not in message and "plain.mp4" in message


def test_resizing_beside_the_decoder_runs_on_one_torch_thread_and_puts_the_count_back(videos, monkeypatch):
    """The resize shares the cores with the decoder's threads, so it runs single-threaded (a second OpenMP team
    spun against the decoder); the caller's thread count, and the one new threads start with, are left as found,
    after a success, a failure and concurrent calls from a pool."""
    import threading

    import qwen_vl_utils.video_io as video_io

    seen: list[int] = []
    resize = video_io._FrameResizer.into

    def recording(self, slot, frame):
        seen.append(torch.get_num_threads())
        return resize(self, slot, frame)

    monkeypatch.setattr(video_io._FrameResizer, "into", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        fetch_video({"video": str(videos["plain"]), "nframes": 4})
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 3
        with pytest.raises(video_io.DecodeTimeoutError):  # fails inside the decode loop
            fetch_video({"video": str(videos["plain"]), "nframes": 8, "decode_timeout": 1e-9})
        assert torch.get_num_threads() == 3
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": str(videos[k]), "nframes": 4} for k in videos if k != "truncated"
                ],
            }  # fmt: skip
        ]
        process_vision_info(messages)
        assert torch.get_num_threads() == 3
        fresh: list[int] = []
        worker = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert fresh == [3]  # what new threads start with was not left at 1
    finally:
        torch.set_num_threads(before)


def test_split_by_keyframe_keeps_every_target_in_order_and_never_cuts_a_keyframe_interval():
    from qwen_vl_utils.video_io import _split_by_keyframe

    keyframes = [0, 30, 60, 90, 250, 260]
    targets = [0, 5, 20, 31, 59, 61, 62, 95, 200, 255, 261, 299]
    interval = {t: max(k for k in keyframes if k <= t) for t in targets}
    for parts in (1, 2, 3, 4, 10):
        split = _split_by_keyframe(targets, keyframes, parts)
        assert [t for part in split for t in part] == targets and all(split)
        assert len(split) == min(parts, len(set(interval.values())))
        for left, right in zip(split, split[1:]):  # a frame is decoded from one keyframe by one decoder only
            assert interval[left[-1]] != interval[right[0]]
    # Balanced by the frames each part decodes (21+30+3 | 111+6+40 of 211: the cut falls before the long interval
    # from keyframe 90, whose midpoint lies past half the work).
    assert _split_by_keyframe(targets, keyframes, 2) == [targets[:7], targets[7:]]
    assert _split_by_keyframe([0, 10, 20], [0], 4) == [[0, 10, 20]]  # one interval: one decoder


@pytest.mark.parametrize("name", ["plain", "rotated"])
def test_several_pyav_decoders_give_the_frames_of_one(videos, name, monkeypatch):
    """Decoders on separate keyframe intervals (each resizing its own frames) fill the same output as one decoder
    running ahead of the resize: sparse and dense sampling (nearly every frame), with rotation."""
    from qwen_vl_utils.video_io import _pyav_table, _split_by_keyframe

    keyframes = _pyav_table(str(videos[name]))[1]
    assert len(_split_by_keyframe(list(range(0, 120, 10)), keyframes, 3)) == 3  # 4 keyframes: 3 decoders run
    outputs = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("QWENVL_DECODE_WORKERS", workers)
        for ele in ({"nframes": 12}, {"fps": 24.0, "min_pixels": 32 * 28 * 28, "max_pixels": 64 * 28 * 28}):
            video = fetch_video({"video": str(videos[name]), "video_reader_backend": "pyav", **ele})
            outputs.setdefault(str(ele), []).append(video)
    for first, second in outputs.values():
        assert torch.equal(first, second)


def test_av1_decoders_opened_mid_file_do_not_skip_wanted_frames(tmp_path, monkeypatch):
    """libdav1d reads skip_frame only when it opens: a decoder that opened on an unneeded packet under NONREF
    dropped wanted non-reference frames for good ("decoder skipped frame 503" on a 30 s AV1 clip, only with
    several decoders). Every decoder now opens with nothing skipped; the output matches torchcodec's."""
    path = tmp_path / "av1.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=4", "-c:v", "libsvtav1", "-preset", "12",
            "-g", "30", "-pix_fmt", "yuv420p", str(path))  # fmt: skip
    from qwen_vl_utils.video_io import _pyav_table, _split_by_keyframe

    assert len(_split_by_keyframe(list(range(1, 120, 7)), _pyav_table(str(path))[1], 3)) == 3
    ele = {"video": str(path), "nframes": 18}
    monkeypatch.setenv("QWENVL_DECODE_WORKERS", "3")
    several = fetch_video({**ele, "video_reader_backend": "pyav"})
    monkeypatch.setenv("QWENVL_DECODE_WORKERS", "1")
    assert torch.equal(several, fetch_video({**ele, "video_reader_backend": "pyav"}))
    if is_backend_available("torchcodec"):
        assert torch.equal(several, fetch_video({**ele, "video_reader_backend": "torchcodec"}))
