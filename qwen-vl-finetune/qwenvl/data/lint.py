"""Check a training mix before spending GPU time on it.

For every record: annotation problems (tag vs media counts, roles, missing files), media that cannot be read or
have an extreme aspect ratio, and the token budget (text + visual tokens under the chosen pixel budgets, read
from image headers and a video probe, without decoding pixels). Then a length histogram, how many samples the
over-length policy would skip or truncate, and the packing efficiency the planner would reach.

Run::

    python -m qwenvl.data.lint --dataset_use demo_images,demo_video,demo_messages \\
        --model_name_or_path Qwen/Qwen3-VL-8B-Instruct [--model_max_length 4096] [--max_packed_tokens 8192] \\
        [--max_pixels 451584] [--dataset_registry my_registry.yaml] [--per_sample] [--verify_media]

Exits with status 1 when any record has a problem.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from qwenvl.data.annotations import AnnotationError, normalise_record, read_annotation_file
from qwenvl.data.dataset import LengthEstimate, estimate_length
from qwenvl.data.encode import MediaBudget, MediaLoadError, SampleEncoder
from qwenvl.data.packing import packing_efficiency, plan_packs
from qwenvl.data.registry import load_registry, parse_dataset_use, resolve_spec, sample_indices


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


def lint(args: argparse.Namespace) -> int:
    from qwenvl.model.loader import load_processor, read_family

    family = read_family(args.model_name_or_path)
    processor = load_processor(args.model_name_or_path)
    budget = MediaBudget(**{f.name: getattr(args, f.name) for f in fields(MediaBudget)})
    encoder = SampleEncoder(processor, family, budget)
    registry = load_registry(args.dataset_registry)

    problems: list[str] = []
    rows: list[tuple[str, LengthEstimate]] = []
    for name, rate in parse_dataset_use(args.dataset_use):
        spec = resolve_spec(name, registry)
        records = []
        for where, raw in read_annotation_file(spec.annotation_path):
            try:
                records.append(normalise_record(raw, where, spec.media_root, spec.name))
            except AnnotationError as e:
                problems.append(str(e))
        for i in sample_indices(len(records), rate, args.seed, name):
            record = records[i]
            try:
                encoder.check_text(record.messages, record.id)
            except ValueError as e:
                problems.append(str(e))
            est = estimate_length(record, encoder)
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
    print(f"family {family.model_type}, patch {family.patch_size}, budgets {budget}")
    print(f"{len(rows)} samples, {sum(lengths)} tokens, max {max(lengths, default=0)}, "
          f"mean {sum(lengths) / max(len(lengths), 1):.1f}")  # fmt: skip
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
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        return 1
    print("\nno problems found")
    return 0


def padded_efficiency(lengths: list[int], batch_size: int) -> float:
    """Share of real tokens when consecutive samples are padded to the longest of each batch."""
    padded = sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size)
    )
    return sum(lengths) / padded if padded else 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset_use", required=True, help="comma-separated registry names or annotation files, name%%N to sample"
    )
    parser.add_argument("--model_name_or_path", required=True, help="checkpoint whose processor and family to use")
    parser.add_argument("--dataset_registry", default=None, help="YAML registry with more datasets")
    parser.add_argument("--model_max_length", type=int, default=None, help="longest sample accepted")
    parser.add_argument("--overlong", choices=["error", "skip", "truncate_text"], default="error")
    parser.add_argument(
        "--max_packed_tokens", type=int, default=8192, help="pack capacity for the efficiency estimate"
    )
    parser.add_argument("--batch_size", type=int, default=4, help="batch size for the padded-efficiency comparison")
    parser.add_argument("--seed", type=int, default=42, help="seed of %%N sampling")
    parser.add_argument(
        "--verify_media", action="store_true", help="also decode all media (slower; finds corrupt files)"
    )
    parser.add_argument("--per_sample", action="store_true", help="print every sample's budget (default: up to 50)")
    defaults: dict[str, Any] = {f.name: f.default for f in fields(MediaBudget)}
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", type=type(default), default=default, help=f"default {default}")
    return parser


def main(argv: list[str] | None = None) -> None:
    sys.exit(lint(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
