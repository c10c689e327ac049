"""Maintained libraries against what qwen_vl_utils uses, one step at a time, on the benchmark corpus.

Issue 17 asks, for each step of fetching images and videos (JPEG decoding, resizing, colour conversion), whether a
maintained library does it faster than what we use, measured side by side. Each row times one step in this
process, all sides single-threaded (torch, OpenCV), with the timing discipline of ``timing.py`` (a warm-up, the
sides rotated, >= 5 repetitions, median and spread), and says how far each side's output is from the one
qwen_vl_utils must return (upstream's: PIL for images, torch's antialiased bicubic for video frames, FFmpeg's
swscale for colour). A faster side only counts if its output is the same where the package promises
bit-identical output.

Needs (beside the project's environment): ``pip install simplejpeg opencv-python-headless``. Run::

    .venv/bin/python benchmarks/bench_vision.py --quick   # once, to generate the corpus
    .venv/bin/python benchmarks/bench_libs.py [--out benchmarks/results/libs.json]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable


HERE = Path(__file__).resolve().parent
CONVERSIONS = 16  # distinct video frames the colour-conversion step cycles through
sys.path.insert(0, str(HERE))  # benchmarks/timing.py


def _timed(fn: Callable[[], Any], keep: dict[str, Any], name: str) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        t = time.perf_counter()
        keep[name] = fn()
        return {"seconds": time.perf_counter() - t}

    return run


def _difference(a: Any, b: Any) -> dict[str, Any]:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "reference_shape": list(b.shape)}
    diff = np.abs(a - b)
    return {"identical": bool((diff == 0).all()), "max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def steps(corpus: Path) -> list[tuple[str, str, dict[str, Callable[[], Any]]]]:
    """(step, reference side, {side: function}) for every comparison."""
    import av
    import cv2
    import numpy as np
    import simplejpeg
    import torch
    from av.video.reformatter import VideoReformatter
    from PIL import Image
    from torch.nn import functional as F

    from qwen_vl_utils import smart_resize

    photo = corpus / "photo_0_4032x3024.jpg"
    data = photo.read_bytes()
    with Image.open(photo) as im:
        width, height = im.size
    h, w = smart_resize(height, width, 28, max_pixels=1024 * 1024)  # the 8-photo case's budget

    # The package resizes images with PIL (upstream's op, for the same bits), so a decoder's step ends with a PIL
    # RGB image; the "_array" sides stop at the numpy array, to show what the hand-over to PIL costs.
    def pil_full() -> Any:
        im = Image.open(photo)
        im.load()
        return im

    def pil_draft() -> Any:
        im = Image.open(photo)
        im.draft("RGB", (w, h))
        im.load()
        return im

    draft_size = pil_draft().size[::-1]
    scale = width // draft_size[1]
    full_image = pil_full()
    full = np.asarray(full_image)

    def sj(**kw: Any) -> Any:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", **kw)

    def cv(flag: int) -> Any:
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), flag), cv2.COLOR_BGR2RGB)

    reduced_flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    reduced = {"min_height": draft_size[0], "min_width": draft_size[1]}

    with av.open(str(corpus / "video_1080p_10s.mp4")) as container:
        decoded = [frame for _, frame in zip(range(CONVERSIONS), container.decode(video=0))]
    with av.open(str(corpus / "video_1080p_10s.mp4")) as container:  # the same frames again, for the other sides
        again = [frame for _, frame in zip(range(CONVERSIONS), container.decode(video=0))]
    with av.open(str(corpus / "video_1080p_10s.mp4")) as container:
        third = [frame for _, frame in zip(range(CONVERSIONS), container.decode(video=0))]
    rgb = third[0].to_ndarray(format="rgb24")
    # (H * 3 / 2, W): the I420 layout OpenCV converts from
    planes = [frame.to_ndarray(format="yuv420p") for frame in again]
    # Each conversion takes a frame never converted before: a PyAV frame keeps its conversion context, so
    # converting one frame again measured 0.4 ms instead of 5 ms, which is not what decoding a video costs. Each
    # side makes the same number of calls (a warm-up and the repetitions), so the last outputs, which are compared,
    # come from the same frame.
    turn = {"pyav": 0, "opencv": 0, "shared": 0}
    shared = VideoReformatter()

    def next_frame(side: str) -> int:
        turn[side] += 1
        return turn[side] % len(decoded)

    frame_chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    fh, fw = 560, 1008  # what the 1080p video resizes to under the default budget

    def torch_aa() -> Any:
        out = F.interpolate(
            frame_chw[None].float(), size=[fh, fw], mode="bicubic", align_corners=False, antialias=True
        )
        return out[0].clamp(0, 255).round().permute(1, 2, 0).numpy()

    return [
        (
            "jpeg_decode_12MP_full",
            "pil",
            {
                "pil": pil_full,
                "simplejpeg": lambda: Image.fromarray(sj()),
                "opencv": lambda: Image.fromarray(cv(cv2.IMREAD_COLOR)),
                "simplejpeg_array": sj,
            },
        ),
        (
            f"jpeg_decode_12MP_reduced_1/{scale}",
            "pil_draft",
            {
                "pil_draft": pil_draft,
                "simplejpeg": lambda: Image.fromarray(sj(**reduced)),
                "opencv": lambda: Image.fromarray(cv(reduced_flag.get(scale, cv2.IMREAD_COLOR))),
                "simplejpeg_array": lambda: sj(**reduced),
            },
        ),
        (
            f"resize_12MP_to_{w}x{h}",
            "pil_bicubic",
            {
                "pil_bicubic": lambda: np.asarray(full_image.resize((w, h), Image.Resampling.BICUBIC)),
                "opencv_cubic": lambda: cv2.resize(full, (w, h), interpolation=cv2.INTER_CUBIC),
                "opencv_area": lambda: cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA),
            },
        ),
        (
            f"video_frame_resize_1080p_to_{fw}x{fh}",
            "torch_aa_bicubic",
            {
                "torch_aa_bicubic": torch_aa,
                "pil_bicubic_uint8": lambda: np.asarray(
                    Image.fromarray(rgb).resize((fw, fh), Image.Resampling.BICUBIC)
                ),
                "opencv_cubic_uint8": lambda: cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_CUBIC),
                "opencv_area_uint8": lambda: cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA),
            },
        ),
        (
            "yuv420p_to_rgb_1080p",
            "pyav_swscale",
            {
                "pyav_swscale": lambda: decoded[next_frame("pyav")].to_ndarray(format="rgb24"),
                "opencv_i420": lambda: cv2.cvtColor(planes[next_frame("opencv")], cv2.COLOR_YUV2RGB_I420),
                # One conversion context for every frame (what a decode loop could keep), on the third copy.
                "pyav_swscale_one_context": lambda: shared.reformat(
                    third[next_frame("shared")], format="rgb24"
                ).to_ndarray(),  # fmt: skip
            },
        ),
    ]


def main() -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side, rotated, after one warm-up")
    parser.add_argument("--corpus", default=str(HERE / ".corpus"), help="bench_vision.py's corpus folder")
    parser.add_argument("--out", default=str(HERE / "results" / "libs.json"))
    args = parser.parse_args()
    corpus = Path(args.corpus)
    if not (corpus / "photo_0_4032x3024.jpg").is_file() or not (corpus / "video_1080p_10s.mp4").is_file():
        parser.error(f"no corpus in {corpus}: run benchmarks/bench_vision.py --quick once to generate it")
    try:
        import cv2
        import simplejpeg  # noqa: F401
    except ImportError as e:
        parser.error(f"{e.name} is missing: pip install simplejpeg opencv-python-headless")
    import torch
    from timing import compare, load_average

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = []
    load_start = load_average()
    for step, reference, sides in steps(corpus):
        outputs: dict[str, Any] = {}
        timed = compare({name: _timed(fn, outputs, name) for name, fn in sides.items()}, repeats=args.repeats)
        row = {"step": step, "reference": reference, "sides": {}}
        for name in sides:
            seconds = timed["sides"][name]["seconds"]
            row["sides"][name] = {
                "seconds": seconds,
                "vs_reference": timed["sides"][reference]["seconds"]["median"] / seconds["median"],
                "output": _difference(outputs[name], outputs[reference]),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    import cv2 as _cv2
    import simplejpeg as _sj
    from PIL import __version__ as pil_version

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_start": load_start,
        "load_end": load_average(),
        "threads": 1,
        "versions": {
            "pillow": pil_version,
            "simplejpeg": _sj.__version__,
            "opencv": _cv2.__version__,
            "torch": torch.__version__,
        },  # fmt: skip
        "repeats": args.repeats,
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
