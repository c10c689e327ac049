"""Implementation of ``python -m qwenvl.data.inspect_video`` (see that module)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from qwenvl.data.encode import SampleEncoder, encode_prompts, media_cost
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget
from qwenvl.model.preprocessing import checkpoint_budget


def token_layout(tokenizer: Any, ids: list[int]) -> list[str]:
    """``ids`` as pieces: special tokens by name (a run of one shortened to ``<|video_pad|>x221``), the text between
    them decoded."""
    special = set(tokenizer.all_special_ids) | set(
        tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"])
    )
    pieces: list[str] = []
    i = 0
    while i < len(ids):
        j = i + 1
        if ids[i] in special:
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            name = tokenizer.convert_ids_to_tokens(ids[i])
            pieces.append(name if j - i == 1 else f"{name}x{j - i}")
        else:
            while j < len(ids) and ids[j] not in special:
                j += 1
            pieces.append(tokenizer.decode(ids[i:j]))
        i = j
    return pieces


def compare_encodings(training: Any, inference: Any, tokenizer: Any) -> list[str]:
    """Differences between a training encoding (prompt + answer) and an inference encoding (prompt) of one
    conversation: token ids of the prompt, video grids and video pixels."""
    train_ids, inf_ids = training["input_ids"].tolist(), inference["input_ids"][0].tolist()
    problems = []
    if train_ids[: len(inf_ids)] != inf_ids:
        at = next((i for i, (x, y) in enumerate(zip(train_ids, inf_ids)) if x != y), min(len(train_ids), len(inf_ids)))
        problems.append(
            f"token ids differ from position {at}: training {tokenizer.decode(train_ids[at : at + 12])!r} "
            f"vs inference {tokenizer.decode(inf_ids[at : at + 12])!r}"
        )
    for key in ("video_grid_thw", "pixel_values_videos"):
        mine, theirs = training.get(key), inference.get(key)
        if mine is None or theirs is None or mine.shape != theirs.shape or not torch.equal(mine, theirs):
            problems.append(f"{key} differs between training and inference")
    return problems


def inspect(args: argparse.Namespace) -> int:
    from qwen_vl_utils import VisionInputError
    from qwen_vl_utils.video_io import get_video_reader_backend, plan_video
    from qwenvl.cli import UserError
    from qwenvl.model.loader import load_processor, read_family

    if not Path(args.video).is_file():
        raise UserError(f"--video {args.video}: no such file (give a local video file; download a URL first)")
    family = read_family(args.model_name_or_path)
    processor = load_processor(args.model_name_or_path)
    # The budget every inference tool (demo, evaluations) uses for this checkpoint, with the flags over it.
    overrides = {f.name: getattr(args, f.name) for f in fields(MediaBudget)}
    budget, source = checkpoint_budget(args.model_name_or_path, **overrides)
    item = {"type": "video", "video": args.video}

    try:
        plan = plan_video(args.video, budget.video_item({"video": args.video}), family.patch_size)
    except (VisionInputError, ValueError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--video {args.video}: not a readable video ({first[:300]})") from None
    probe = plan.probe
    temporal = getattr(processor.video_processor, "temporal_patch_size", 2)
    merge = getattr(processor.video_processor, "merge_size", 2)
    grid = (plan.nframes // temporal, plan.height // family.patch_size, plan.width // family.patch_size)
    tokens = grid[0] * grid[1] * grid[2] // merge**2
    seconds = [round(i / probe.fps, 3) for i in plan.indices]
    print(f"video {args.video}")
    print(
        f"  probe: {probe.total_frames} frames at {probe.fps:.3f} fps ({probe.total_frames / probe.fps:.2f} s), "
        f"{probe.width}x{probe.height}, rotation {probe.rotation}; decoder {get_video_reader_backend()}"
    )
    print(f"  budget: {budget.describe()} (from {source})")
    print(
        f"  sampled: {plan.nframes} frames of range [{plan.start}, {plan.end}], resized to {plan.width}x{plan.height}"
    )
    groups = [plan.indices[i : i + temporal] for i in range(0, len(plan.indices), temporal)]
    group_seconds = [seconds[i : i + temporal] for i in range(0, len(seconds), temporal)]
    for g, (idx, secs) in enumerate(zip(groups, group_seconds)):
        print(f"    group {g:>3}: frames {idx} at {secs} s (mean {sum(secs) / len(secs):.2f} s)")
    print(f"  grid (t, h, w) {grid} -> {tokens} visual tokens ({tokens // max(grid[0], 1)} per group)")

    conversation = [{"role": "user", "content": [item, {"type": "text", "text": args.question}]}]
    inference = encode_prompts(processor, family, [conversation], budget)
    inf_ids = inference["input_ids"][0].tolist()
    layout = token_layout(processor.tokenizer, inf_ids)
    print(f"  prompt ({len(inf_ids)} tokens):")
    for piece in layout:
        print(f"    {piece!r}")

    encoder = SampleEncoder(processor, family, budget)  # training's encoder, under the same budget
    training = encoder(conversation + [{"role": "assistant", "content": "x"}], "inspect")
    problems = compare_encodings(training, inference, processor.tokenizer)
    if list(inference["video_grid_thw"][0].tolist()) != list(grid):
        problems.append(f"the processor's grid {inference['video_grid_thw'][0].tolist()} is not the planned {grid}")

    trained = None
    if source.startswith("qwen_vl_utils"):
        # A checkpoint without saved settings: training with the default flags samples differently, and the
        # checkpoint it writes saves that budget, so the fine-tuned model is then served the training way.
        t = media_cost({"type": "video", "video": args.video}, family, TRAINING_BUDGET)
        trained = {"frames": t.frames, "size": [t.width, t.height], "visual_tokens": t.tokens}
        print(
            f"  note: this checkpoint has no qwenvl_preprocessing.json, so the demo and the evaluations use "
            f"qwen_vl_utils defaults (above); training with the default flags samples {t.frames} frames of "
            f"{t.width}x{t.height} = {t.tokens} visual tokens, and its checkpoints are then served that way"
        )

    report = {
        "video": args.video,
        "probe": {k: v for k, v in asdict(probe).items() if k not in ("frame_pts", "keyframes")},  # not the scan
        "budget": asdict(budget),
        "budget_source": source,
        "frames": plan.nframes,
        "training_defaults": trained,
        "indices": plan.indices,
        "seconds": seconds,
        "size": [plan.width, plan.height],
        "grid_thw": list(grid),
        "visual_tokens": tokens,
        "prompt_layout": layout,
        "problems": problems,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if problems:
        print("MISMATCH between training and inference:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("training and inference encode this video identically (tokens, grid, pixels)")
    return 0
