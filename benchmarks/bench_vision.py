"""Benchmark qwen_vl_utils against upstream qwen-vl-utils==0.0.14, in the same run, as separate processes.

It generates its own corpus (JPEG photos 4032x3024 and 8192x5464, a PNG with alpha, H.264 1080p videos of
10 s, 60 s and 300 s; cached under --corpus), installs upstream 0.0.14 into a separate virtualenv
(benchmarks/.upstream-venv, reusing this environment's torch/torchvision/av/decord/torchcodec through a
.pth file so both sides run the same libraries), then times each case in a fresh process per implementation
and reports median wall time, peak RSS and the ratio upstream/ours.

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
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


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


def worker(case: dict, repeat: int) -> dict:
    """Runs inside the measured process: import the implementation, run the case `repeat` times."""
    t0 = time.perf_counter()
    import qwen_vl_utils as q

    kind = case["kind"]
    if kind == "video":
        # Both sides need torch/torchvision for video; upstream imports them at `import qwen_vl_utils`, ours on the
        # first video. Import them (and the backend that will decode) before timing so neither pays it inside a call.
        import importlib

        import torch  # noqa: F401
        import torchvision.transforms.functional  # noqa: F401

        chooser = getattr(q, "get_video_reader_backend", None) or q.vision_process.get_video_reader_backend
        backend = chooser()  # the forced one, else the implementation's default
        importlib.import_module({"torchcodec": "torchcodec.decoders", "decord": "decord", "pyav": "av"}[backend])
    import_s = time.perf_counter() - t0

    def run_once():
        if kind == "pvi":
            content = [{"type": "image", "image": p, "max_pixels": case["max_pixels"]} for p in case["paths"]]
            images, _ = q.process_vision_info([{"role": "user", "content": content}])
            return [im.size for im in images]
        if kind == "image":
            return list(q.fetch_image({"image": case["paths"][0]}).size)
        if kind == "video":
            video = q.fetch_video({"video": case["paths"][0], "fps": 2.0})
            return list(video.shape)
        raise ValueError(kind)

    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = run_once()
        times.append(time.perf_counter() - t)
    return {
        "import_s": import_s,
        "times_s": times,
        "median_s": statistics.median(times),
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent process.
        "peak_rss_mb": _proc_status_mb(os.getpid(), "VmHWM:"),
        "output": result,
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


def measure(python: str, case: dict, repeat: int, env: dict, rss_limit_mb: float, timeout_s: float) -> dict:
    cmd = [python, __file__, "--worker", json.dumps(case), "--repeat", str(repeat)]
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


def main() -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the 300 s video")
    parser.add_argument("--corpus", default=str(HERE / ".corpus"))
    parser.add_argument("--out", default=str(HERE / "results" / "vision.json"))
    parser.add_argument("--rss-limit-gb", type=float, default=12.0)
    parser.add_argument("--only", nargs="*", help="case names to run")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.repeat)))
        return

    corpus = build_corpus(Path(args.corpus), args.quick)
    upstream_python = str(ensure_upstream_venv())
    ours_python = sys.executable
    cases = [
        ("pvi_8_photos_max1M", {"kind": "pvi", "paths": corpus["photos"], "max_pixels": MAX_PIXELS_8}, 3, None),
        ("fetch_image_12MP_default", {"kind": "image", "paths": corpus["photos"][:1]}, 5, None),
        ("fetch_image_png_alpha_default", {"kind": "image", "paths": corpus["alpha"]}, 5, None),
    ]
    for video in corpus["videos"]:
        name = Path(video).stem
        repeat = 1 if "300s" in name else 2
        # Both sides on their own default backend (ours: pyav; upstream: torchcodec when installed, as here).
        cases.append((f"fetch_video_{name}_fps2_default", {"kind": "video", "paths": [video]}, repeat, None))
        for backend in ("torchcodec", "decord"):
            cases.append((f"fetch_video_{name}_fps2_{backend}", {"kind": "video", "paths": [video]}, repeat, backend))

    results = []
    for name, case, repeat, backend in cases:
        if args.only and name not in args.only:
            continue
        row = {"case": name, "backend": backend}
        for impl, python in (("upstream", upstream_python), ("ours", ours_python)):
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            env.pop("PYTHONPATH", None)
            env.pop("FORCE_QWENVL_VIDEO_READER", None)
            if backend:
                env["FORCE_QWENVL_VIDEO_READER"] = backend
            timeout = 1800 if "300s" in name else 900
            row[impl] = measure(python, case, repeat, env, args.rss_limit_gb * 1024, timeout)
            print(name, impl, json.dumps({k: v for k, v in row[impl].items() if k != "output"}), flush=True)
        up, ours = row.get("upstream", {}), row.get("ours", {})
        if "median_s" in up and "median_s" in ours:
            row["speedup"] = up["median_s"] / ours["median_s"]
            row["rss_ratio"] = ours["peak_rss_mb"] / up["peak_rss_mb"]
            row["same_output"] = up.get("output") == ours.get("output")
        results.append(row)

    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "2"),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print()
    print(
        f"{'case':58} {'upstream s':>10} {'ours s':>8} {'speedup':>8} {'up RSS MB':>10} {'our RSS MB':>10} {'RSS ratio':>9}"
    )
    for row in results:
        up, ours = row.get("upstream", {}), row.get("ours", {})
        fmt = lambda r, k, f: (f % r[k]) if k in r else (r.get("error", "-")[:10] if r else "-")
        print(
            f"{row['case']:58} {fmt(up, 'median_s', '%.3f'):>10} {fmt(ours, 'median_s', '%.3f'):>8} "
            f"{row.get('speedup', float('nan')):>8.2f} {fmt(up, 'peak_rss_mb', '%.0f'):>10} "
            f"{fmt(ours, 'peak_rss_mb', '%.0f'):>10} {row.get('rss_ratio', float('nan')):>9.2f}"
        )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
