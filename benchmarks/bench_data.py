"""The training data path against its floor and against the usual way, and the media cache's epochs.

On a generated mix like issue 30's (8 phone photos, 4 records of 3 photos, 4 1080p videos of 30-60 s, 4 multi-turn
texts; 20 records), each side processes every record once, in a fresh process (imports and set-up excluded), as
one DataLoader worker would:

* ``floor``: the media fetch alone, ``process_vision_info`` on each record under the training budget.
* ``data_unpacked``: ``SupervisedDataset.__getitem__`` + ``PaddedCollator`` per record (model inputs, labels,
  position ids); ``data_packed``: ``PackedDataset`` + ``PackedCollator`` over packs of 8192 tokens.
* ``hf_resize``: what most training code does: full-size decoding (PIL; the sampled frames with torchcodec) and the
  HF processor resizing (``do_resize=True``, its size set to the same budget).
* ``cache_first_epoch``: ``data_unpacked`` with an empty ``--media_cache`` (hashing, decoding, writing);
  ``cache_epoch_zstd`` / ``cache_epoch_raw``: the epochs after, every item read from a cache filled beforehand with
  the default codec (zstd; zlib when the zstandard package is missing) or uncompressed.

Figures: samples/s, CPU seconds per sample (user + system of the process, all its threads) and peak RSS (VmHWM) of
the process, with the timing discipline of ``timing.py`` (warm-up, sides alternated, >= 5 repetitions, median and
spread). Targets: data path <= 1.10x the floor; cached epochs >= 10x the samples/s of the first epoch and < 0.2x the
floor's time.

Run::

    .venv/bin/python benchmarks/bench_data.py [--repeats 5] [--workdir /tmp/qwenvl-bench-data] \
        [--video-seconds 30,40,50,60] [--photo-size 4000x3000] [--video-size 1920x1080] \
        [--out benchmarks/results/data.json]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py

HERE = Path(__file__).resolve().parent
SIDES = ("floor", "data_unpacked", "data_packed", "hf_resize", "cache_first_epoch", "cache_epoch_zstd",
         "cache_epoch_raw")  # fmt: skip
CAPACITY = 8192


# ----------------------------------------------------------------------------------------------- the mix


def _photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A photo-like JPEG: smooth colour fields with sensor-like noise (compresses like a phone photo, ~1/8)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 6, (h, w, 1)).astype(np.int16)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=92)


def _video(path: Path, size: str, seconds: int) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-vf",
         "noise=alls=8:allf=t", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
         "-g", "250", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip


def make_mix(workdir: Path, photo_size: str, video_size: str, video_seconds: list[int]) -> list[dict[str, Any]]:
    """Write the media (once per settings) and return the 20 records as ``{"id", "messages"}``."""
    spec = {"photo": photo_size, "video": video_size, "seconds": video_seconds, "v": 2}
    media = workdir / "media"
    stamp = media / "spec.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec):
        shutil.rmtree(media, ignore_errors=True)
        media.mkdir(parents=True)
        w, h = (int(x) for x in photo_size.split("x"))
        for i in range(20):
            _photo(media / f"photo{i}.jpg", (w, h), i)
        for i, seconds in enumerate(video_seconds):
            _video(media / f"video{i}.mp4", video_size, seconds)
        _photo(media / "warm.jpg", (640, 480), 99)
        _video(media / "warm.mp4", "320x240", 2)
        stamp.write_text(json.dumps(spec))
    warm = [
        {"id": "warm_photo", "messages": [
            {"role": "user", "content": [{"type": "image", "image": str(media / "warm.jpg")},
                                         {"type": "image", "image": str(media / "warm.jpg")}]},
            {"role": "assistant", "content": "Warm."}]},
        {"id": "warm_video", "messages": [
            {"role": "user", "content": [{"type": "video", "video": str(media / "warm.mp4")}]},
            {"role": "assistant", "content": "Warm."}]},
    ]  # fmt: skip
    (workdir / "warm.json").write_text(json.dumps(warm))
    records = []
    for i in range(8):
        records.append({"id": f"photo{i}", "messages": [
            {"role": "user", "content": [{"type": "image", "image": str(media / f"photo{i}.jpg")},
                                         {"type": "text", "text": "What is in this photo?"}]},
            {"role": "assistant", "content": "Colour fields with some noise, in a photo taken with a phone."}]})  # fmt: skip
    for i in range(4):
        photos = [{"type": "image", "image": str(media / f"photo{8 + 3 * i + k}.jpg")} for k in range(3)]
        records.append({"id": f"multi{i}", "messages": [
            {"role": "user", "content": [*photos, {"type": "text", "text": "Compare the three photos."}]},
            {"role": "assistant", "content": "They differ in their colours; the noise is the same."}]})  # fmt: skip
    for i in range(len(video_seconds)):
        records.append({"id": f"video{i}", "messages": [
            {"role": "user", "content": [{"type": "video", "video": str(media / f"video{i}.mp4")},
                                         {"type": "text", "text": "What happens in the video?"}]},
            {"role": "assistant", "content": "A test pattern moves and a counter counts the frames."}]})  # fmt: skip
    for i in range(4):
        turns = []
        for t in range(3):
            turns += [{"role": "user", "content": f"Question {t} of conversation {i}: what is {t} + {i}?"},
                      {"role": "assistant", "content": f"{t} + {i} = {t + i}. " * 20}]  # fmt: skip
        records.append({"id": f"text{i}", "messages": turns})
    return records


# ----------------------------------------------------------------------------------------------- one side (child)


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _visual_tokens(enc: dict[str, Any], merge: int = 2) -> int:
    total = 0
    for key in ("image_grid_thw", "video_grid_thw"):
        grid = enc.get(key)
        if grid is not None:
            total += int(grid.prod(-1).sum()) // (merge * merge)
    return total


def run_side(side: str, workdir: Path, records_raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Set up (untimed), then process every record once (timed)."""
    import torch

    from qwenvl.data.annotations import Record
    from qwenvl.data.collate import PackedCollator, PaddedCollator
    from qwenvl.data.dataset import PackedDataset, SupervisedDataset, estimate_length
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.data.media_cache import MediaCache
    from qwenvl.model.budget import TRAINING_BUDGET
    from qwenvl.model.families import FAMILIES
    from qwenvl.model.loader import load_processor
    from qwenvl.model.preprocessing import PreprocessingSettings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    family = FAMILIES["qwen3_vl"]
    budget = TRAINING_BUDGET
    processor = load_processor(str(workdir / "tiny-qwen3_vl"))
    records = [Record(r["id"], r["messages"]) for r in records_raw]
    settings = PreprocessingSettings(family.model_type, family.patch_size, budget)
    cache = None
    if side.startswith("cache"):
        folder = {"cache_first_epoch": "cache_cold", "cache_epoch_zstd": "cache_zstd", "cache_epoch_raw": "cache_raw"}
        root = workdir / folder[side]
        if side == "cache_first_epoch":
            shutil.rmtree(root, ignore_errors=True)
        cache = MediaCache(root, settings, processor, codec="none" if side == "cache_epoch_raw" else "auto")
    encoder = SampleEncoder(processor, family, budget, media_cache=cache)

    def runner(records: list[Record]) -> Any:
        """One pass of this side over ``records``; returns the visual tokens it produced."""
        dataset = SupervisedDataset(records, encoder, CAPACITY)
        if side == "data_packed":
            lengths = [estimate_length(r, encoder).total for r in records]
            work: Any = PackedDataset(dataset, lengths, CAPACITY)
            collate: Any = PackedCollator()
        else:
            work = dataset
            collate = PaddedCollator(pad_token_id=processor.tokenizer.pad_token_id)

        def run() -> int:
            tokens = 0
            if side == "floor":
                from qwen_vl_utils import process_vision_info

                for r in records:
                    process_vision_info(budget.apply(r.messages), return_video_kwargs=True,
                                        return_video_metadata=True, image_patch_size=family.patch_size)  # fmt: skip
            elif side == "hf_resize":
                for r in records:
                    tokens += _visual_tokens(_hf_resize(processor, family, budget, r.messages))
            else:
                for i in range(len(work)):
                    tokens += _visual_tokens(collate([work[i]]))
            return tokens

        return run

    # Warm-up outside the timing (first decode, first processor call of each kind) on two small records that are
    # not in the mix, then the timed pass.
    runner([Record(r["id"], r["messages"]) for r in json.loads((workdir / "warm.json").read_text())])()
    timed = runner(records)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    tokens = timed()
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "cpu_s": _cpu_s() - cpu0, "rss_mb": _peak_rss_mb(), "samples": len(records),
           "visual_tokens": tokens}  # fmt: skip
    if cache is not None:
        out["cache"] = cache.stats.to_dict()
        out["cache_disk_mb"] = cache.disk_usage() / 1e6
    return out


def _hf_resize(processor: Any, family: Any, budget: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Peers' path: decode at full size, let the HF processor resize (same budget, same frames)."""
    from PIL import Image
    from torchcodec.decoders import VideoDecoder

    from qwen_vl_utils.video_io import plan_video

    images, videos, metadata = [], [], []
    for m in messages:
        if not isinstance(m["content"], list):
            continue
        for item in m["content"]:
            if item["type"] == "image":
                with Image.open(item["image"]) as im:
                    images.append(im.convert("RGB"))
            elif item["type"] == "video":
                ele = budget.video_item(item)
                plan = plan_video(item["video"], ele, family.patch_size)
                frames = VideoDecoder(item["video"]).get_frames_at(plan.indices).data
                videos.append(frames)
                metadata.append({"fps": plan.probe.fps, "frames_indices": plan.indices,
                                 "total_num_frames": plan.count, "duration": plan.count / plan.probe.fps})  # fmt: skip
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    kwargs: dict[str, Any] = {"return_tensors": "pt", "do_resize": True}
    if images:
        kwargs["images"] = images
        kwargs["images_kwargs"] = {"size": {"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels}}
    if videos:
        n = len(videos[0])
        kwargs["videos"] = videos
        kwargs["video_metadata"] = metadata
        kwargs["do_sample_frames"] = False
        # Qwen3-VL's video processor reads the budget as a T x H x W total.
        kwargs["videos_kwargs"] = {"size": {"shortest_edge": budget.video_min_pixels * n,
                                            "longest_edge": budget.video_max_pixels * n}}  # fmt: skip
    return processor(text=[text], **kwargs)


def child_main(side: str, workdir: Path) -> None:
    records = json.loads((workdir / "records.json").read_text())
    print("RESULT=" + json.dumps(run_side(side, workdir, records)))


def _run_child(side: str, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--workdir", str(workdir)], capture_output=True,
                          text=True, env=env, timeout=1800)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT="):
            return json.loads(line[len("RESULT=") :])
    return {"error": (proc.stderr or proc.stdout)[-1500:]}


# ----------------------------------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> list[str]:
    """The markdown tables of a result: the three columns (+ packed), then the cache's epochs."""
    from timing import fmt

    sides = result["sides"]

    def med(name: str, key: str) -> float | None:
        runs = [r for r in sides.get(name, {}).get("runs") or [] if key in r]
        if not runs:
            return None
        values = sorted(r[key] for r in runs)
        return values[len(values) // 2]

    def cell(name: str) -> list[str]:
        s = sides.get(name, {})
        if "seconds" not in s:
            return [f"failed: {str(s.get('error', ''))[:80]}", "-", "-", "-", "-"]
        n = s["runs"][0]["samples"]
        sps = n / s["seconds"]["median"]
        floor = sides["floor"]["seconds"]["median"] if "seconds" in sides.get("floor", {}) else None
        return [
            fmt(s["seconds"]),
            f"{sps:.2f}",
            f"{med(name, 'cpu_s') / n:.3f}",
            f"{med(name, 'rss_mb'):.0f}",
            f"{s['seconds']['median'] / floor:.2f}x" if floor else "-",
        ]

    lines = [
        f"{result.get('mix')}; load {result['load_start']} -> {result['load_end']}, OMP_NUM_THREADS="
        f"{result.get('omp')}, {result['repeats']} repetitions after {result['warmup']} warm-up",
        "",
        "| side | s per pass, median (min-max) | samples/s | CPU-s per sample | peak RSS MB | time / floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("floor", "data_unpacked", "data_packed", "hf_resize"):
        lines.append(f"| {name} | " + " | ".join(cell(name)) + " |")
    lines += [
        "",
        "| media cache | s per epoch, median (min-max) | samples/s | CPU-s per sample | peak RSS MB | time / floor "
        "| samples/s vs first epoch | disk MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    first = sides.get("cache_first_epoch", {}).get("seconds")
    for name in ("data_unpacked", "cache_first_epoch", "cache_epoch_zstd", "cache_epoch_raw"):
        s = sides.get(name, {})
        speed = f"{first['median'] / s['seconds']['median']:.1f}x" if first and "seconds" in s else "-"
        disk = med(name, "cache_disk_mb")
        lines.append(f"| {name} | " + " | ".join(cell(name)) + f" | {speed} | {disk:.1f} |" if disk is not None
                     else f"| {name} | " + " | ".join(cell(name)) + f" | {speed} | - |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/qwenvl-bench-data", help="generated media and caches (kept)")
    parser.add_argument("--photo-size", default="4000x3000")
    parser.add_argument("--video-size", default="1920x1080")
    parser.add_argument("--video-seconds", default="30,40,50,60", help="one video per value")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    parser.add_argument("--smoke", action="store_true", help="fewer repetitions allowed: a code-path check only")
    parser.add_argument("--out", default=None, help="JSON result (e.g. benchmarks/results/data.json)")
    parser.add_argument("--child", default=None, help=argparse_suppress())
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        child_main(args.child, workdir)
        return {}
    from timing import compare

    from qwenvl.model.tiny import write_tiny_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    seconds = [int(x) for x in args.video_seconds.split(",")]
    records = make_mix(workdir, args.photo_size, args.video_size, seconds)
    (workdir / "records.json").write_text(json.dumps(records))
    if not (workdir / "tiny-qwen3_vl" / "config.json").is_file():
        write_tiny_checkpoint("qwen3_vl", workdir / "tiny-qwen3_vl", seed=0)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    sides = [s for s in args.sides.split(",") if s]
    # The warm caches are filled once, untimed, by a first-epoch pass of their codec.
    for side, folder in (("cache_epoch_zstd", "cache_zstd"), ("cache_epoch_raw", "cache_raw")):
        if side in sides and not (workdir / folder).is_dir():
            print(f"filling {folder} ...", file=sys.stderr)
            fill = _run_child(side, workdir, env)
            if "error" in fill:
                raise SystemExit(f"filling {folder} failed: {fill['error']}")

    def on_result(name: str, r: int, res: dict[str, Any]) -> None:
        print(f"  {name} #{r}: {res.get('seconds', res.get('error'))}", file=sys.stderr)

    result = compare({s: (lambda s=s: _run_child(s, workdir, env)) for s in sides}, repeats=args.repeats,
                     warmup=args.warmup, on_result=on_result, smoke=args.smoke)  # fmt: skip
    result["mix"] = (f"20 records: 8 photos {args.photo_size}, 4 x 3 photos, {len(seconds)} videos {args.video_size} "
                     f"of {args.video_seconds} s (H.264 veryfast, GOP 250), 4 multi-turn texts")  # fmt: skip
    result["omp"] = env["OMP_NUM_THREADS"]
    result["cpus"] = os.cpu_count()
    for line in table(result):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
