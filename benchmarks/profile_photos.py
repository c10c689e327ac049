"""Where the CPU time of the 8-photo case goes, ours (draft on and off) beside upstream 0.0.14: one thread each.

Each measurement is a fresh process that runs ``process_vision_info`` on the 8 photos of bench_vision.py's corpus
once untimed, then once measured with one fetch thread (``QWENVL_FETCH_WORKERS=1``; upstream fetches one at a time
anyway), so the CPU seconds are the work itself, not the concurrency; it reports the call's CPU seconds and the
thread CPU time inside PIL's ``load`` (decoding), ``resize`` and ``copy`` (also behind ``convert``). With both
cores busy for the whole call, a 2-core machine cannot do the batch in less than half the CPU seconds: these
figures are the floors that RESULTS.md compares the timed calls against.

Run (after ``bench_vision.py``, which builds the corpus and upstream's virtualenv)::

    .venv/bin/python benchmarks/profile_photos.py [--repeats 5] [--out benchmarks/results/photo_profile.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent
MAX_PIXELS_8 = 1_003_520  # bench_vision.MAX_PIXELS_8

WORKER = r"""
import json, sys, threading, time
paths, max_pixels = json.loads(sys.argv[1]), int(sys.argv[2])
from PIL import Image, ImageFile
spent = {"decode": 0.0, "resize": 0.0, "copy": 0.0}
lock = threading.Lock()
def timed(key, method):
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            with lock:
                spent[key] += time.thread_time() - start
    return wrapper
# The same PIL methods on both sides: load() decodes, resize() resamples, copy() is also what convert() calls
# when the mode does not change. Thread CPU time, so a fetch thread's work counts wherever it runs.
ImageFile.ImageFile.load = timed("decode", ImageFile.ImageFile.load)
Image.Image.resize = timed("resize", Image.Image.resize)
Image.Image.copy = timed("copy", Image.Image.copy)
from qwen_vl_utils import process_vision_info
messages = [{"role": "user", "content": [{"type": "image", "image": p, "max_pixels": max_pixels} for p in paths]}]
process_vision_info(messages)
for key in spent:
    spent[key] = 0.0
cpu = time.process_time()
process_vision_info(messages)
cpu = time.process_time() - cpu
print(json.dumps({"cpu_s": cpu, **{f"{k}_s": v for k, v in spent.items()}}))
"""


def main() -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="profiled runs per side, alternated, after a warm-up")
    parser.add_argument("--corpus", default=str(HERE / ".corpus"))
    parser.add_argument("--out", default=str(HERE / "results" / "photo_profile.json"))
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")

    from bench_vision import build_corpus, ensure_upstream_venv
    from timing import compare, load_average

    photos = build_corpus(Path(args.corpus), quick=True)["photos"]
    upstream_python = str(ensure_upstream_venv())
    env = dict(os.environ, OMP_NUM_THREADS="1", QWENVL_FETCH_WORKERS="1")
    env.pop("PYTHONPATH", None)
    sides_spec = {
        "upstream": (upstream_python, {}),
        "ours_draft": (sys.executable, {}),
        "ours_bit_exact": (sys.executable, {"QWENVL_JPEG_DRAFT": "0"}),
    }

    def run(python: str, extra: dict) -> dict:
        done = subprocess.run([python, "-c", WORKER, json.dumps(photos), str(MAX_PIXELS_8)], capture_output=True,
                              text=True, env={**env, **extra}, timeout=600, check=True)  # fmt: skip
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["seconds"] = result["cpu_s"]  # timing.compare summarises "seconds": here the CPU seconds
        return result

    load_start = load_average()
    timed = compare({name: (lambda p=p, e=e: run(p, e)) for name, (p, e) in sides_spec.items()}, repeats=args.repeats)
    rows = {}
    for name in sides_spec:
        runs = timed["sides"][name]["runs"]
        rows[name] = {key: sorted(r[key] for r in runs) for key in ("cpu_s", "decode_s", "resize_s", "copy_s")}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_start": load_start,
        "load_end": load_average(),
        "photos": [Path(p).name for p in photos],
        "max_pixels": MAX_PIXELS_8,
        "cores": os.cpu_count(),
        "sides": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for name, row in rows.items():
        med = {k: v[len(v) // 2] for k, v in row.items()}
        print(f"{name}: CPU {med['cpu_s']:.3f} s (decode {med['decode_s']:.3f}, resize {med['resize_s']:.3f}, "
              f"copy {med['copy_s']:.3f}); floor on {os.cpu_count()} cores {med['cpu_s'] / os.cpu_count():.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
