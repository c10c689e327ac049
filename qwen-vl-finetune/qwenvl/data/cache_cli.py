"""``qwenvl cache build``: fill a media cache (see :mod:`qwenvl.data.media_cache`) before training, e.g. once
before a multi-node job on a shared file system, so that no rank decodes a video even in the first epoch.

Run with the flags the training will use (the same datasets, checkpoint and pixel / frame budgets: entries are
keyed by them, and a training with other budgets would not find them)::

    qwenvl cache build --media_cache /shared/cache --model_name_or_path Qwen/Qwen3-VL-8B-Instruct \\
        --dataset_use my_data --dataset_registry data.yaml [--workers 8] [--num_shards 4 --shard_index 0]

then train with ``--media_cache /shared/cache``. ``--num_shards N --shard_index i`` builds the i-th of N disjoint
shares of the media (one per node). Files that fail to load are listed and skipped; training reports them
(``--bad_media``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from qwenvl.cli import StrictParser, UserError, run_tool
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(prog="qwenvl cache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="build")
    build = commands.add_parser("build", description=__doc__, help="process every image and video into the cache")
    build.add_argument("--media_cache", required=True, metavar="DIR", help="the cache folder (created)")
    build.add_argument(
        "--model_name_or_path", required=True, help="checkpoint whose family and processor (patches) to use"
    )
    build.add_argument(
        "--dataset_use", required=True, help="comma-separated registry names or annotation files, name%%N to sample"
    )
    build.add_argument("--dataset_registry", default=None, help="YAML registry with more datasets")
    build.add_argument(
        "--media_root", default=None, help="media root of annotation files given directly (default: their folder)"
    )
    build.add_argument("--data_seed_sampling", type=int, default=42, help="seed of name%%N sampling (as in training)")
    build.add_argument(
        "--media_cache_max_gb", type=float, default=None, help="size bound in GB (LRU eviction); default none"
    )
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    build.add_argument("--num_shards", type=int, default=1, help="split the media into this many disjoint shares")
    build.add_argument("--shard_index", type=int, default=0, help="which share to build (0-based)")
    MediaBudget.add_arguments(build, TRAINING_BUDGET)
    return parser


_CACHE: Any = None


def _init_worker(cache: Any) -> None:
    global _CACHE
    _CACHE = cache


def _build_one(task: tuple[str, dict[str, Any]]) -> tuple[str, str | None, dict[str, int]]:
    kind, item = task
    before = dict(_CACHE.stats.to_dict())
    try:
        _, outcome = _CACHE.load(kind, item)
    except Exception as e:  # noqa: BLE001 - a bad file is listed, the others are built
        return "error", f"{item.get(kind)}: {type(e).__name__}: {e}", {}
    after = _CACHE.stats.to_dict()
    return outcome, None, {k: after[k] - before[k] for k in ("corrupt", "written_bytes", "evicted")}


def build(args: argparse.Namespace) -> int:
    import concurrent.futures
    import json
    import multiprocessing

    from tqdm import tqdm

    from qwenvl.data.media_cache import MediaCache
    from qwenvl.data.registry import load_records
    from qwenvl.model.loader import load_processor, read_family
    from qwenvl.model.preprocessing import PreprocessingSettings

    if not 0 <= args.shard_index < args.num_shards:
        raise UserError(f"--shard_index {args.shard_index} is not in 0..{args.num_shards - 1} (--num_shards)")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    family = read_family(args.model_name_or_path)
    try:
        budget = MediaBudget.from_attrs(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    settings = PreprocessingSettings(family.model_type, family.patch_size, budget)
    max_bytes = int(args.media_cache_max_gb * 1e9) if args.media_cache_max_gb is not None else None
    cache = MediaCache(args.media_cache, settings, load_processor(args.model_name_or_path), max_bytes=max_bytes)
    records = load_records(
        args.dataset_use, args.dataset_registry, seed=args.data_seed_sampling, media_root=args.media_root,
        bad_records="skip",
    )  # fmt: skip
    tasks, seen = [], set()
    for record in records:
        for item in record.media():
            kind = item["type"]
            ready = budget.image_item(item) if kind == "image" else budget.video_item(item)
            ident = json.dumps([kind, ready], sort_keys=True, default=str)
            if ident not in seen:
                seen.add(ident)
                tasks.append((kind, ready))
    tasks = tasks[args.shard_index :: args.num_shards]
    counts = {"hit": 0, "miss": 0, "bypass": 0, "error": 0, "corrupt": 0, "written_bytes": 0}
    errors: list[str] = []
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(args.workers, max(1, len(tasks))), mp_context=context, initializer=_init_worker,
        initargs=(cache,),
    ) as pool:  # fmt: skip
        for outcome, error, delta in tqdm(pool.map(_build_one, tasks, chunksize=1), total=len(tasks), unit="item"):
            counts[outcome] += 1
            counts["corrupt"] += delta.get("corrupt", 0)
            counts["written_bytes"] += delta.get("written_bytes", 0)
            if error:
                errors.append(error)
    if max_bytes is not None:
        cache.evict()
    usage = cache.disk_usage()
    print(
        f"media cache {args.media_cache} ({family.model_type}, {budget.describe()}): {len(tasks)} items in shard "
        f"{args.shard_index}/{args.num_shards}: {counts['miss']} built ({counts['written_bytes'] / 1e6:.1f} MB "
        f"written), {counts['hit']} already cached, {counts['corrupt']} corrupt entries rebuilt, {counts['bypass']} "
        f"not cacheable (not local files), {counts['error']} failed; {usage / 1e6:.1f} MB on disk"
    )
    for error in errors[:20]:
        print(f"  failed: {error}")
    if len(errors) > 20:
        print(f"  ... and {len(errors) - 20} more")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(run_tool(lambda: build(args)))


if __name__ == "__main__":
    main()
