"""Time to first token and tokens/s of the demo's backends on a tiny checkpoint (CPU), in one run.

Backends: ``hf`` (in-process transformers, per-token streaming thread), ``vllm`` (vLLM's async engine, run in
``.venv-vllm`` when scripts/setup_vllm.sh made it) and ``openai`` against a real OpenAI-compatible server started
here (``transformers serve`` on 127.0.0.1), all driven through ``qwenvl.inference``'s backends (what the demo uses) with the same
request (one image + a question, greedy, 64 new tokens). The checkpoint has head_dim 64 so vLLM's CPU kernels
take it.

Run::

    .venv/bin/python benchmarks/bench_demo.py [--repeat 5] [--out benchmarks/results/demo.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # timing.py, serving.py


def one_request(backend, messages, gen, tokenizer) -> dict:
    """One streamed answer: wall time, time to first streamed text, generated tokens/s (tokens counted by
    re-tokenising the answer, the same way for every backend, since servers may merge tokens into one chunk)."""
    start = time.perf_counter()
    first = None
    text = ""
    for piece in backend.stream(messages, gen, threading.Event()):
        text += piece
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return {
        "seconds": total,
        "ttft_s": first,
        "tokens_per_s": len(tokenizer(text, add_special_tokens=False)["input_ids"]) / total,
    }


def measure(backend, messages, gen, repeat: int, tokenizer) -> dict:
    """One backend alone (for vLLM, whose engine lives in its own virtualenv): one warm-up, ``repeat`` timed."""
    from timing import compare

    result = compare({"vllm": lambda: one_request(backend, messages, gen, tokenizer)}, repeats=repeat)
    return _side_report(result["sides"]["vllm"]) | {"load_start": result["load_start"], "load_end": result["load_end"]}


def _side_report(side: dict) -> dict:
    from timing import summary

    runs = side["runs"]
    return {
        "ttft_s": summary([r["ttft_s"] for r in runs]),
        "tokens_per_s": summary([r["tokens_per_s"] for r in runs]),
        "seconds": side["seconds"],
        "runs": len(runs),
    }


VLLM_SCRIPT = """
import json, sys, threading
sys.path.insert(0, {root!r})
sys.path.insert(0, {here!r})
import bench_demo
from qwenvl.inference import load_backend
from qwenvl.inference.base import GenerationSettings

def main():
    backend = load_backend("vllm", {model!r}, dtype="float32", enforce_eager=True)
    messages = json.loads({messages!r})
    result = bench_demo.measure(backend, messages, GenerationSettings(max_new_tokens=64), {repeat}, backend.processor.tokenizer)
    print("RESULT " + json.dumps(result))

if __name__ == "__main__":
    main()
"""


def measure_vllm(model: str, messages: list, repeat: int, tmp: str) -> dict | None:
    python = HERE.parent / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        print("no .venv-vllm (scripts/setup_vllm.sh): skipping the vllm backend", flush=True)
        return None
    script = Path(tmp) / "vllm_bench.py"
    script.write_text(VLLM_SCRIPT.format(root=str(HERE.parent), here=str(HERE), model=model,
                                         messages=json.dumps(messages), repeat=repeat))  # fmt: skip
    env = dict(os.environ, VLLM_HOST_IP="127.0.0.1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1")
    out = subprocess.run([str(python), str(script)], capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "demo.json"))
    args = parser.parse_args()
    from PIL import Image
    from serving import transformers_serve

    from qwenvl.inference import load_backend
    from qwenvl.inference.base import GenerationSettings
    from qwenvl.model.tiny import write_tiny_checkpoint

    gen = GenerationSettings(max_new_tokens=64)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(write_tiny_checkpoint("qwen3_vl", Path(tmp) / "model", head_dim=64))
        image = Path(tmp) / "red.png"
        Image.new("RGB", (256, 192), (220, 30, 30)).save(image)
        messages = [
            {"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": "Colour?"}]}
        ]

        from timing import compare

        hf = load_backend("hf", model, device="cpu")
        tokenizer = hf.processor.tokenizer

        vllm_result = measure_vllm(model, messages, args.repeat, tmp)
        if vllm_result:
            results["vllm (in-process async engine, its own venv; measured alone)"] = vllm_result
            print("vllm", vllm_result, flush=True)

        with transformers_serve(model) as base:
            backend = load_backend("openai", model, api_base=base, model=model)
            # hf and openai alternate in one run (one warm-up each, then A B, B A, ...).
            both = compare(
                {"hf": lambda: one_request(hf, messages, gen, tokenizer),
                 "openai (transformers serve)": lambda: one_request(backend, messages, gen, tokenizer)},
                repeats=args.repeat,
            )  # fmt: skip
            for name, side in both["sides"].items():
                results[name] = _side_report(side)
                print(name, results[name], flush=True)
            load = {"load_start": both["load_start"], "load_end": both["load_end"]}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "model": "tiny Qwen3-VL (random, head_dim 64), fp32",
        "request": "one 256x192 image + question, greedy, 64 new tokens",
        "results": results,
        **load,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
