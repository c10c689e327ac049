"""Questions per second of ``run_mmmu.py infer`` at batch 1 vs batched, and of its ``openai`` backend with 1 vs 8
requests in flight against a local server (``transformers serve`` on 127.0.0.1), on a tiny Qwen3-VL checkpoint
(CPU).

It writes a tiny checkpoint and a generated MMMU-format dataset (hub layout, parquet, images made here), then
runs ``infer`` for batch 1 and the batch size alternately (one warm-up each, 5 timed runs each by default, see
``benchmarks/timing.py``), each in a fresh process on a fresh output file, and reports the median questions per
second of the generation loop (``infer``'s own timer, printed to the millisecond), the spread and the ratio
(target: batched >= 2x batch 1). The openai part alternates ``--concurrency 1`` and ``8`` the same way (same
batch of 16 questions per call, the server started once, warm).

Run::

    .venv/bin/python benchmarks/bench_mmmu.py [--questions 48] [--batch-size 16] [--out benchmarks/results/mmmu.json]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py


HERE = Path(__file__).resolve().parent
RUN_MMMU = HERE.parent / "evaluation" / "mmmu" / "run_mmmu.py"


def make_dataset(root: Path, n: int) -> None:
    import datasets
    from PIL import Image

    rows = []
    for i in range(1, n + 1):
        rows.append(
            {
                "id": f"validation_Art_{i}",
                "question": f"Which colour dominates <image 1>? ({i})",
                "options": str(["red", "green", "blue", "yellow"]),
                "image_1": Image.new("RGB", (96 + i % 5 * 16, 96), (40 * (i % 6), 120, 200)),
                "answer": "ABCD"[i % 4],
                "question_type": "multiple-choice",
            }
        )
    features = datasets.Features(
        {k: datasets.Image() if k == "image_1" else datasets.Value("string") for k in rows[0]}
    )
    (root / "Art").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(
        str(root / "Art" / "validation-00000-of-00001.parquet")
    )


def run(model: Path, data: Path, out: Path, batch: int, n: int, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, str(RUN_MMMU), "infer", "--data-dir", str(data),
           "--output-file", str(out), "--subjects", "art", "--batch-size", str(batch), "--max-new-tokens", "16",
           "--max-pixels", str(64 * 32 * 32), "--limit", str(n), *(extra or ("--model-path", str(model)))]  # fmt: skip
    for path in (out, out.with_name(out.name + ".manifest.json")):
        path.unlink(missing_ok=True)  # every run infers all questions
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        return {"error": result.stderr[-3000:]}
    match = re.search(r"(\d+) question\(s\) in ([\d.]+)s", result.stdout)
    assert match and int(match.group(1)) == n, result.stdout
    return {"seconds": float(match.group(2)), "questions": n}


def main() -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (after one warm-up each)")
    parser.add_argument("--out", default=str(HERE / "results" / "mmmu.json"))
    parser.add_argument("--openai", type=int, default=1, help="1: also time the openai backend (1 vs 8 in flight)")
    args = parser.parse_args()
    from timing import compare, fmt, ratio

    from qwenvl.model.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_tiny_checkpoint("qwen3_vl", root / "model")
        make_dataset(root / "data", args.questions)
        sides = {
            f"batch_{b}": (lambda b=b: run(model, root / "data", root / f"results_b{b}.jsonl", b, args.questions))
            for b in (1, args.batch_size)
        }
        result = compare(sides, repeats=args.repeats, on_result=lambda name, r, x: print(name, r, x, flush=True))
        served = measure_openai(model, root, args) if args.openai else None
    speedup = ratio(result, "batch_1", f"batch_{args.batch_size}")
    for name, side in result["sides"].items():
        print(f"{name:>9}: {fmt(side.get('seconds'))} for {args.questions} questions")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS=1",
        "questions": args.questions,
        "batch_size": args.batch_size,
        **result,
        "speedup_median": speedup,
        "openai": served,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    ratio_ = speedup
    print(f"batched ({args.batch_size}) vs batch 1: {ratio_:.2f}x (medians; load {report['load_start']} -> "
          f"{report['load_end']})  -> {args.out}")  # fmt: skip


def measure_openai(model: Path, root: Path, args) -> dict:
    """``--backend openai`` against ``transformers serve``: concurrency 1 vs 8, alternated."""
    from serving import transformers_serve
    from timing import compare, ratio

    with transformers_serve(str(model)) as base:
        sides = {
            f"openai_concurrency_{c}": (
                lambda c=c: run(model, root / "data", root / f"served_c{c}.jsonl", 16, args.questions,
                                ("--backend", "openai", "--base-url", base, "--model", str(model),
                                 "--concurrency", str(c)))
            )
            for c in (1, 8)
        }  # fmt: skip
        result = compare(sides, repeats=args.repeats, on_result=lambda name, r, x: print(name, r, x, flush=True))
    result["speedup_median"] = ratio(result, "openai_concurrency_1", "openai_concurrency_8")
    print(f"openai backend, 8 vs 1 requests in flight: {result['speedup_median']:.2f}x")
    return result


if __name__ == "__main__":
    main()
