"""How long training steps wait for their batches, with the DataLoader settings of transformers' defaults and ours,
when a step lasts as long as a GPU step would.

The tiny Qwen3-VL checkpoint trains on the mix of ``bench_data.py`` (smaller media by default, see the flags), with
every training step slowed to a fixed duration (``--step-seconds``, default 1.0: a Qwen3-VL-8B step on a few
samples on an H100-class GPU) by a sleep after its forward and backward, so the main process idles like a process
waiting on a GPU; with ``--gpu-step`` the step does no CPU work at all, only the wait (the model's forward and
backward run on the GPU there, not on the workers' cores). Each configuration is a fresh training process of ``--epochs`` epochs; the figure is the
``data_wait_share`` of its ``train_summary.json`` (time in ``next(batch iterator)`` / step time). Sides alternate,
with the timing discipline of ``timing.py``.

* ``transformers_defaults``: ``--dataloader_num_workers 0`` (transformers' default: batches built in the
  training process, between steps).
* ``qwenvl_defaults``: no DataLoader flag: our defaults (4 workers per rank, persistent, prefetch 2 per worker, pin
  memory on GPU).
* ``qwenvl_defaults_cached``: the same with a warm ``--media_cache``.

Run::

    .venv/bin/python benchmarks/bench_data_wait.py [--repeats 5] [--step-seconds 1.0] [--photo-size 2000x1500] \
        [--video-seconds 10,10,15,15] [--out benchmarks/results/data_wait.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "transformers_defaults": ["--dataloader_num_workers", "0"],
    "qwenvl_defaults": [],
    "qwenvl_defaults_cached": ["--media_cache", "{workdir}/wait_cache"],
}


def child(config: str, workdir: Path, step_seconds: float, epochs: int, batch: int, gpu_step: bool = False
          ) -> dict[str, Any]:  # fmt: skip
    import shutil

    import torch
    import transformers

    from qwenvl.train import trainer as trainer_module
    from qwenvl.train.train_qwen import train

    if gpu_step:
        # The step itself runs on the accelerator: the host only waits. The batch is still built by the data path
        # (and counted by QwenVLTrainer's own training_step around this one); no forward or backward on the CPU.
        def waited(self: Any, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            time.sleep(step_seconds)
            return torch.zeros((), device=self.args.device)

        transformers.Trainer.training_step = waited
    else:
        original = trainer_module.QwenVLTrainer.training_step

        def slowed(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            out = original(self, *args, **kwargs)
            rest = step_seconds - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)  # the GPU would be busy this long
            return out

        trainer_module.QwenVLTrainer.training_step = slowed
    out = workdir / f"run-{config}"
    shutil.rmtree(out, ignore_errors=True)
    flags = [
        "--model_name_or_path", str(workdir / "tiny-qwen3_vl"), "--dataset_use", str(workdir / "mix.jsonl"),
        "--output_dir", str(out), "--use_cpu", "True", "--report_to", "none", "--per_device_train_batch_size",
        str(batch), "--learning_rate", "1e-4", "--model_max_length", "8192", "--logging_steps", "5",
        "--num_train_epochs", str(epochs), "--save_strategy", "no", "--seed", "0",
        *[f.format(workdir=workdir) for f in CONFIGS[config]],
    ]  # fmt: skip
    started = time.monotonic()
    train(flags)
    seconds = time.monotonic() - started
    summary = json.loads((out / "train_summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "data_wait_share": summary["data_wait_share"],
        "data_wait_share_steady": summary.get("data_wait_share_steady"),
        "data_wait_s": summary["data_wait_s"],
        "step_time_s": summary["step_time_s"],
        "steps": summary["timed_steps"],
        "media_cache": summary.get("media_cache"),
    }


def _run(config: str, args: Any, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", config, "--workdir", args.workdir, "--step-seconds",
           str(args.step_seconds), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           *(["--gpu-step"] if args.gpu_step else [])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT="):
            return json.loads(line[len("RESULT=") :])
    return {"error": (proc.stderr or proc.stdout)[-1500:]}


def table(result: dict[str, Any]) -> list[str]:
    from timing import summary

    lines = [
        f"{result['mix']}; step {result['step_seconds']} s"
        f"{' (waited, no CPU compute)' if result.get('gpu_step') else ''}, batch {result['batch_size']}, "
        f"{result['epochs']} epochs; "
        f"load {result['load_start']} -> {result['load_end']}, {result['repeats']} repetitions",
        "",
        "| DataLoader settings | data_wait_share, median (min-max) | steady (each epoch's first step left out), median "
        "(min-max) | data wait s per run, median | run s, median |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, side in result["sides"].items():
        runs = side.get("runs") or []
        if not runs:
            lines.append(f"| {name} | failed: {str(side.get('error', ''))[:80]} | - | - |")
            continue
        share = summary([r["data_wait_share"] for r in runs])
        steady = summary([r["data_wait_share_steady"] for r in runs])
        wait = summary([r["data_wait_s"] for r in runs])
        lines.append(
            f"| {name} | {share['median']:.1%} ({share['min']:.1%}-{share['max']:.1%}) | {steady['median']:.1%} "
            f"({steady['min']:.1%}-{steady['max']:.1%}) | {wait['median']:.2f} | {side['seconds']['median']:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/qwenvl-bench-data-wait")
    parser.add_argument("--photo-size", default="2000x1500")
    parser.add_argument("--video-size", default="1920x1080")
    parser.add_argument("--video-seconds", default="10,10,15,15")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--gpu-step", action="store_true",
                        help="the step only waits --step-seconds (as a host waits on its GPU): no CPU forward/backward "
                        "competing with the workers for the cores")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="fewer repetitions allowed: a code-path check only")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse_suppress())
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        res = child(args.child, workdir, args.step_seconds, args.epochs, args.batch_size, args.gpu_step)
        print("RESULT=" + json.dumps(res))
        return
    from bench_data import make_mix
    from timing import compare

    from qwenvl.model.tiny import write_tiny_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    records = make_mix(workdir, args.photo_size, args.video_size, [int(x) for x in args.video_seconds.split(",")])
    with open(workdir / "mix.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "messages": r["messages"]}) + "\n")
    if not (workdir / "tiny-qwen3_vl" / "config.json").is_file():
        write_tiny_checkpoint("qwen3_vl", workdir / "tiny-qwen3_vl", seed=0)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    configs = [c for c in args.configs.split(",") if c]
    if "qwenvl_defaults_cached" in configs and not (workdir / "wait_cache").is_dir():
        print("filling the media cache ...", file=sys.stderr)
        _run("qwenvl_defaults_cached", args, env)

    def on_result(name: str, r: int, res: dict[str, Any]) -> None:
        print(f"  {name} #{r}: {res.get('data_wait_share', res.get('error'))}", file=sys.stderr)

    result = compare({c: (lambda c=c: _run(c, args, env)) for c in configs}, repeats=args.repeats,
                     warmup=args.warmup, on_result=on_result, smoke=args.smoke)  # fmt: skip
    result.update(
        mix=f"bench_data.py's mix with photos {args.photo_size}, videos {args.video_size} of {args.video_seconds} s",
        step_seconds=args.step_seconds, batch_size=args.batch_size, epochs=args.epochs, cpus=os.cpu_count(),
        gpu_step=args.gpu_step,
    )  # fmt: skip
    for line in table(result):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
