"""The runner every benchmark shares: a benchmark describes its questions with a :class:`Task` (how to list them,
build one question's conversation and its results record) and :func:`run_infer` does the rest (checks, data-parallel
launch, this process's shard, lock, resume, manifest, batched inference with a progress bar, the merge);
:func:`run_main` parses and reports a :class:`qwenvl.cli.UserError` in one line.

The pieces live by concern, and are re-exported here for the benchmarks:

* ``results.py``: the results JSONL, its manifest, the output lock, shard files and ``merge``;
* ``options.py``: the ``infer`` flags (backend via ``BackendConfig``, shards, decoding presets, pixel budget);
* ``reports.py``: the ``eval`` / ``compare`` / ``export`` side (judge, upstream's flags and results files, scores);
* ``stats.py``: accuracy intervals and the paired test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from qwenvl.cli import UserError
from qwenvl.evaluation.options import (  # noqa: F401 - the benchmarks import these from core
    DECODING_FIELDS,
    FAMILY_CHOICES,
    add_infer_arguments,
    generation_settings,
    load_backend_from_args,
    resolve_budget,
    upstream_presets,
)
from qwenvl.evaluation.reports import *  # noqa: F401,F403 - the eval side, re-exported for the benchmarks
from qwenvl.evaluation.reports import apply_upstream_judge_flags
from qwenvl.evaluation.results import *  # noqa: F401,F403 - results files, re-exported for the benchmarks
from qwenvl.evaluation.results import (
    ANSWER_SETTINGS,
    OutputLock,
    all_shards_done,
    append_results,
    config_hash,
    manifest_path,
    merge_outputs,
    read_manifest,
    read_results,
    settings_changes,
    without_flag,
    write_manifest,
)
from qwenvl.evaluation.stats import ci_text, format_comparison, paired_comparison, wilson_interval  # noqa: F401
from qwenvl.inference.base import THINK_END, strip_reasoning  # noqa: F401 - the benchmarks' answer extraction
from qwenvl.inference.config import BackendConfig


# ----------------------------------------------------------------------------------------------- the loop


@dataclass
class Task:
    """What ``run_infer`` needs to know about a benchmark."""

    name: str  # for the progress bar
    module: str  # ``python -m <module> infer ...`` starts one shard (data-parallel runs)
    question_ids: Callable[[argparse.Namespace], list[str]]  # every selected question, in order
    rows: Callable[[argparse.Namespace, set[str]], Iterator[dict[str, Any]]]  # the rows of these ids, in order
    conversation: Callable[[argparse.Namespace, dict[str, Any]], list[dict[str, Any]]]
    record: Callable[[argparse.Namespace, dict[str, Any], list[dict[str, Any]], Any], dict[str, Any]]
    settings: Callable[[argparse.Namespace], dict[str, Any]]  # the benchmark's own manifest entries
    presets: dict[str, dict[str, Any]]
    budget_overrides: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    answer_settings: tuple[str, ...] = ()  # the benchmark's settings that change answers (compared on resume)
    id_key: str = "id"


def run_infer(args: argparse.Namespace, task: Task) -> int:
    """``infer`` for any benchmark: checks, data-parallel launch, this process's shard, lock, resume, manifest,
    batched inference with a progress bar, and the merge when the last shard is done."""
    from qwenvl.evaluation import shards

    BackendConfig.from_args(args)  # a backend without its checkpoint or server is refused before any work
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.data_parallel_size > 1 and args.num_shards is None:
        argv = without_flag(args.argv, "--data-parallel-size")
        per_worker = args.tensor_parallel_size if args.backend == "vllm" else 1
        shards.launch_data_parallel(argv, args.data_parallel_size, per_worker, task.module)
        return merge_outputs(output, args.data_parallel_size)
    num, index = shards.shard_from_env(args.num_shards, args.shard_index)
    # The file itself, not a symlink to it: its lock and manifest are the same whichever way it is named.
    given = shards.shard_path(output, num, index)
    path = Path(os.path.realpath(given))
    with OutputLock(path, given):
        code = _infer(args, task, path, num, index)
    if code == 0 and num > 1 and all_shards_done(output, num):
        merge_outputs(output, num)  # the last shard to finish joins them (a repeated merge writes the same file)
    return code


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        missing.append(path)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): it and its parents stay
            break


def _infer(args: argparse.Namespace, task: Task, output: Path, num_shards: int, shard_index: int) -> int:
    from qwenvl.evaluation import shards

    done = {r[task.id_key] for r in read_results(output, repair=True)}
    budget, budgets = resolve_budget(args, **task.budget_overrides(args))
    gen = generation_settings(args, task.presets)
    assigned = shards.select(task.question_ids(args), num_shards, shard_index)
    # A server is asked what it serves before anything is written: the manifest records the served model.
    backend = load_backend_from_args(args, budget) if args.backend == "openai" else None
    run_settings = {
        "mode": "infer",
        "model_path": args.model_path,
        "model_config_sha256": config_hash(args.model_path) if args.model_path else None,
        "served_model": backend.model if backend is not None else None,
        "base_url": args.base_url if args.backend == "openai" else None,
        **task.settings(args),
        "pixel_budgets": budgets,
        "preset": args.preset,
        "decoding": vars(gen),
        "backend": args.backend,
        "backend_config": asdict(BackendConfig.from_args(args)),
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "shard": {"index": shard_index, "num_shards": num_shards, "ids": assigned},
    }
    previous = read_manifest(output) if done else None
    if previous is not None:
        changes = settings_changes(previous, run_settings, ANSWER_SETTINGS + task.answer_settings)
        if changes and not args.allow_settings_change:
            raise UserError(
                f"{output} holds {len(done)} answers made with other settings ({'; '.join(changes)}); resuming would "
                "mix them. Use another --output-file, or pass --allow-settings-change to mix on purpose"
            )
        if changes:
            print(f"warning: mixing answers made with other settings: {'; '.join(changes)}", file=sys.stderr)
    manifest = manifest_path(output)
    before = manifest.read_bytes() if manifest.is_file() else None
    write_manifest(output, run_settings, segment=True)
    todo = set(assigned) - done
    shard_note = f" (shard {shard_index} of {num_shards}: {len(assigned)} question(s))" if num_shards > 1 else ""
    print(f"{len(done)} question(s) already in {output}, {len(todo)} to run{shard_note}", file=sys.stderr)
    if not todo:
        return 0

    started, count, truncated, empty = time.monotonic(), 0, 0, 0
    try:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), desc=task.name, unit="q")  # with ETA
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        progress = None
    try:
        backend = backend or load_backend_from_args(args, budget)
        batch: list[dict[str, Any]] = []
        for row in [*task.rows(args, todo), None]:  # rows are read lazily; media held for one batch at a time
            if row is not None:
                batch.append(row)
                if len(batch) < args.batch_size:
                    continue
            if not batch:
                break
            conversations = [task.conversation(args, r) for r in batch]
            answers = backend.generate(conversations, gen)
            records = []
            for r, conversation, text in zip(batch, conversations, answers):
                cut = bool(getattr(text, "truncated", False))
                truncated += cut
                empty += not strip_reasoning(str(text))
                records.append({**task.record(args, r, conversation, text), "truncated": cut})
            append_results(output, records)
            count += len(batch)
            if progress:
                progress.update(len(batch))
            batch = []
    except BaseException:
        if progress:
            progress.close()  # before the note, which would otherwise share the bar's line
            progress = None
        if count == 0:  # this run's manifest entry would describe no answer: put back what was there
            if before is None:
                manifest.unlink(missing_ok=True)
            else:
                manifest.write_bytes(before)
        if done or count:
            print(f"note: {len(done) + count} answer(s) are kept in {output}; run the same command again to resume",
                  file=sys.stderr)  # fmt: skip
        raise
    finally:
        if progress:
            progress.close()
    elapsed = time.monotonic() - started
    print(f"{count} question(s) in {elapsed:.3f}s ({count / max(elapsed, 1e-9):.2f} q/s) -> {output}")
    if truncated:
        print(
            f"warning: {truncated} answer(s) stopped at --max-new-tokens {gen.max_new_tokens} before the model "
            "finished (marked truncated in the results); raise it for reasoning models",
            file=sys.stderr,
        )
    if empty:
        print(
            f"warning: {empty} of {count} answer(s) are empty (no text came back); eval scores them as unreadable and counts them. "
            "Check the server's log, or its --max-model-len and --max-new-tokens",
            file=sys.stderr,
        )
    return 0


def run_main(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None = None) -> int:
    """Parse, run the chosen command, and turn a user's mistake (a :class:`qwenvl.cli.UserError`) into one
    ``error:`` line (exit 2); any other exception is a bug and keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    output = getattr(args, "output_file", None)
    created = missing_folders(Path(output).parent) if output else []
    try:
        if hasattr(args, "eval_model"):
            apply_upstream_judge_flags(args)
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        remove_empty_folders(created)  # a run that failed (or wrote nothing) leaves no empty folders behind


def add_merge_command(sub: Any) -> None:
    m = sub.add_parser("merge", help="join the shard files of an infer run into --output-file")
    m.add_argument("--output-file", required=True, help="the --output-file the shards were run with")
    m.add_argument("--num-shards", type=int, required=True, help="the --num-shards the shards were run with")
    m.set_defaults(func=lambda args: merge_outputs(Path(args.output_file), args.num_shards))
