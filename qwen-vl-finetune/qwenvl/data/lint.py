"""Check a training mix before spending GPU time on it.

For every record: annotation problems (tag vs media counts, roles, missing files), media that cannot be read or
have an extreme aspect ratio, grounding boxes and points that break the family's coordinate convention (0-1000 for
Qwen2-VL and Qwen3-VL, resized-image pixels for Qwen2.5-VL), and the token budget (text + visual tokens under the
chosen pixel budgets, read from image headers and a video probe, without decoding pixels). Then a length histogram,
how many samples the over-length policy would skip or truncate, and the packing efficiency the planner would reach.

Run::

    python -m qwenvl.data.lint --dataset_use demo_images,demo_video,demo_messages \\
        --model_name_or_path Qwen/Qwen3-VL-8B-Instruct [--model_max_length 4096] [--max_packed_tokens 8192] \\
        [--max_pixels 451584] [--dataset_registry my_registry.yaml] [--per_sample] [--verify_media]

Exits with status 1 when any record has a problem.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qwenvl.cli import StrictParser, run_tool
from qwenvl.data.annotations import Record
from qwenvl.data.packing import packing_efficiency, plan_packs
from qwenvl.data.registry import load_records
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget
from qwenvl.model.families import Family
from qwenvl.model.grounding import find_boxes, find_points, find_qwen2_boxes


def histogram(lengths: list[int], bins: int = 10, width: int = 40) -> list[str]:
    """Text histogram lines of ``lengths``."""
    if not lengths:
        return ["(no samples)"]
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - lo) // step, bins - 1)] += 1
    top = max(counts)
    lines = []
    for b, c in enumerate(counts):
        if c == 0 and b * step + lo > hi:
            continue
        bar = "#" * max(1 if c else 0, round(c / top * width))
        lines.append(f"{lo + b * step:>7}-{lo + (b + 1) * step - 1:<7} {c:>6} {bar}")
    return lines


def check_grounding(record: Record, family: Family, budget: MediaBudget) -> list[str]:
    """Boxes and points in assistant answers, checked against the family's coordinate convention.

    Qwen2-VL (``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``) and Qwen3-VL (JSON ``bbox_2d`` / ``point_2d``) use 0-1000
    relative coordinates; Qwen2.5-VL uses absolute pixels of the image *as resized for the model*, so a box must fit
    the resized size (a common mistake is the original image's pixels, which the model then learns wrongly).
    """
    from qwen_vl_utils.image_io import image_source, open_image
    from qwen_vl_utils.resize import image_target_size

    answers = [
        item.get("text") or ""
        for m in record.messages
        if m["role"] == "assistant"
        for item in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}])
    ]
    text = "\n".join(answers)
    boxes = find_qwen2_boxes(text) if family.box_markup == "box_tokens" else [c for c, _ in find_boxes(text)]
    points = find_points(text)
    if not boxes and not points:
        return []
    problems = []
    for x1, y1, x2, y2 in boxes:
        if x1 >= x2 or y1 >= y2:
            problems.append(f"{record.id}: box {[x1, y1, x2, y2]} is empty or inverted (expected x1 < x2, y1 < y2)")
    if family.box_coords == "resized_pixels":
        images = [item for item in record.media() if item["type"] == "image"]
        if len(images) != 1:
            return problems  # which image a box refers to is not knowable here
        ele = budget.image_item(images[0])
        width, height = open_image(image_source(ele)).size
        h, w = image_target_size(height, width, ele, family.patch_size)
        for x1, y1, x2, y2 in boxes:
            if min(x1, y1) < 0 or x2 > w or y2 > h:
                hint = (
                    f"; it fits the original {width}x{height}: scale by {w / width:.4g} x {h / height:.4g}"
                    if x2 <= width and y2 <= height and (w, h) != (width, height)
                    else ""
                )
                problems.append(
                    f"{record.id}: box {[x1, y1, x2, y2]} is outside the {w}x{h} image the model sees (Qwen2.5-VL "
                    f"boxes are absolute pixels of the resized image){hint}"
                )
        return problems
    for coords in [*boxes, *points]:
        if min(coords) < 0 or max(coords) > 1000:
            problems.append(
                f"{record.id}: {list(coords)} is outside 0-1000 ({family.model_type} grounding coordinates are "
                "relative, 0-1000; convert pixel coordinates with x * 1000 / width)"
            )
    return problems


def lint(args: argparse.Namespace) -> int:
    from qwenvl.data.dataset import estimate_length
    from qwenvl.data.encode import MediaLoadError, SampleEncoder
    from qwenvl.model.loader import load_processor, read_family

    family = read_family(args.model_name_or_path)
    processor = load_processor(args.model_name_or_path)
    budget = MediaBudget.from_attrs(args)
    encoder = SampleEncoder(processor, family, budget)
    problems: list[str] = []
    rows: list[tuple[str, Any]] = []
    invalid: list[tuple[str, str]] = []
    records = load_records(
        args.dataset_use, args.dataset_registry, seed=args.seed, bad_records="skip", invalid=invalid,
        media_root=args.media_root,
    )  # fmt: skip  # every invalid record is reported, and the report always finishes
    problems.extend(reason for _, reason in invalid)
    for record in records:
        try:
            encoder.check_text(record.messages, record.id)
            est = estimate_length(record, encoder)
        except (ValueError, TypeError) as e:
            problems.append(f"{record.id}: {e}")
            continue
        if not est.media_error:
            problems.extend(check_grounding(record, family, budget))
        if est.media_error:
            problems.append(f"{record.id}: media problem: {est.media_error}")
        elif args.verify_media:
            try:  # decode every pixel: finds truncated or corrupt bodies that headers do not show
                encoder.load_media(record.messages, record.id)
            except MediaLoadError as e:
                problems.append(str(e))
        rows.append((record.id, est))

    lengths = [est.total for _, est in rows]
    limit = args.model_max_length
    over = [(rid, est) for rid, est in rows if limit and est.total > limit]
    if args.per_sample or len(rows) <= 50:
        print(f"{'sample':60} {'text':>6} {'image':>6} {'video':>6} {'total':>7}")
        for rid, est in rows:
            flag = "  > limit" if limit and est.total > limit else ""
            print(
                f"{rid[-60:]:60} {est.text_tokens:>6} {est.image_tokens:>6} {est.video_tokens:>6} {est.total:>7}{flag}"
            )
        print()
    print(f"family {family.model_type}, patch {family.patch_size}, budgets: {budget.describe()}")
    print(f"{len(rows)} samples, {sum(lengths)} tokens, max {max(lengths, default=0)}, "
          f"mean {sum(lengths) / max(len(lengths), 1):.1f}")  # fmt: skip
    text_only = sum(1 for _, est in rows if est.image_tokens == 0 and est.video_tokens == 0)
    if text_only:
        print(
            f"{text_only} text-only sample(s) ({text_only / len(rows):.0%}): fine under DDP and ZeRO-3 here (every "
            "rank runs the vision tower each step, on a 1-token dummy image when its batch has none)"
        )
    print("length histogram (tokens):")
    for line in histogram(lengths):
        print("  " + line)
    if limit:
        action = {"error": "would stop training", "skip": "would be skipped", "truncate_text": "would be truncated"}
        print(f"{len(over)} sample(s) over --model_max_length {limit}: {action[args.overlong]}")
        for rid, est in over[:20]:
            print(f"  {rid} ({est.total} tokens)")
    fit = [n for n in lengths if n <= args.max_packed_tokens]
    if fit:
        packs = plan_packs(fit, args.max_packed_tokens)
        print(
            f"packing into {args.max_packed_tokens} tokens: {len(packs)} packs for {len(fit)} samples, "
            f"efficiency {packing_efficiency(fit, packs, args.max_packed_tokens):.1%} "
            f"(padded batches of {args.batch_size}: {padded_efficiency(fit, args.batch_size):.1%})"
        )
        if args.world_size > 1:
            units = [sum(fit[i] for i in pack) for pack in packs] if args.data_packing else fit
            per_step = 1 if args.data_packing else args.batch_size
            for line in rank_balance(units, args.world_size, per_step, args.seed):
                print(line)
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        return 1
    print("\nno problems found")
    return 0


def rank_balance(units: list[int], world_size: int, per_rank: int, seed: int = 42) -> list[str]:
    """How unequal the ranks' token loads are over one epoch: items (packs or samples, with their token counts) in
    a seeded shuffled order, dealt to ``world_size`` ranks ``per_rank`` at a time per step as the distributed
    sampler does (the last step's missing items repeat the first ones). A step lasts as long as its slowest rank."""
    import random

    if not units:
        return ["rank balance: no items"]
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    per_step = world_size * per_rank
    steps = -(-len(order) // per_step)
    order += order[: steps * per_step - len(order)]  # padding, as even_batches does
    slowest, mean, totals = [], [], [0] * world_size
    for step in range(steps):
        chunk = order[step * per_step : (step + 1) * per_step]
        loads = [sum(units[i] for i in chunk[r * per_rank : (r + 1) * per_rank]) for r in range(world_size)]
        for r, load in enumerate(loads):
            totals[r] += load
        slowest.append(max(loads))
        mean.append(sum(loads) / world_size)
    waste = 1 - sum(mean) / sum(slowest)
    ratios = sorted(s / m for s, m in zip(slowest, mean) if m)
    return [
        f"rank balance over {world_size} ranks ({len(units)} items, {steps} steps of {per_rank} per rank): ranks wait "
        f"{waste:.1%} of the step time for the slowest one; slowest/mean tokens per step median "
        f"{ratios[len(ratios) // 2]:.2f}x, max {ratios[-1]:.2f}x; epoch tokens per rank {min(totals)}-{max(totals)}"
    ]


def padded_efficiency(lengths: list[int], batch_size: int) -> float:
    """Share of real tokens when consecutive samples are padded to the longest of each batch."""
    padded = sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size)
    )
    return sum(lengths) / padded if padded else 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(description=__doc__)
    parser.add_argument(
        "--dataset_use", required=True, help="comma-separated registry names or annotation files, name%%N to sample"
    )
    parser.add_argument("--model_name_or_path", required=True, help="checkpoint whose processor and family to use")
    parser.add_argument("--dataset_registry", default=None, help="YAML registry with more datasets")
    parser.add_argument(
        "--media_root", default=None, help="media root of annotation files given directly (default: their folder)"
    )
    parser.add_argument("--model_max_length", type=int, default=None, help="longest sample accepted")
    parser.add_argument("--overlong", choices=["error", "skip", "truncate_text"], default="error")
    parser.add_argument(
        "--max_packed_tokens", type=int, default=8192, help="pack capacity for the efficiency estimate"
    )
    parser.add_argument("--batch_size", type=int, default=4, help="batch size for the padded-efficiency comparison")
    parser.add_argument(
        "--world_size", type=int, default=1, help="report how unequal the ranks' token loads are for this many ranks"
    )
    parser.add_argument(
        "--data_packing", action="store_true", help="with --world_size: ranks take packs (one per step), not samples"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of %%N sampling")
    parser.add_argument(
        "--verify_media", action="store_true", help="also decode all media (slower; finds corrupt files)"
    )
    parser.add_argument("--per_sample", action="store_true", help="print every sample's budget (default: up to 50)")
    MediaBudget.add_arguments(parser, TRAINING_BUDGET)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(run_tool(lambda: lint(args)))


if __name__ == "__main__":
    main()
