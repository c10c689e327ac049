"""Benchmark qwen_vl_utils against upstream qwen-vl-utils==0.0.14, in the same run, as separate processes.

It generates its own corpus (JPEG photos 4032x3024 and 8192x5464, a PNG with alpha, H.264 1080p videos of
10 s, 60 s and 300 s; with --wide the widened video corpus of wide_specs below; cached under --corpus), installs upstream 0.0.14 into a separate virtualenv
(benchmarks/.upstream-venv, reusing this environment's torch/torchvision/av/decord/torchcodec through a
.pth file so both sides run the same libraries), then times each case with benchmarks/timing.py: one warm-up
process per side, then --repeats (>= 5) rounds alternating which side runs first, each measurement a fresh process
(imports excluded: for videos both sides import torch and the decoder before the timed call, and upstream its
torchvision at `import qwen_vl_utils`; image cases make one untimed call first). It reports the median, min and max per side, the ratio of medians, peak RSS, and whether the
outputs are bit-identical (images: compared pixel by pixel in a separate untimed run, with the mean absolute
difference where they differ; videos: by a digest of the output tensor). A caller who has not imported torch pays
that import (about a second) in its first video call; the figures here exclude it on both sides.

Run::

    .venv/bin/python benchmarks/bench_vision.py [--quick] [--out benchmarks/results/vision.json]

--quick skips the 300 s video. A process whose RSS passes --rss-limit-gb is killed and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import site
import subprocess
import sys
import threading
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py


HERE = Path(__file__).resolve().parent
UPSTREAM_VENV = HERE / ".upstream-venv"
UPSTREAM_VERSION = "0.0.14"
MAX_PIXELS_8 = 1_003_520  # 1280 * 28 * 28


# ---------------------------------------------------------------------------------------------- corpus


def _photo(width: int, height: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.normal(128, 50, (height // 64 + 2, width // 64 + 2, 3)).clip(0, 255).astype(np.uint8)
    base = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(base).astype(np.int16)
    arr += rng.integers(-12, 13, arr.shape, dtype=np.int16)  # sensor-like noise, so JPEG is photo-sized
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def build_corpus(root: Path, quick: bool) -> dict[str, list[str]]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    photos = []
    for i in range(8):
        w, h = (4032, 3024) if i % 2 == 0 else (8192, 5464)
        path = root / f"photo_{i}_{w}x{h}.jpg"
        if not path.exists():
            _photo(w, h, seed=i).save(path, quality=90)
        photos.append(str(path))
    alpha = root / "alpha_2000x1500.png"
    if not alpha.exists():
        im = _photo(2000, 1500, seed=99).convert("RGBA")
        im.putalpha(Image.linear_gradient("L").resize(im.size))
        im.save(alpha)
    videos = []
    for seconds in (10, 60) if quick else (10, 60, 300):
        path = root / f"video_1080p_{seconds}s.mp4"
        if not path.exists():
            print(f"encoding {path.name} ...", flush=True)
            subprocess.run(
                ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                 f"testsrc2=size=1920x1080:rate=30:duration={seconds}", "-c:v", "libx264", "-preset", "veryfast",
                 "-pix_fmt", "yuv420p", str(path) + ".tmp.mp4"],
                check=True,
            )  # fmt: skip
            os.replace(str(path) + ".tmp.mp4", path)
        videos.append(str(path))
    return {"photos": photos, "alpha": [str(alpha)], "videos": videos}


# What users feed a VLM, beyond the synthetic H.264 above (--wide): 1080p clips of moving content with light
# sensor-like noise, at the bitrates of phone and camera footage (capped at 16 Mbit/s; 1080p30 phone video is about
# 17), one per row: x264 presets ultrafast..slow, GOP 30/60/250, 0-3 B-frames, 10-bit, AAC audio, H.265, VP9, AV1,
# a phone clip with rotation metadata, variable frame rate, and a screen recording (the picture changes every 5 s).
# 60 s long by default, the length of the video the targets are set on (issue 17) and of the files issue 20 measured;
# shorter clips weigh the fixed memory of any torch + decoder process more (RESULTS.md gives the 30 s figures too).
WIDE_SECONDS = 60
_RATE = ["-maxrate", "16M", "-bufsize", "32M"]


def wide_specs(seconds: int) -> dict[str, tuple[str, list[str], bool]]:
    """name -> (lavfi video source, encoder arguments, with an audio track) for clips of ``seconds``."""
    noisy = f"testsrc2=size=1920x1080:rate=30:duration={seconds},noise=alls=6:allf=t"
    return {
        "x264_ultrafast_gop60_bf0": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "ultrafast", "-g", "60"], False),
        "x264_veryfast_gop60_bf2_aac": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "veryfast", "-g", "60",
                                                "-bf", "2"], True),
        "x264_veryfast_gop250_bf2_aac": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "veryfast", "-g", "250",
                                                 "-bf", "2"], True),
        "x264_medium_gop30_bf3": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "medium", "-g", "30", "-bf", "3"],
                                  False),
        "x264_slow_gop250_bf3": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "slow", "-g", "250", "-bf", "3"],
                                 False),
        "x264_10bit_veryfast_gop60": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "veryfast", "-g", "60",
                                              "-profile:v", "high10", "-pix_fmt", "yuv420p10le"], False),
        "x265_fast_gop60_aac": (noisy, [*_RATE, "-c:v", "libx265", "-preset", "fast", "-x265-params",
                                        "keyint=60:log-level=error"], True),
        "vp9_realtime": (noisy, ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "4M",
                                 "-g", "120"], False),
        "av1_svt_p12": (noisy, ["-b:v", "8M", "-c:v", "libsvtav1", "-preset", "12", "-g", "120"], False),
        "phone_rotated90_aac": (noisy, [*_RATE, "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
                                        "-metadata:s:v:0", "rotate=90"], True),
        "vfr_x264": (noisy + ",select='lt(mod(n,30),18)+eq(mod(n,7),0)'",
                     [*_RATE, "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-vsync", "vfr"], False),
        "screen_static_x264": (f"testsrc2=size=1920x1080:rate=30:duration={seconds},fps=0.2,fps=30",
                               ["-c:v", "libx264", "-preset", "veryfast", "-g", "250", "-tune", "stillimage"], False),
    }  # fmt: skip


def build_wide_corpus(root: Path, seconds: int = WIDE_SECONDS) -> list[str]:
    """Encode the --wide corpus (cached per length); a codec this ffmpeg cannot encode is skipped with a note."""
    root = root / f"{seconds}s" if seconds != 30 else root  # the 30 s clips of earlier runs stay where they were
    root.mkdir(parents=True, exist_ok=True)
    audio_source = ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    paths = []
    for name, (source, codec, audio) in wide_specs(seconds).items():
        ext = ".webm" if name.startswith("vp9") else ".mp4"
        path = root / f"{name}{ext}"
        if not path.exists():
            print(f"encoding {path.name} ...", flush=True)
            cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, *(audio_source if audio else []),
                   *codec, *(["-pix_fmt", "yuv420p"] if "-pix_fmt" not in codec else []),
                   *(["-c:a", "aac" if ext == ".mp4" else "libopus", "-shortest"] if audio else []),
                   str(path) + ".tmp" + ext]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  skipped {name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}")
                continue
            os.replace(str(path) + ".tmp" + ext, path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------- upstream venv


def ensure_upstream_venv() -> Path:
    python = UPSTREAM_VENV / "bin" / "python"
    marker = UPSTREAM_VENV / f".qwen-vl-utils-{UPSTREAM_VERSION}"
    if marker.exists():
        return python
    if UPSTREAM_VENV.exists():
        shutil.rmtree(UPSTREAM_VENV)
    subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
    target_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Same torch / decoders as ours, so the comparison is about the code, not the libraries.
    Path(target_site, "shared-libs.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", f"qwen-vl-utils=={UPSTREAM_VERSION}"], check=True
    )
    marker.touch()
    return python


# ---------------------------------------------------------------------------------------------- worker


def worker(case: dict) -> dict:
    """Runs inside the measured process: import the implementation (not timed), make ``warmup_calls`` untimed calls,
    then one timed call; returns its time, the process's peak RSS and a digest of the output pixels."""
    t0 = time.perf_counter()
    import qwen_vl_utils as q

    kind = case["kind"]
    if kind == "video":
        # Both sides need torch for video; upstream imports it (and torchvision) at `import qwen_vl_utils`, ours on
        # the first video (and never torchvision). Import torch and the backend that will decode before timing, so
        # neither pays an import inside the call; each process holds what its implementation needs.
        import importlib

        import torch  # noqa: F401

        chooser = getattr(q, "get_video_reader_backend", None) or q.vision_process.get_video_reader_backend
        backend = chooser()  # the forced one, else the implementation's default
        importlib.import_module({"torchcodec": "torchcodec.decoders", "decord": "decord", "pyav": "av"}[backend])
    import_s = time.perf_counter() - t0

    def run_once():
        if kind == "pvi":
            content = [{"type": "image", "image": p, "max_pixels": case["max_pixels"]} for p in case["paths"]]
            images, _ = q.process_vision_info([{"role": "user", "content": content}])
            return images
        if kind == "image":
            return [q.fetch_image({"image": case["paths"][0]})]
        if kind == "video":
            return [q.fetch_video({"video": case["paths"][0], "fps": 2.0})]
        raise ValueError(kind)

    for _ in range(case.get("warmup_calls", 0)):  # in-process warm-up (first-call costs), not timed
        run_once()
    t = time.perf_counter()
    outputs = run_once()
    seconds = time.perf_counter() - t
    import hashlib

    import numpy as np

    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process. Read before the digest.
    peak_rss_mb = _proc_status_mb(os.getpid(), "VmHWM:")
    arrays = [np.asarray(o) if not hasattr(o, "numpy") else o.numpy() for o in outputs]
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # no copy of a contiguous output
    digest = digest.hexdigest()
    if case.get("dump"):
        np.savez(case["dump"], *arrays)
    return {
        "import_s": import_s,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb,
        "shapes": [list(a.shape) for a in arrays],
        "digest": digest,
        "backend": backend if kind == "video" else None,
        "module": q.__file__,
    }


def _proc_status_mb(pid: int, key: str = "VmRSS:") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(python: str, case: dict, env: dict, rss_limit_mb: float, timeout_s: float) -> dict:
    cmd = [python, __file__, "--worker", json.dumps(case)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, killed = 0.0, None
    started = time.monotonic()

    def watch():
        nonlocal peak, killed
        while proc.poll() is None:
            rss = _proc_status_mb(proc.pid)
            peak = max(peak, rss)
            if rss > rss_limit_mb:
                killed = f"killed at {rss / 1024:.1f} GB RSS (limit {rss_limit_mb / 1024:.1f} GB)"
                proc.kill()
            elif time.monotonic() - started > timeout_s:
                killed = f"killed after {timeout_s:.0f} s"
                proc.kill()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    if killed:
        return {"error": killed, "peak_rss_mb": peak}
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = max(result["peak_rss_mb"], peak)
    return result


def compare_outputs(python_a: str, python_b: str, case: dict, envs: tuple[dict, dict], tmp: Path) -> dict:
    """Run each side once more, outside the timing, writing its output pixels; compare them exactly (and the mean
    absolute difference in 0-255 units where they differ). Videos are compared by digest only (their float32
    outputs are hundreds of MB)."""
    import numpy as np

    dumps = []
    for name, python, env in (("a", python_a, envs[0]), ("b", python_b, envs[1])):
        path = tmp / f"{name}.npz"
        result = measure(python, {**case, "dump": str(path)}, env, 1e9, 1800)
        if "error" in result:
            return {"error": result["error"]}
        dumps.append(np.load(path))
    a, b = ([d[k] for k in sorted(d.files, key=lambda k: int(k.split("_")[1]))] for d in dumps)
    if [x.shape for x in a] != [x.shape for x in b]:
        return {"same_shapes": False}
    exact = all(np.array_equal(x, y) for x, y in zip(a, b))
    mad = float(np.mean([np.abs(x.astype(np.float64) - y.astype(np.float64)).mean() for x, y in zip(a, b)]))
    return {"same_shapes": True, "bit_exact": exact, "mean_abs_diff": mad}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":  # the measured process: it may be upstream's venv (no qwenvl)
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side, alternated, after one warm-up")
    parser.add_argument("--quick", action="store_true", help="skip the 300 s video")
    parser.add_argument("--all-backends", action="store_true", help="also torchcodec and decord on both sides")
    parser.add_argument("--corpus", default=str(HERE / ".corpus"))
    parser.add_argument("--out", default=str(HERE / "results" / "vision.json"))
    parser.add_argument("--rss-limit-gb", type=float, default=12.0)
    parser.add_argument("--only", nargs="*", help="case names to run")
    parser.add_argument("--wide", action="store_true",
                        help="the widened video corpus only (codecs, presets, GOPs, 10-bit, audio, rotation, VFR, "
                             "screen recording): speed-up and RSS ratio per file with min/median/max")  # fmt: skip
    parser.add_argument("--wide-seconds", type=int, default=WIDE_SECONDS, help="length of the --wide clips")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import tempfile

    from timing import compare, load_average, ratio

    upstream_python = str(ensure_upstream_venv())
    ours_python = sys.executable
    if args.wide:
        corpus = {
            "photos": [],
            "alpha": [],
            "videos": build_wide_corpus(Path(args.corpus) / "wide", args.wide_seconds),
        }
        cases = []
    else:
        corpus = build_corpus(Path(args.corpus), args.quick)
    photos = {"kind": "pvi", "paths": corpus["photos"], "max_pixels": MAX_PIXELS_8, "warmup_calls": 1}
    cases = (
        []
        if args.wide
        else [
            ("pvi_8_photos_max1M", photos, None, {}),
            ("pvi_8_photos_max1M_no_draft (bit-exact)", photos, None, {"QWENVL_JPEG_DRAFT": "0"}),
            (
                "fetch_image_12MP_default",
                {"kind": "image", "paths": corpus["photos"][:1], "warmup_calls": 1},
                None,
                {},
            ),
            (
                "fetch_image_png_alpha_default",
                {"kind": "image", "paths": corpus["alpha"], "warmup_calls": 1},
                None,
                {},
            ),
        ]
    )
    for video in corpus["videos"]:
        name = Path(video).stem
        # Both sides on their own default backend (ours: pyav; upstream: torchcodec when installed, as here).
        cases.append((f"fetch_video_{name}_fps2_default", {"kind": "video", "paths": [video]}, None, {}))
        if args.all_backends:  # the 300 s video too: its peak memory on every backend is a target (< 3 GB)
            for backend in ("torchcodec", "decord"):
                cases.append((f"fetch_video_{name}_fps2_{backend}", {"kind": "video", "paths": [video]}, backend, {}))

    results = []
    load_start = load_average()
    for name, case, backend, ours_env in cases:
        if args.only and name not in args.only:
            continue
        envs = {}
        for impl in ("upstream", "ours"):
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            env.pop("PYTHONPATH", None)
            env.pop("FORCE_QWENVL_VIDEO_READER", None)
            if backend:
                env["FORCE_QWENVL_VIDEO_READER"] = backend
            envs[impl] = {**env, **(ours_env if impl == "ours" else {})}
        timeout = 1800 if "300s" in name else 900
        limit = args.rss_limit_gb * 1024
        sides = {
            "upstream": lambda: measure(upstream_python, case, envs["upstream"], limit, timeout),
            "ours": lambda: measure(ours_python, case, envs["ours"], limit, timeout),
        }
        timed = compare(sides, repeats=args.repeats, on_result=lambda side, r, x: print(
            name, side, r, json.dumps({k: v for k, v in x.items() if k not in ("module", "shapes")}), flush=True))  # fmt: skip
        row = {
            "case": name,
            "backend": backend,
            "ours_env": ours_env,
            **timed,
            "speedup": ratio(timed, "upstream", "ours"),
        }
        for impl in ("upstream", "ours"):
            runs = timed["sides"][impl]["runs"]
            rss = [r["peak_rss_mb"] for r in runs] or [
                timed["sides"][impl].get("failed_run", {}).get("peak_rss_mb", 0)
            ]
            row[f"{impl}_peak_rss_mb"] = max(rss)
        if timed["sides"]["upstream"].get("runs"):
            row["rss_ratio"] = row["ours_peak_rss_mb"] / row["upstream_peak_rss_mb"]
            with tempfile.TemporaryDirectory() as tmp:
                if case["kind"] == "video":
                    digests = {
                        impl: {r["digest"] for r in timed["sides"][impl]["runs"]} for impl in ("upstream", "ours")
                    }
                    row["output"] = {"bit_exact": digests["upstream"] == digests["ours"] and len(digests["ours"]) == 1}
                else:
                    row["output"] = compare_outputs(upstream_python, ours_python, case,
                                                    (envs["upstream"], envs["ours"]), Path(tmp))  # fmt: skip
        results.append(row)

    spread = {}
    for key in ("speedup", "rss_ratio"):
        values = sorted(r[key] for r in results if r.get(key) is not None)
        if values:
            spread[key] = {"min": values[0], "median": values[len(values) // 2] if len(values) % 2 else
                           (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2, "max": values[-1],
                           "files": len(values)}  # fmt: skip
    report = {
        "corpus": f"wide, {args.wide_seconds} s clips" if args.wide else "standard",
        "spread": spread,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_start": load_start,
        "load_end": load_average(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "2"),
        "method": "per case: one warm-up process per side, then --repeats rounds alternating which side runs first; "
        "each measurement is a fresh process (imports excluded; image cases make one untimed call first); "
        "median, min and max of the timed calls; peak RSS = the largest VmHWM of the timed processes",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print()
    print(
        f"{'case':50} {'upstream s (min-max)':>24} {'ours s (min-max)':>22} {'speedup':>8} {'RSS up/ours MB':>15} {'ratio':>6}"
    )
    for row in results:
        cell = []
        for impl in ("upstream", "ours"):
            side = row["sides"][impl]
            sec = side.get("seconds")
            cell.append(
                f"{sec['median']:.3f} ({sec['min']:.2f}-{sec['max']:.2f})" if sec else side.get("error", "-")[:22]
            )
        speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        rss = f"{row['upstream_peak_rss_mb']:.0f}/{row['ours_peak_rss_mb']:.0f}"
        print(
            f"{row['case']:50} {cell[0]:>24} {cell[1]:>22} {speed:>8} {rss:>15} {row.get('rss_ratio', float('nan')):>6.2f}"
        )
    for key, sp in spread.items():
        print(f"{key}: min {sp['min']:.2f}, median {sp['median']:.2f}, max {sp['max']:.2f} over {sp['files']} case(s)")
    print(f"\nload {report['load_start']} -> {report['load_end']}; written to {args.out}")


if __name__ == "__main__":
    main()
