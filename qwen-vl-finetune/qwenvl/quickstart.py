"""The main job on the embedded default: fine-tune a tiny Qwen3-VL to read colours, on CPU, in a few minutes.

1. builds a tiny random checkpoint offline (``qwenvl.model.tiny``; Qwen3-VL unless ``--family`` names another);
2. generates a dataset of pictures with one coloured shape on a noisy background ("What color is the shape?"
   -> "red" / "green" / "blue" / "yellow"), with train and held-out splits;
3. measures held-out accuracy (greedy answers, exact colour match);
4. fine-tunes it with the real training entry point (``qwenvl.train.train_qwen``, packed batches);
5. measures again and prints a before/after table. Exits with status 1 if held-out accuracy is below 90%.

Run (no downloads)::

    python -m qwenvl.quickstart [--family qwen3_vl|qwen3_5|...] [--out runs/quickstart] [--train-size 512] [--epochs 6]

A thinking family (Qwen3.5) is trained on its official rendering of the answers (an empty think block, then the
colour) and scored on the answer after ``</think>``. It runs on one CPU thread (as ``scripts/quickstart.sh``) unless
``OMP_NUM_THREADS`` is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

from PIL import Image, ImageDraw

from qwenvl.data.make_demo import COLORS, SHAPES  # one palette for the demo data and the main job


logger = logging.getLogger(__name__)

QUESTION = "What color is the shape?"


def shape_picture(rng: random.Random, color: str, size: int = 64) -> Image.Image:
    """One shape of ``color`` at a random place and size on a light, noisy background."""
    base = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), base)
    pixels = image.load()
    for _ in range(size * 4):  # speckle noise
        x, y = rng.randrange(size), rng.randrange(size)
        pixels[x, y] = tuple(max(0, c - rng.randint(20, 60)) for c in base)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLORS[color])
    draw = ImageDraw.Draw(image)
    shape = rng.choice(SHAPES)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx - r, cy + r), (cx + r, cy + r), (cx, cy - r)], fill=fill)
    return image


def make_dataset(root: Path, n_train: int, n_eval: int, seed: int = 0) -> dict[str, Path]:
    """Write images and upstream-format annotations; returns the annotation paths."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("heldout", n_eval)):
        records = []
        for i in range(n):
            color = list(COLORS)[i % len(COLORS)]
            name = f"{split}_{i:04d}_{color}.png"
            shape_picture(rng, color).save(root / "images" / name)
            records.append(
                {
                    "id": f"{split}-{i}",
                    "image": name,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{QUESTION}"},
                        {"from": "gpt", "value": color},
                    ],
                }
            )
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in records))
    registry = root / "registry.yaml"
    registry.write_text(
        "datasets:\n"
        f"  shapes_train:\n    annotation_path: {paths['train'].name}\n    media_root: images\n"
        f"  shapes_heldout:\n    annotation_path: {paths['heldout'].name}\n    media_root: images\n"
    )
    paths["registry"] = registry
    return paths


def evaluate(model_path: Path, annotations: Path, batch_size: int = 32) -> tuple[float, list[str]]:
    """Held-out accuracy: the greedy answer (after any reasoning), lower-cased and stripped, must equal the colour."""
    from qwenvl.inference import load_backend
    from qwenvl.inference.base import GenerationSettings, strip_reasoning

    backend = load_backend("hf", str(model_path), dtype="float32", attn_implementation="sdpa", device="cpu")
    records = [json.loads(line) for line in annotations.read_text().splitlines()]
    image_root = annotations.parent / "images"
    answers = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": str(image_root / r["image"])},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ]
            for r in chunk
        ]
        # A thinking family first closes its (empty) think block: a few more tokens.
        tokens = 12 if backend.family.thinks_by_default else 4
        answers += [
            strip_reasoning(a) for a in backend.generate(conversations, GenerationSettings(max_new_tokens=tokens))
        ]
    gold = [r["conversations"][1]["value"] for r in records]
    correct = sum(a.strip().lower().rstrip(".") == g for a, g in zip(answers, gold))
    return correct / len(records), answers


def main(argv: list[str] | None = None) -> int:
    from qwenvl.cli import StrictParser
    from qwenvl.model.families import FAMILIES

    parser = StrictParser(description=__doc__)
    parser.add_argument(
        "--family", default="qwen3_vl", choices=sorted(FAMILIES), help="model family of the tiny model"
    )
    parser.add_argument("--out", default="runs/quickstart", help="working folder (reused: training resumes)")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--eval-size", type=int, default=96)
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stage", default="sft", choices=["sft", "dpo", "grpo"],
        help="sft: this job; dpo / grpo: a brief SFT, then preference / RL tuning must gain 30 points "
        "(qwenvl/quickstart_rl.py; --train-size, --eval-size, --family, --out, --seed apply)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    set_cpu_threads()
    from qwenvl.cli import run_tool

    if args.stage != "sft":
        from qwenvl.quickstart_rl import run as run_rl

        return run_tool(lambda: run_rl(args))
    return run_tool(lambda: run(args))


# What scripts/quickstart.sh exports; a value the user set wins.
QUICKSTART_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                  "HF_DATASETS_OFFLINE": "1"}  # fmt: skip


def set_cpu_threads() -> int:
    """One CPU thread unless ``OMP_NUM_THREADS`` says otherwise: the tiny model's matrices are far too small to gain
    from threads, and on a busy small machine extra threads make the job 10x slower. Returns the thread count."""
    for key, value in QUICKSTART_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)  # also when torch was imported before the variable was set
    return threads


# The tiny model's training flags both main jobs share: CPU, all parts trained, the pictures' small budget.
TINY_FLAGS = ["--use_cpu", "True", "--report_to", "none", "--dataloader_num_workers", "0", "--weight_decay", "0.0",
              "--max_pixels", str(64 * 64), "--min_pixels", str(32 * 32), "--model_max_length", "256",
              "--tune_mm_vision", "True", "--tune_mm_mlp", "True", "--tune_mm_llm", "True"]  # fmt: skip


def start(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Path], float]:
    """A main job's start: the output folder checked, logging, the tiny random model and the colour pictures;
    returns ``(out, base checkpoint, dataset paths, start time)``."""
    from qwenvl.model.tiny import check_output_folder, write_tiny_checkpoint

    check_output_folder(args.out)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "qwen_vl_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    started = time.monotonic()
    base = write_tiny_checkpoint(args.family, out / "base", seed=args.seed)
    return out, base, make_dataset(out / "data", args.train_size, args.eval_size, seed=args.seed), started


def run(args: argparse.Namespace) -> int:
    from qwenvl.train.train_qwen import train

    out, base, data, started = start(args)
    before, _ = evaluate(base, data["heldout"])
    print(f"held-out accuracy before fine-tuning: {before:.1%}")

    trained = out / "finetuned"
    train(
        [
            *TINY_FLAGS,
            "--model_name_or_path", str(base),
            "--dataset_use", "shapes_train",
            "--eval_dataset_use", "shapes_heldout",
            "--dataset_registry", str(data["registry"]),
            "--output_dir", str(trained),
            "--data_packing", "True",
            "--max_packed_tokens", "512",
            "--per_device_train_batch_size", "1",
            "--num_train_epochs", str(args.epochs),
            "--learning_rate", str(args.learning_rate),
            "--lr_scheduler_type", "cosine",
            "--warmup_steps", "0.05",
            "--eval_strategy", "epoch",
            "--save_strategy", "epoch",
            "--save_total_limit", "1",
            "--logging_steps", "10",
            "--seed", str(args.seed),
        ]
    )  # fmt: skip
    after, answers = evaluate(trained, data["heldout"])
    print()
    print(f"{'':28} {'held-out accuracy':>18}")
    print(f"{f'before (random tiny {args.family})':28} {before:>18.1%}")
    print(f"{'after fine-tuning':28} {after:>18.1%}")
    print(f"(chance: {1 / len(COLORS):.0%}; {args.eval_size} held-out pictures; sample answers: {answers[:4]})")
    print(f"fine-tuned model: {trained}  total time {time.monotonic() - started:.0f}s")
    if after < 0.9:
        print("FAILED: held-out accuracy is below 90%")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
