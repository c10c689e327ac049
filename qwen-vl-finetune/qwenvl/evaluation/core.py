"""What every benchmark's ``infer`` / ``eval`` shares: the resumable results file, the manifest, the output lock,
the backend and decoding flags (hf, vllm, openai; presets), shards and data-parallel runs, and the inference loop.

A benchmark describes itself with a :class:`Task` (how to list its questions, build a question's conversation and
its results record) and calls :func:`run_infer`; MMMU, MathVision, RealWorldQA, VideoMME and ODinW-13 do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from qwenvl.cli import UserError
from qwenvl.evaluation.stats import ci_text, format_comparison, paired_comparison, wilson_interval  # noqa: F401
from qwenvl.inference.base import THINK_END, strip_reasoning  # noqa: E402,F401 - the benchmarks' answer extraction
from qwenvl.inference.config import BackendConfig
from qwenvl.model.families import FAMILIES


# ----------------------------------------------------------------------------------------------- results file


def read_results(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The complete lines of a results file. A torn last line (a crash mid-write) is dropped, and with ``repair``
    cut from the file, so appending continues cleanly."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines, good_end = [], 0
    for chunk in raw.split(b"\n"):
        end = good_end + len(chunk) + 1
        if not chunk.strip():
            good_end = min(end, len(raw))
            continue
        try:
            lines.append(json.loads(chunk))
        except json.JSONDecodeError:
            if end < len(raw):  # a bad line in the middle is not a torn write: refuse to guess
                raise UserError(f"{path}: line {len(lines) + 1} is not valid JSON; fix or remove it") from None
            break
        good_end = min(end, len(raw))
    if repair and good_end < len(raw):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return lines


def append_results(path: Path, records: list[dict[str, Any]]) -> None:
    """Append whole lines in one write, then fsync: a crash leaves at most one torn last line."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "qwen-vl-utils", "qwenvl", "datasets", "vllm"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def read_manifest(output: Path) -> dict[str, Any] | None:
    path = manifest_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_manifest(output: Path, settings: dict[str, Any], segment: bool = False) -> Path:
    """Write ``<output>.manifest.json``: this run's settings at the top level and, with ``segment``, appended to the
    ``segments`` list that keeps one entry per run that wrote into the file (a resumed ``infer``)."""
    path = manifest_path(output)
    entry = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv, **settings, "versions": versions()}
    manifest = dict(entry)
    if segment:
        old = read_manifest(output) or {}
        segments = old.get("segments") or ([{k: v for k, v in old.items() if k != "segments"}] if old else [])
        manifest["segments"] = [*segments, entry]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# Settings that change answers: a resumed infer must not mix answers made under different ones in one file
# (a benchmark adds its own, such as its prompt).
ANSWER_SETTINGS = ("model_path", "model_config_sha256", "served_model", "pixel_budgets", "decoding", "backend",
                   "dtype")  # fmt: skip


def settings_changes(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...] = ANSWER_SETTINGS) -> list[str]:
    """``key: old -> new`` for each answer-changing setting that differs."""
    changes = []
    for key in keys:
        before, after = old.get(key), new.get(key)
        if key == "pixel_budgets":  # compare the budgets in effect, not where they came from
            before = {k: v for k, v in (before or {}).items() if k in ("max_pixels", "min_pixels")}
            after = {k: v for k, v in (after or {}).items() if k in ("max_pixels", "min_pixels")}
        if key == "served_model" and before is None and old.get("backend") == "openai":
            continue  # written before the served model was asked for: unknown, not another model
        if key in old and before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


class OutputLock:
    """An exclusive lock on ``<output>.lock`` for the life of an ``infer`` (two writers would duplicate ids).

    The lock is taken on the resolved path, so a second writer that reaches the same file through a symlink (or
    another relative path) is stopped too. The lock file is removed on exit while still held; a process that opened
    it just before sees, once it holds the lock, that the path no longer names its file and takes a new one."""

    def __init__(self, output: Path, given: Path | None = None) -> None:
        """``given``: the name the user gave for ``output`` (a symlink, say), for messages."""
        self.output = given or output
        real = Path(os.path.realpath(output))
        self.path = real.with_name(real.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                real = self.path.with_name(self.path.name[: -len(".lock")])
                also = f" (that is {real})" if real != Path(os.path.abspath(self.output)) else ""
                raise UserError(
                    f"{self.output}{also} is being written by another infer (pid {holder}); wait for it to finish, "
                    "or write to another --output-file"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed it between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while held, so no one else holds a lock on it
            except FileNotFoundError:
                pass
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def config_hash(model_path: str) -> str | None:
    config = Path(model_path) / "config.json"
    if config.is_file():
        return hashlib.sha256(config.read_bytes()).hexdigest()
    try:
        from huggingface_hub import hf_hub_download

        return hashlib.sha256(Path(hf_hub_download(model_path, "config.json")).read_bytes()).hexdigest()
    except Exception:  # noqa: BLE001 - offline or not a hub id: the manifest says unknown
        return None


# ----------------------------------------------------------------------------------------------- infer


# ----------------------------------------------------------------------------------------------- shards


def without_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = True
            continue
        if item.startswith(flag + "="):
            continue
        out.append(item)
    return out


def all_shards_done(output: Path, num: int) -> bool:
    from qwenvl.evaluation import shards

    for index in range(num):
        path = shards.shard_path(output, num, index)
        wanted = shards.read_manifest_ids(manifest_path(path))
        if wanted is None or not path.exists():
            return False
        if set(wanted) - {r["id"] for r in read_results(path)}:
            return False
    return True


def merge_outputs(output: Path, num: int) -> int:
    """Join the shards of ``output`` into it (checked: every shard holds exactly its ids, none twice)."""
    from qwenvl.evaluation import shards

    records = shards.merge(output, num, read_results, lambda p: shards.read_manifest_ids(manifest_path(p)))
    tmp = output.with_name(output.name + ".merging")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, output)
    segments = [read_manifest(shards.shard_path(output, num, i)) or {} for i in range(num)]
    settings = {
        k: v for k, v in segments[0].items() if k not in ("segments", "shard", "created", "command", "versions")
    }
    write_manifest(output, {**settings, "mode": "merge", "merged_shards": num, "shard_manifests": segments})
    print(f"merged {num} shard(s), {len(records)} answer(s) -> {output}")
    return 0


# ----------------------------------------------------------------------------------------------- flags


FAMILY_CHOICES = sorted(FAMILIES)
DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty")


def add_infer_arguments(p: argparse.ArgumentParser, presets: dict[str, dict[str, Any]], seed: int = 42) -> None:
    """The flags every benchmark's ``infer`` takes: output, backend (hf, vllm, openai), shards, batch, decoding
    (``presets["default"]`` unless ``--preset`` names another; a flag given wins over its preset)."""
    p.add_argument("--output-file", required=True,
                   help="results JSONL (appended to: a rerun resumes), with <name>.manifest.json beside it")  # fmt: skip
    BackendConfig.add_arguments(p)
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="run N shard processes (each --tensor-parallel-size GPUs) and merge them")  # fmt: skip
    p.add_argument("--num-shards", type=int, default=None, help="this process answers one of N shards")
    p.add_argument("--shard-index", type=int, default=None, help="which shard (0..N-1); torchrun sets both")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generate call (and per write)")
    named = [k for k in presets if k != "default"]
    described = "; ".join(
        f"{k}: T {v['temperature']}, top-p {v['top_p']}, top-k {v['top_k']}, presence {v['presence_penalty']}, "
        f"{v['max_new_tokens']} tokens"
        for k, v in presets.items()
        if k != "default"
    )
    p.add_argument("--preset", default=None, choices=named, help=f"upstream's settings ({described})")
    default = presets["default"]
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default {default['max_new_tokens']}")
    p.add_argument("--temperature", type=float, default=None, help=f"default {default['temperature']} (0 = greedy)")
    p.add_argument("--top-p", type=float, default=None, help=f"default {default['top_p']}")
    p.add_argument("--top-k", type=int, default=None, help=f"default {default['top_k']} (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"default {default['repetition_penalty']}")
    p.add_argument("--presence-penalty", type=float, default=None, help=f"default {default['presence_penalty']}")
    p.add_argument("--seed", type=int, default=seed, help="sampling seed (default %(default)s)")
    p.add_argument(
        "--allow-settings-change",
        action="store_true",
        help="resume into a file whose answers were made with other answer-changing settings (recorded per segment)",
    )


def generation_settings(args: argparse.Namespace, presets: dict[str, dict[str, Any]]) -> Any:
    """Decoding settings: the preset's values, each replaced by its flag when given."""
    from qwenvl.inference.base import GenerationSettings

    values = dict(presets[args.preset or "default"])
    for key in DECODING_FIELDS:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return GenerationSettings(**{k: values[k] for k in DECODING_FIELDS}, seed=args.seed)


def load_backend_from_args(args: argparse.Namespace, budget: Any) -> Any:
    """The backend of the parsed flags (:class:`BackendConfig`), with ``budget`` and ``--seed``."""
    from qwenvl.inference import load_backend

    return load_backend(BackendConfig.from_args(args), budget=budget, seed=args.seed)


def resolve_budget(args: argparse.Namespace, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's budget with the flags' non-None ``overrides``, and its manifest entry; a flag that departs
    from what the checkpoint was trained with is warned about."""
    from qwenvl.model.preprocessing import checkpoint_budget, load_preprocessing

    budget, source = checkpoint_budget(args.model_path, **overrides)
    saved = load_preprocessing(args.model_path) if args.model_path and Path(args.model_path).is_dir() else None
    drift = {
        k: (getattr(budget, k), getattr(saved.budget, k))
        for k, v in overrides.items()
        if saved is not None and v is not None and getattr(budget, k) != getattr(saved.budget, k)
    }
    for key, (flag, trained) in drift.items():
        print(
            f"warning: --{key.replace('_', '-')} {flag} differs from the {trained} this checkpoint was trained with "
            f"({args.model_path}/qwenvl_preprocessing.json); scores may not reflect the trained model",
            file=sys.stderr,
        )
    entry = {
        "drift_from_checkpoint": {k: {"flag": f, "trained": t} for k, (f, t) in drift.items()},
        "source": source,
        **{k: v for k, v in budget.to_dict().items() if v is not None},
    }
    return budget, entry


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


# ----------------------------------------------------------------------------------------------- eval helpers


def upstream_presets(default_tokens: int, think_temperature: float, think_tokens: int) -> dict[str, dict[str, Any]]:
    """Greedy ``default`` decoding and upstream's ``instruct`` / ``think`` shell presets (the think preset's
    temperature and token limit differ between upstream's benchmarks)."""
    return {
        "default": dict(max_new_tokens=default_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                        presence_penalty=0.0),
        "instruct": dict(max_new_tokens=32768, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0,
                         presence_penalty=1.5),
        "think": dict(max_new_tokens=think_tokens, temperature=think_temperature, top_p=0.95, top_k=20,
                      repetition_penalty=1.0, presence_penalty=0.0),
    }  # fmt: skip


def add_merge_command(sub: Any) -> None:
    m = sub.add_parser("merge", help="join the shard files of an infer run into --output-file")
    m.add_argument("--output-file", required=True, help="the --output-file the shards were run with")
    m.add_argument("--num-shards", type=int, required=True, help="the --num-shards the shards were run with")
    m.set_defaults(func=lambda args: merge_outputs(Path(args.output_file), args.num_shards))


SCORING_HELP = {
    "official": "the benchmark's own scorer (the numbers to compare with papers)",
    "upstream": "upstream Qwen3-VL's eval script (the numbers to compare with upstream's reports)",
}


def add_eval_command(
    sub: Any,
    evaluate: Callable[[argparse.Namespace], int],
    judge: bool = True,
    tool: str = "infer",
    scoring: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """``eval --input-file --output-file --scoring official|upstream``, the judge flags, and upstream's eval flags
    (``--data-dir``, ``--dataset``; its judge flags map to ours, see :func:`add_judge_arguments`)."""
    e = sub.add_parser("eval", help="score results.jsonl (ours, or upstream's results file of the same benchmark)")
    e.add_argument("--input-file", required=True,
                   help=f"the results of {tool}, or upstream's results JSONL (question_id, annotation, result), "
                        "read as they are")  # fmt: skip
    e.add_argument("--output-file", required=True, type=scores_file, help=SCORES_HELP)
    modes = scoring or SCORING_HELP  # {mode: what it is}, the first the default
    e.add_argument("--scoring", default=next(iter(modes)), choices=list(modes),
                   help="; ".join(f"{k}: {v}" for k, v in modes.items()))  # fmt: skip
    e.add_argument(
        "--data-dir",
        default=None,
        help="accepted for upstream's command line; not needed: the results carry what scoring needs",
    )
    e.add_argument("--dataset", default=None, help="accepted for upstream's command line (not needed, as --data-dir)")
    if judge:
        add_judge_arguments(e)
    e.set_defaults(func=evaluate)
    return e


# Upstream's --api-type: the environment variables its judge wrappers read (server URL, key).
UPSTREAM_API_TYPES = {"dash": ("DASHSCOPE_API_BASE", "CHATGPT_DASHSCOPE_API_KEY"),
                      "mit": ("MIT_SPIDER_URL", "MIT_SPIDER_TOKEN")}  # fmt: skip


def add_judge_arguments(e: argparse.ArgumentParser, unread: str = "the answers the rules cannot read") -> None:
    """--judge, --judge-model, --base-url, --api-key-env, --judge-concurrency, and upstream's judge flags
    (``--eval-model``, ``--api-type``, ``--nproc``) mapped onto them; ``unread`` says what ``--judge openai``
    re-checks."""
    e.add_argument("--judge", default=None, choices=["openai", "all"],
                   help=f"re-check with an LLM judge on an OpenAI-compatible server: openai = {unread}; all = every "
                        "answer")  # fmt: skip
    e.add_argument("--judge-model", default=None, help="the judge's model name on that server")
    e.add_argument("--base-url", default=None, help="the judge's server, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable of the judge's key")
    e.add_argument("--judge-concurrency", "--nproc", type=int, default=8,
                   help="judge requests in flight (--nproc: upstream's name)")  # fmt: skip
    e.add_argument("--eval-model", default=None,
                   help="upstream's judge flag: --judge-model, and --judge openai when a server is known (--base-url, "
                        "or the one --api-type names)")  # fmt: skip
    e.add_argument("--api-type", default=None, choices=list(UPSTREAM_API_TYPES),
                   help="upstream's judge flag: the server of --eval-model is read from "
                        + "; ".join(f"{k}: ${u} (key ${v})" for k, (u, v) in UPSTREAM_API_TYPES.items())
                        + " (an OpenAI-compatible base URL); default dash")  # fmt: skip


def apply_upstream_judge_flags(args: argparse.Namespace) -> None:
    """Map upstream's ``--eval-model`` / ``--api-type`` onto ``--judge-model`` / ``--base-url`` / ``--api-key-env``
    / ``--judge``. Upstream always asks its judge when the rules fail; without a known server the judge stays off
    (upstream would spend minutes per answer before giving up) and a warning says how to turn it on."""
    model = getattr(args, "eval_model", None)
    if model is None:
        return
    if args.judge_model not in (None, model):
        raise UserError(f"--eval-model {model} and --judge-model {args.judge_model} disagree; give one of them")
    args.judge_model = model
    url_env, key_env = UPSTREAM_API_TYPES[args.api_type or "dash"]
    if not args.base_url and os.environ.get(url_env):
        args.base_url = os.environ[url_env]
        if args.api_key_env == "OPENAI_API_KEY":
            args.api_key_env = key_env
    if args.judge is None:
        if args.base_url:
            args.judge = "openai"
        else:
            print(f"warning: --eval-model {model}: no judge server (set ${url_env} to an OpenAI-compatible base URL, "
                  "or pass --base-url); scoring without the judge", file=sys.stderr)  # fmt: skip


def make_judge(args: argparse.Namespace) -> Any:
    """The judge of ``eval --judge``, its verdicts cached beside ``--output-file``."""
    from qwenvl.evaluation.judge import Judge

    if not args.base_url or not args.judge_model:
        raise UserError("--judge needs --base-url (an OpenAI-compatible server) and --judge-model (its model name)")
    output = Path(args.output_file)
    return Judge(args.base_url, args.judge_model, output.with_name(output.stem + ".judge.jsonl"),
                 os.environ.get(args.api_key_env), concurrency=getattr(args, "judge_concurrency", 8))  # fmt: skip


def judge_choices(
    args: argparse.Namespace,
    scored: list[dict[str, Any]],
    unresolved: tuple[str, ...],
    item: Callable[[dict[str, Any]], tuple[str, str, list[str], str]],
) -> dict[str, Any]:
    """Multiple-choice re-checking: every scored answer whose ``method`` is in ``unresolved`` (all with ``--judge
    all``) is matched to an option by the judge; a usable verdict replaces the rule result (``item`` gives ``(id,
    question, option texts, answer)``). Returns the summary for the report."""
    judge = make_judge(args)
    targets = [s for s in scored if args.judge == "all" or s["method"] in unresolved]
    verdicts = judge.choose_all([item(s) for s in targets])
    failures = 0
    for s, verdict in zip(targets, verdicts):
        if verdict.letter is None:
            failures += 1  # the rule result stands
            continue
        s.update(extracted=verdict.letter, method="judge", answered=True, correct=verdict.letter == s["answer"])
    return {"model": args.judge_model, "base_url": args.base_url, "rechecked": len(targets), "failures": failures,
            "requests": judge.requests, "cached": sum(v.cached for v in verdicts)}  # fmt: skip


UPSTREAM_RECORD = ("question_id", "annotation", "result")


def load_records(
    path: Path,
    required: tuple[str, ...],
    tool: str,
    from_upstream: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The results of ``tool infer`` in ``path``, each line checked for the ``required`` fields. A line of
    upstream's results file (``question_id``, ``annotation``, ``result``) is converted by ``from_upstream``."""
    lines = read_results(path)
    if not lines:
        raise UserError(f"{path}: no results to score")
    out = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            raise UserError(f"{path}: line {i + 1} is not a JSON object (results of {tool} infer)")
        if from_upstream is not None and all(k in line for k in UPSTREAM_RECORD) and "response" not in line:
            try:
                line = from_upstream(line)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise UserError(f"{path}: line {i + 1} looks like upstream's results but lacks {e} (results of "
                                f"upstream's {tool} infer?)") from None  # fmt: skip
        for key in required:
            if key not in line:
                raise UserError(f"{path}: line {i + 1} has no {key!r}: not the results of {tool} infer (ours or "
                                "upstream's); is it another benchmark's file?")  # fmt: skip
        out.append(line)
    return out


def upstream_result(line: dict[str, Any]) -> dict[str, str]:
    """``response`` / ``raw_response`` of an upstream record (upstream's ``gen`` is already after ``</think>``)."""
    result = line["result"]
    return {"response": str(result["gen"] or ""), "raw_response": str(result.get("gen_raw", result["gen"]) or "")}


def empty_answers(records: list[dict[str, Any]], key: str = "response") -> dict[str, Any]:
    """``{num, ids}`` of the answers with no text (after the reasoning): a server or model that answered nothing.
    They are scored like any unreadable answer, so the count is reported beside the score."""
    ids = [str(r.get("id")) for r in records if not str(r.get(key) or "").strip()]
    return {"num": len(ids), "ids": ids}


def empty_answers_warning(summary: dict[str, Any], total: int) -> str | None:
    """The report's line about empty answers (None when there are none)."""
    if not summary["num"]:
        return None
    shown = ", ".join(summary["ids"][:10]) + (" ..." if summary["num"] > 10 else "")
    return (f"warning: {summary['num']} of {total} answer(s) are empty (no text from the model or server), scored as "
            f"unreadable: {shown}")  # fmt: skip


SCORE_FORMATS = {
    ".json": "the scores as JSON",
    ".csv": "one row per question (per dataset for ODinW) as CSV, the scores beside it in <name>_acc.json",
    ".jsonl": "one line per question (per dataset for ODinW), the scores beside it in <name>_acc.json",
}
SCORES_HELP = "where the scores go; its extension picks the format: " + "; ".join(
    f"{k}: {v}" for k, v in SCORE_FORMATS.items()
)


def scores_file(value: str) -> str:
    """``argparse`` type of ``eval --output-file``: an extension of :data:`SCORE_FORMATS`."""
    if Path(value).suffix.lower() not in SCORE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{value}: end it in {', '.join(SCORE_FORMATS)} ({'; '.join(f'{k}: {v}' for k, v in SCORE_FORMATS.items())})"
        )
    return value


def score_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-question rows of a scores body (``questions``), else its per-dataset table (``datasets``)."""
    if isinstance(body.get("questions"), list):
        return body["questions"]
    return [{"dataset": name, **values} for name, values in (body.get("datasets") or {}).items()]


def write_scores(output: Path, body: dict[str, Any], settings: dict[str, Any]) -> Path:
    """Write the scores in the format of ``output``'s extension (see :data:`SCORE_FORMATS`) and the manifest;
    returns the file that holds the summary (``output``, or ``<name>_acc.json`` beside a table)."""
    import csv

    suffix = output.suffix.lower()
    if suffix not in SCORE_FORMATS:
        raise UserError(f"--output-file {output}: end it in {', '.join(SCORE_FORMATS)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    summary_path = output
    if suffix == ".json":
        output.write_text(json.dumps(body, indent=1) + "\n")
    else:
        rows = score_rows(body)
        if suffix == ".csv":
            columns = list(dict.fromkeys(k for row in rows for k in row))
            with output.open("w", newline="") as f:
                writer = csv.DictWriter(f, columns)
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
        else:
            output.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        summary_path = output.with_name(output.stem + "_acc.json")  # upstream's name for the summary
        summary = {k: v for k, v in body.items() if k not in ("questions", "judged_questions")}
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    write_manifest(output, {"mode": "eval", **settings, **({"summary": str(summary_path)} if summary_path != output
                                                            else {})})  # fmt: skip
    return summary_path


def accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``{num, correct, acc, ci95}`` of scored records (each with a boolean ``correct``)."""
    correct = sum(bool(r["correct"]) for r in records)
    return {"num": len(records), "correct": correct, "acc": correct / max(len(records), 1),
            "ci95": wilson_interval(correct, len(records))}  # fmt: skip


def add_export_command(sub: Any, scored: Callable[[Path, str], list[dict[str, Any]]],
                       scoring: tuple[str, ...] = ("official", "upstream")) -> None:  # fmt: skip
    """``export --input-file --output-file [--scoring]``: the ``{id: extracted answer}`` JSON of a results file (the
    shape of MMMU's submission file), for other tools or a leaderboard."""

    def run(args: argparse.Namespace) -> int:
        rows = scored(Path(args.input_file), args.scoring)
        output = Path(args.output_file)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({r["id"]: r.get("extracted") for r in rows}, indent=1, ensure_ascii=False) + "\n")
        write_manifest(output, {"mode": "export", "input_file": args.input_file, "scoring": args.scoring})
        print(f"{len(rows)} prediction(s) ({{id: extracted answer}}) -> {output}")
        return 0

    x = sub.add_parser("export", help="the {id: extracted answer} JSON of a results file")
    x.add_argument("--input-file", required=True, help="results of infer (ours or upstream's)")
    x.add_argument("--output-file", required=True, help="the {id: answer} JSON")
    x.add_argument(
        "--scoring", default=scoring[0], choices=list(scoring), help="the answer extraction of eval's --scoring"
    )
    x.set_defaults(func=run)


def add_compare_command(
    sub: Any, scored: Callable[[Path, str], list[dict[str, Any]]], scoring: tuple[str, ...] = ("official", "upstream")
) -> None:
    """``compare A B [--scoring]``: the paired comparison and the questions whose correctness differs
    (``scored(path, mode)`` gives a results file's per-question results: ``id``, ``correct``, ``extracted``,
    ``method``, ``answer``)."""

    def run(args: argparse.Namespace) -> int:
        a = {r["id"]: r for r in scored(Path(args.a), args.scoring)}
        b = {r["id"]: r for r in scored(Path(args.b), args.scoring)}
        print(format_comparison(paired_comparison({i: r["correct"] for i, r in a.items()},
                                                  {i: r["correct"] for i, r in b.items()})))  # fmt: skip
        changed = [i for i in a if i in b and a[i]["correct"] != b[i]["correct"]]
        print(f"{len(changed)} changed")
        for i in changed:
            print(f"  {i}: A {a[i].get('extracted')} ({a[i].get('method')}) -> B {b[i].get('extracted')} "
                  f"({b[i].get('method')}), gold {a[i].get('answer')}")  # fmt: skip
        return 0

    c = sub.add_parser("compare", help="two results files on their common questions: accuracies with 95% CI, a "
                                       "paired test, and the questions whose correctness differs")  # fmt: skip
    c.add_argument("a", help="results file A (the baseline)")
    c.add_argument("b", help="results file B")
    c.add_argument("--scoring", default=scoring[0], choices=list(scoring), help="as eval's --scoring")
    c.set_defaults(func=run)


def grouped(
    records: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
    summary: Callable[[list[dict[str, Any]]], dict[str, Any]] = accuracy,
) -> dict[str, dict[str, Any]]:
    """``summary`` of the records per value of ``key`` (records whose key is empty or None left out), sorted."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        value = key(r)
        if value not in (None, ""):
            groups.setdefault(str(value), []).append(r)
    return {k: summary(v) for k, v in sorted(groups.items())}


def extraction_methods(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many answers each extraction method (rule, judge, random, ...) gave."""
    return {m: sum(r["method"] == m for r in records) for m in sorted({r["method"] for r in records})}
