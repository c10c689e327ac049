"""``qwenvl dpo`` / ``qwenvl grpo`` against TRL's ``DPOTrainer`` / ``GRPOTrainer`` on this project's data: steps/s,
peak RSS and the losses (``--algo dpo|grpo``).

Issue 29 asks to measure TRL's trainers on our data before deciding whether to build on them. Both sides train
the same tiny Qwen3-VL (full LLM, vision tower and merger frozen, a frozen reference copy, sigmoid DPO, beta 0.1,
the same learning rate and seed) on the same image pairs, 2 pairs per step, padded (TRL has no packing or video
for vision-language models), each side in a fresh process so that its peak RSS is its own. Timing discipline of
``timing.py``: a warm-up, the sides alternated, >= 5 repetitions, median and spread.

Needs TRL beside the project's environment (it is not a dependency): ``pip install --no-deps -t DIR trl`` and
``--trl-path DIR``, or TRL installed. Run::

    .venv/bin/python benchmarks/bench_rl.py [--algo dpo|grpo] [--steps 6] [--repeats 5] [--trl-path DIR] [--out FILE]

GRPO: both sides train the same tiny Qwen3-VL (full LLM, vision frozen, no reference: beta 0, one pass per rollout
batch) on the 5 demo pictures ("What color is the shape?"), 2 prompts x 4 completions of at most 8 tokens per step,
temperature 1, the DAPO token-mean loss and group-normalised advantages on both, with the same reward: the share of
vowels among the completion's letters (a random model's samples differ in it, so advantages are not all zero).
Rollouts are sampled, so the two sides' completions, and hence losses, are not the same token for token; the
rewards at step 1 come from the same initial policy (with the same seed both sample the same first completions,
so step 1's rewards and gradient norm can be compared exactly; later steps drift apart).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # benchmarks/timing.py
LR = "1e-4"


def _pairs() -> list[dict[str, Any]]:
    """The image pairs of examples/data/pairs.jsonl (TRL has no video), media paths resolved."""
    demo = ROOT / "qwen-vl-finetune" / "qwenvl" / "data" / "demo"
    rows = [json.loads(line) for line in (ROOT / "examples" / "data" / "pairs.jsonl").read_text().splitlines()]
    out = []
    for row in rows:
        if "image" in row:
            out.append({**row, "image": str(demo / row["image"])})
    return out


def _timed(trainer: Any, **series: str) -> dict[str, Any]:
    """Train; the seconds of ``trainer.train()`` and, per logged step, the loss and each ``name=log key`` series."""
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "losses": [h["loss"] for h in history],
            **{name: [h.get(key) for h in history] for name, key in series.items()}}  # fmt: skip


def child_qwenvl(model: str, steps: int, out: Path) -> dict[str, Any]:
    from qwenvl.train.dpo import build

    data = out / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    built = build([
        "--model_name_or_path", model, "--dataset_use", str(data), "--output_dir", str(out / "run"), "--use_cpu",
        "True", "--report_to", "none", "--per_device_train_batch_size", "2", "--learning_rate", LR, "--max_steps",
        str(steps), "--logging_steps", "1", "--seed", "0", "--dataloader_num_workers", "0", "--tune_mm_llm", "True",
        "--tune_mm_mlp", "False", "--tune_mm_vision", "False", "--lr_scheduler_type", "constant", "--save_strategy",
        "no", "--weight_decay", "0.0", "--beta", "0.1", "--loss_type", "sigmoid", "--reference", "copy",
        "--max_pixels", str(64 * 64 * 4), "--min_pixels", str(32 * 32),
    ])  # fmt: skip
    trainer = built["trainer"]
    return _timed(trainer, margins="rewards/margin")


def child_trl(model: str, steps: int, out: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from qwen_vl_utils import fetch_image
    from qwenvl.model.loader import load_model, load_processor

    torch.manual_seed(0)
    policy = load_model(model, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(model)
    for name, param in policy.named_parameters():
        param.requires_grad_(".visual." not in f".{name}")
    rows = []
    for pair in _pairs():
        # the same resized picture our side trains on (qwen_vl_utils under the same budget)
        image = fetch_image({"image": pair["image"], "max_pixels": 64 * 64 * 4, "min_pixels": 32 * 32},
                            image_patch_size=16)  # fmt: skip
        question = pair["conversations"][0]["value"].replace("<image>\n", "")
        rows.append({
            "images": [image],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair["chosen"]}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair["rejected"]}]}],
        })  # fmt: skip
    args = DPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=2, learning_rate=float(LR), max_steps=steps,
        logging_steps=1, seed=0, use_cpu=True, report_to="none", lr_scheduler_type="constant", save_strategy="no",
        weight_decay=0.0, beta=0.1, loss_type=["sigmoid"], dataloader_num_workers=0, max_length=None,
    )  # fmt: skip
    trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    return _timed(trainer, margins="rewards/margins")


VOWELS = '''
def vowels(completion, solution=None, **context):
    """The share of vowels among the completion's letters."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)
'''
QUESTION = "What color is the shape?"
GRPO = {"num_generations": 4, "max_completion_length": 8, "temperature": 1.0, "prompts_per_step": 2, "lr": 1e-4}


def _pictures() -> list[Path]:
    return sorted((ROOT / "qwen-vl-finetune" / "qwenvl" / "data" / "demo" / "images").iterdir())


def child_qwenvl_grpo(model: str, steps: int, out: Path) -> dict[str, Any]:
    (out / "bench_rewards.py").write_text(VOWELS)
    sys.path.insert(0, str(out))
    from qwenvl.train.grpo import build

    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": p.stem, "image": str(p), "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": p.stem.split("_")[1]}]}) + "\n"
        for p in _pictures()))  # fmt: skip
    built = build([
        "--model_name_or_path", model, "--dataset_use", str(data), "--output_dir", str(out / "run"), "--use_cpu",
        "True", "--report_to", "none", "--per_device_train_batch_size", str(GRPO["prompts_per_step"]),
        "--learning_rate", str(GRPO["lr"]), "--max_steps", str(steps), "--logging_steps", "1", "--seed", "0",
        "--dataloader_num_workers", "0", "--tune_mm_llm", "True", "--tune_mm_mlp", "False", "--tune_mm_vision",
        "False", "--lr_scheduler_type", "constant", "--save_strategy", "no", "--weight_decay", "0.0", "--beta", "0.0",
        "--rewards", "bench_rewards:vowels", "--num_generations", str(GRPO["num_generations"]),
        "--max_completion_length", str(GRPO["max_completion_length"]), "--temperature", str(GRPO["temperature"]),
        "--loss_type", "dapo", "--log_rollouts", "False",
        "--max_pixels", str(64 * 64 * 4), "--min_pixels", str(32 * 32),
    ])  # fmt: skip
    trainer = built["trainer"]
    return _timed(trainer, rewards="reward", grad_norms="grad_norm")


def child_trl_grpo(model: str, steps: int, out: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from qwen_vl_utils import fetch_image
    from qwenvl.model.loader import load_model, load_processor

    namespace: dict[str, Any] = {}
    exec(VOWELS, namespace)  # noqa: S102 - the same reward function as the other side

    def reward(completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [namespace["vowels"](t) for t in texts]

    torch.manual_seed(0)
    policy = load_model(model, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(model)
    for name, param in policy.named_parameters():
        param.requires_grad_(".visual." not in f".{name}")
    rows = [{"image": fetch_image({"image": str(p), "max_pixels": 64 * 64 * 4, "min_pixels": 32 * 32},
                                  image_patch_size=16),
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]}
            for p in _pictures()]  # fmt: skip
    args = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=GRPO["prompts_per_step"] * GRPO["num_generations"],
        num_generations=GRPO["num_generations"], max_completion_length=GRPO["max_completion_length"],
        temperature=GRPO["temperature"], learning_rate=GRPO["lr"], max_steps=steps, logging_steps=1, seed=0,
        use_cpu=True, report_to="none", lr_scheduler_type="constant", save_strategy="no", weight_decay=0.0, beta=0.0,
        loss_type="dapo", num_iterations=1, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=processor)  # fmt: skip
    return _timed(trainer, rewards="reward", grad_norms="grad_norm")


CHILDREN = {("dpo", "qwenvl"): "child_qwenvl", ("dpo", "trl"): "child_trl", ("grpo", "qwenvl"): "child_qwenvl_grpo",
            ("grpo", "trl"): "child_trl_grpo"}  # fmt: skip


def _child(side: str, model: str, steps: int, algo: str = "dpo") -> None:
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = globals()[CHILDREN[algo, side]](model, steps, Path(tmp))
        except Exception as e:  # noqa: BLE001 - reported as the side's error
            result = {"error": f"{type(e).__name__}: {e}"}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--algo", default="dpo", choices=["dpo", "grpo"], help="which trainers to compare")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per side (>= 5)")
    parser.add_argument("--trl-path", default=None, help="folder holding an installed trl (pip install -t)")
    parser.add_argument("--out", default=None, help="results JSON (default results/rl.json, results/rl_grpo.json)")
    parser.add_argument("--child", choices=["qwenvl", "trl"], help=argparse_hidden())
    parser.add_argument("--model", help=argparse_hidden())
    parser.add_argument("--smoke", action="store_true", help="fewer repetitions: a code-path check, not a figure")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.model, args.steps, args.algo)
        return 0
    from timing import compare

    from qwenvl.model.tiny import write_tiny_checkpoint

    tmp = Path(tempfile.mkdtemp())
    model = str(write_tiny_checkpoint("qwen3_vl", tmp / "qwen3_vl", seed=0))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if args.trl_path:
        env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), args.trl_path])

    def side(name: str):
        def run() -> dict[str, Any]:
            cmd = [sys.executable, __file__, "--child", name, "--model", model, "--steps", str(args.steps), "--algo",
                   args.algo]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                return {"error": proc.stderr[-2000:]}
            result = json.loads(line[len("RESULT ") :])
            if "seconds" in result:
                result["steps_per_s"] = args.steps / result["seconds"]
            return result

        return run

    result = compare({"qwenvl": side("qwenvl"), "trl": side("trl")}, repeats=args.repeats, smoke=args.smoke)
    result.update(steps=args.steps, algo=args.algo, settings=GRPO if args.algo == "grpo" else None)
    out = Path(args.out or HERE / "results" / ("rl.json" if args.algo == "dpo" else "rl_grpo.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, entry in result["sides"].items():
        runs = entry["runs"]
        if not runs:
            print(f"{name}: error {entry.get('error', '')[:500]}")
            continue
        rss = sorted(r["peak_rss_mb"] for r in runs)[len(runs) // 2]
        print(f"{name}: {args.steps / entry['seconds']['median']:.2f} steps/s (spread {entry['seconds']['spread']:.0%}),"
              f" peak RSS {rss:.0f} MB, losses {[round(x, 4) for x in runs[0]['losses']]}"
              + (f", rewards {[round(x, 3) for x in runs[0]['rewards']]}, grad norms "
                 f"{[round(x, 4) for x in runs[0]['grad_norms']]}" if "rewards" in runs[0] else ""))  # fmt: skip
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
