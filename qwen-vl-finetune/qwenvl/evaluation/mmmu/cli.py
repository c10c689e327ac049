"""MMMU inference and scoring with the official rules, resumable and explained.

Run::

    python evaluation/mmmu/run_mmmu.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir MMMU/MMMU \\
        --output-file results.jsonl [--split validation] [--subjects acc,bio] [--limit N] [--batch-size 8] \\
        [--prompt official|qwen] [--image-placement interleaved|first] [--max-pixels N] [--min-pixels N] \\
        [--max-new-tokens 128] [--temperature 0] [--top-p 1] [--top-k 0] [--repetition-penalty 1] [--seed 42] \\
        [--backend hf|vllm] [--tensor-parallel-size N]
    python evaluation/mmmu/run_mmmu.py eval --input-file results.jsonl --output-file scores.json \\
        [--scoring official|strict|lenient]
    python evaluation/mmmu/run_mmmu.py compare A.jsonl B.jsonl [--scoring official]
    python evaluation/mmmu/run_mmmu.py export --input-file results.jsonl --output-file predictions.json

``infer`` appends one JSON line per question (id, subject, question_type, options, gold answer, raw and
stripped response, prompt settings; never images) and resumes: re-running with the same output file skips the
ids already there. ``--limit N`` takes at most N questions per subject. Every output gets a
``<output>.manifest.json`` with the settings, the model's config hash and the package versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from qwenvl.evaluation.mmmu.data import build_messages, gold_answer, iter_questions, question_options, resolve_subjects
from qwenvl.evaluation.mmmu.scoring import (
    ScoringInputError,
    aggregate,
    format_report,
    score,
    subject_of,
    validate_line,
)


THINK_END = "</think>"


def strip_reasoning(text: str) -> str:
    """The answer after the last ``</think>`` (reasoning models), stripped."""
    return text.split(THINK_END)[-1].strip()


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
                raise ValueError(f"{path}: line {len(lines) + 1} is not valid JSON; fix or remove it") from None
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


def _versions() -> dict[str, str]:
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
    entry = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv, **settings, "versions": _versions()}
    manifest = dict(entry)
    if segment:
        old = read_manifest(output) or {}
        segments = old.get("segments") or ([{k: v for k, v in old.items() if k != "segments"}] if old else [])
        manifest["segments"] = [*segments, entry]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# Settings that change answers: a resumed infer must not mix answers made under different ones in one file.
ANSWER_SETTINGS = ("model_path", "model_config_sha256", "served_model", "prompt", "image_placement", "cot",
                   "pixel_budgets", "decoding", "backend", "dtype")  # fmt: skip


def settings_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each answer-changing setting that differs."""
    changes = []
    for key in ANSWER_SETTINGS:
        before, after = old.get(key), new.get(key)
        if key == "pixel_budgets":  # compare the budgets in effect, not where they came from
            before = {k: v for k, v in (before or {}).items() if k in ("max_pixels", "min_pixels")}
            after = {k: v for k, v in (after or {}).items() if k in ("max_pixels", "min_pixels")}
        if key in old and before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


class OutputLock:
    """An exclusive lock on ``<output>.lock`` for the life of an ``infer`` (two writers would duplicate ids)."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"{self.path.with_suffix('')} is being written by another infer (pid {holder}); wait for it to "
                "finish, or write to another --output-file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


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


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# Upstream's shell presets (spec: evaluation/mmmu infer_instruct.sh / infer_think.sh) and our defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                    presence_penalty=0.0),
    "instruct": dict(max_new_tokens=32768, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0,
                     presence_penalty=1.5),
    "think": dict(max_new_tokens=40960, temperature=1.0, top_p=0.95, top_k=20, repetition_penalty=1.0,
                  presence_penalty=0.0),
}  # fmt: skip
# Upstream's --use-cot sentence, appended to the question text.
COT_PROMPT = (
    " If you are uncertain or the problem is too complex, make a reasoned guess based on the information provided. "
    "Avoid repeating steps indefinitely\u2014provide your best guess even if unsure. Determine whether to think step "
    "by step based on the difficulty of the question, considering all relevant information before answering."
)


def generation_settings(args: argparse.Namespace) -> Any:
    """Decoding settings: the preset's values, each replaced by its flag when given."""
    from qwenvl.inference.base import GenerationSettings

    values = dict(PRESETS[args.preset or "default"])
    for key in values:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return GenerationSettings(**values, seed=args.seed)


def infer(args: argparse.Namespace) -> int:
    from qwenvl.evaluation import shards

    if args.backend in ("hf", "vllm") and not args.model_path:
        raise ValueError(f"--backend {args.backend} needs --model-path (a checkpoint folder or hub id)")
    if args.backend == "openai" and not args.base_url:
        raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1 of `vllm serve`)")
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.data_parallel_size > 1 and args.num_shards is None:
        argv = _without_flag(args.argv, "--data-parallel-size")
        per_worker = args.tensor_parallel_size if args.backend == "vllm" else 1
        shards.launch_data_parallel(argv, args.data_parallel_size, per_worker, "qwenvl.evaluation.mmmu.cli")
        return merge_outputs(output, args.data_parallel_size)
    num, index = shards.shard_from_env(args.num_shards, args.shard_index)
    path = shards.shard_path(output, num, index)
    with OutputLock(path):
        code = _infer(args, path, num, index)
    if code == 0 and num > 1 and _all_shards_done(output, num):
        merge_outputs(output, num)  # the last shard to finish joins them (a repeated merge writes the same file)
    return code


def _without_flag(argv: list[str], flag: str) -> list[str]:
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


def _all_shards_done(output: Path, num: int) -> bool:
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


def merge(args: argparse.Namespace) -> int:
    return merge_outputs(Path(args.output_file), args.num_shards)


def _load_backend(args: argparse.Namespace, budget: Any) -> Any:
    from qwenvl.inference import load_backend

    if args.backend == "openai":
        return load_backend(
            "openai",
            args.model_path,
            api_base=args.base_url,
            model=args.model,
            api_key=os.environ.get(args.api_key_env, "EMPTY"),
            family=args.family,
            budget=budget,
            concurrency=args.concurrency,
        )
    if args.backend == "vllm":
        return load_backend(
            "vllm",
            args.model_path,
            budget=budget,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            seed=args.seed,
            limit_images=args.max_images_per_prompt,
            enforce_eager=args.enforce_eager,
        )
    return load_backend(
        "hf", args.model_path, budget=budget, dtype=args.dtype, attn_implementation=args.attn_implementation
    )


def _infer(args: argparse.Namespace, output: Path, num_shards: int, shard_index: int) -> int:
    from qwenvl.evaluation import shards
    from qwenvl.model.preprocessing import checkpoint_budget, load_preprocessing

    done = {r["id"] for r in read_results(output, repair=True)}
    subjects = resolve_subjects(args.subjects)

    # Flags replace single fields of the checkpoint's budget (its saved settings, else qwen_vl_utils defaults).
    budget, source = checkpoint_budget(args.model_path, max_pixels=args.max_pixels, min_pixels=args.min_pixels)
    saved = load_preprocessing(args.model_path) if args.model_path and Path(args.model_path).is_dir() else None
    drift = {
        k: (getattr(budget, k), getattr(saved.budget, k))
        for k in ("max_pixels", "min_pixels")
        if saved is not None and getattr(args, k) is not None and getattr(budget, k) != getattr(saved.budget, k)
    }
    for key, (flag, trained) in drift.items():
        print(
            f"warning: --{key.replace('_', '-')} {flag} differs from the {trained} this checkpoint was trained with "
            f"({args.model_path}/qwenvl_preprocessing.json); scores may not reflect the trained model",
            file=sys.stderr,
        )
    budgets = {
        "drift_from_checkpoint": {k: {"flag": f, "trained": t} for k, (f, t) in drift.items()},
        "source": source,
        "max_pixels": budget.max_pixels,
        "min_pixels": budget.min_pixels,
    }
    gen = generation_settings(args)
    cot = (args.cot_prompt or COT_PROMPT) if args.use_cot else ""
    prompt_settings = {"prompt": args.prompt, "image_placement": args.image_placement, "cot": cot or None}

    # Every process splits the same question list the same way; only ids are kept between the two passes, so
    # decoded images are held for one batch at a time.
    selected: list[str] = []
    per_subject: dict[str, int] = {}
    for row in iter_questions(args.data_file or args.data_dir, args.split, subjects):
        subject = subject_of(row["id"])
        if args.limit is not None and per_subject.get(subject, 0) >= args.limit:
            continue
        per_subject[subject] = per_subject.get(subject, 0) + 1
        selected.append(row["id"])
    assigned = shards.select(selected, num_shards, shard_index)
    run_settings = {
        "mode": "infer",
        "model_path": args.model_path,
        "model_config_sha256": config_hash(args.model_path) if args.model_path else None,
        "served_model": args.model if args.backend == "openai" else None,
        "base_url": args.base_url if args.backend == "openai" else None,
        "data_dir": args.data_file or args.data_dir,
        "split": args.split,
        "subjects": subjects,
        "limit_per_subject": args.limit,
        **prompt_settings,
        "pixel_budgets": budgets,
        "preset": args.preset,
        "decoding": vars(gen),
        "backend": args.backend,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "shard": {"index": shard_index, "num_shards": num_shards, "ids": assigned},
    }
    previous = read_manifest(output) if done else None
    if previous is not None:
        changes = settings_changes(previous, run_settings)
        if changes and not args.allow_settings_change:
            raise ValueError(
                f"{output} holds {len(done)} answers made with other settings ({'; '.join(changes)}); resuming would "
                "mix them. Use another --output-file, or pass --allow-settings-change to mix on purpose"
            )
        if changes:
            print(f"warning: mixing answers made with other settings: {'; '.join(changes)}", file=sys.stderr)
    write_manifest(output, run_settings, segment=True)
    todo = set(assigned) - done
    shard_note = f" (shard {shard_index} of {num_shards}: {len(assigned)} question(s))" if num_shards > 1 else ""
    print(f"{len(done)} question(s) already in {output}, {len(todo)} to run{shard_note}", file=sys.stderr)
    if not todo:
        return 0

    backend = _load_backend(args, budget)
    started, count, truncated = time.monotonic(), 0, 0
    try:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), desc="mmmu", unit="q")
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        progress = None

    def rows() -> Iterator[dict[str, Any]]:
        for row in iter_questions(args.data_file or args.data_dir, args.split, subjects):
            if row["id"] in todo:
                yield row

    batch: list[dict[str, Any]] = []
    for row in [*rows(), None]:
        if row is not None:
            batch.append(row)
            if len(batch) < args.batch_size:
                continue
        if not batch:
            break
        conversations = []
        for r in batch:
            conversation = build_messages(r, args.prompt, args.image_placement)[0]
            if cot:
                conversation[0]["content"][-1]["text"] += cot
            conversations.append(conversation)
        raw = backend.generate(conversations, gen)
        records = []
        for r, conversation, text in zip(batch, conversations, raw):
            cut = bool(getattr(text, "truncated", False))
            truncated += cut
            records.append(
                {
                    "id": r["id"],
                    "subject": subject_of(r["id"]),
                    "question_type": r["question_type"],
                    "options": question_options(r),
                    "answer": gold_answer(r),
                    "question": r["question"],
                    "response": strip_reasoning(text),
                    "raw_response": str(text),
                    "truncated": cut,
                    "num_images": sum(1 for item in conversation[0]["content"] if item["type"] == "image"),
                    **prompt_settings,
                }
            )
        append_results(output, records)
        count += len(batch)
        if progress:
            progress.update(len(batch))
        batch = []
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
    return 0


# ----------------------------------------------------------------------------------------------- eval / compare


def load_questions(path: Path, answers: str | None = None) -> list:
    """The questions of a results file: our JSONL, or an official layout (see ``formats``)."""
    from qwenvl.evaluation.mmmu.formats import load_official

    if not path.exists():
        raise ScoringInputError(f"{path}: no such file or folder")
    questions = load_official(path, answers)
    if questions is None:
        lines = read_results(path)
        questions = [validate_line(line, i) for i, line in enumerate(lines)]
    if not questions:
        raise ScoringInputError(f"{path}: no results to score")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise ScoringInputError(f"{q.id}: appears twice in {path}")
        seen.add(q.id)
    return questions


def export(args: argparse.Namespace) -> int:
    from qwenvl.evaluation.mmmu.formats import export_predictions

    questions = load_questions(Path(args.input_file), args.answers)
    predictions = export_predictions(score(questions, args.scoring), questions)
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
    write_manifest(output, {"mode": "export", "input_file": args.input_file, "scoring": args.scoring, "seed": 42})
    guesses = sum(1 for q in questions if q.is_mc and predictions[q.id] is None)
    print(f"{len(predictions)} prediction(s) -> {output} (official {{id: prediction}} format)")
    if guesses:
        print(f"warning: {guesses} multiple-choice answer(s) unparsed and exported as null (--scoring {args.scoring})")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    questions = load_questions(Path(args.input_file), args.answers)
    if all(q.gold_problem and q.gold_problem.startswith("no gold") for q in questions):
        print(
            f"{args.input_file}: none of its {len(questions)} answers has a gold answer (the test split): nothing to "
            "score here. Make the submission file with: run_mmmu.py export --input-file "
            f"{args.input_file} --output-file predictions.json, and submit it to the MMMU evaluation server"
        )
        return 0
    records = score(questions, args.scoring)
    report = aggregate(records)
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if args.judge:
        judged, judge_summary = judge_records(args, questions, records, output)
        extra = {"judged": aggregate(judged), "judge": judge_summary, "judged_questions": judged}
    output.write_text(
        json.dumps(
            {"scoring": args.scoring, "input_file": args.input_file, **report, "questions": records, **extra}, indent=1
        )
        + "\n"
    )
    settings = {"mode": "eval", "input_file": args.input_file, "scoring": args.scoring, "seed": 42}
    write_manifest(output, {**settings, **({"judge": extra["judge"]} if extra else {})})
    print(f"scoring: {args.scoring}")
    print(format_report(report))
    if extra:
        print(format_judged(report, extra["judged"], extra["judge"]))
    print(f"-> {output}")
    return 0


def judge_records(
    args: argparse.Namespace, questions: list, records: list[dict[str, Any]], output: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records with the judge's verdicts applied: ``--judge openai`` re-checks the multiple-choice answers the
    rules could not parse; ``--judge all`` re-checks every answer (open ones as upstream does: option A the gold
    answer, B "Other answers")."""
    from qwenvl.evaluation.judge import Judge

    if not args.base_url or not args.judge_model:
        raise ValueError("--judge needs --base-url (an OpenAI-compatible server) and --judge-model (its model name)")
    cache = output.with_name(output.stem + ".judge.jsonl")
    judge = Judge(args.base_url, args.judge_model, cache, os.environ.get(args.api_key_env),
                  concurrency=args.judge_concurrency)  # fmt: skip
    by_id = {q.id: q for q in questions}
    targets = []
    for r in records:
        q = by_id[r["id"]]
        if r.get("gold_problem") or (args.judge == "openai" and not (q.is_mc and r["unparsed"])):
            continue
        if q.is_mc:
            options = q.options
        else:
            gold = q.answer if isinstance(q.answer, list) else [q.answer]
            options = [" / ".join(gold), "Other answers"]
        targets.append((r, (q.id, str(q.extra.get("question", "")), options, q.response)))
    verdicts = judge.choose_all([t[1] for t in targets])
    judged = {r["id"]: dict(r) for r in records}
    changed = failures = 0
    for (r, (_, _, options, _)), verdict in zip(targets, verdicts):
        record = judged[r["id"]]
        record.update(judge=verdict.letter, judge_reply=verdict.reply)
        if verdict.letter is None:
            failures += 1  # the rule-based result stands
            continue
        q = by_id[r["id"]]
        if q.is_mc:
            golds = q.answer if isinstance(q.answer, list) else [q.answer]
            correct = verdict.letter in golds
            record.update(parsed=verdict.letter, random_guess=False, unparsed=verdict.letter == "Z")
        else:
            correct = verdict.letter == "A"
        changed += correct != r["correct"]
        record["correct"] = correct
    summary = {
        "model": args.judge_model,
        "base_url": args.base_url,
        "scope": "every answer" if args.judge == "all" else "unparsed multiple-choice answers",
        "rechecked": len(targets),
        "changed": changed,
        "failures": failures,
        "requests": judge.requests,
        "cached": sum(v.cached for v in verdicts),
        "cache_file": str(cache),
    }
    return list(judged.values()), summary


def format_judged(rule: dict[str, Any], judged: dict[str, Any], summary: dict[str, Any]) -> str:
    """Rule-based and judged accuracy side by side (Overall and each discipline)."""
    lines = [
        f"judge {summary['model']} ({summary['scope']}): {summary['rechecked']} re-checked, {summary['changed']} "
        f"changed, {summary['failures']} without a usable verdict (rule result kept); {summary['requests']} "
        f"request(s), {summary['cached']} from the cache",
        f"{'':44} {'rule':>7} {'judged':>7}",
    ]
    for name in rule["disciplines"]:
        lines.append(f"{'Overall-' + name:44} {round(rule['disciplines'][name]['acc'], 3):>7.3f} "
                     f"{round(judged['disciplines'][name]['acc'], 3):>7.3f}")  # fmt: skip
    lines.append(f"{'Overall':44} {round(rule['overall']['acc'], 3):>7.3f} {round(judged['overall']['acc'], 3):>7.3f}")
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> int:
    a_questions, b_questions = load_questions(Path(args.a), args.answers), load_questions(Path(args.b), args.answers)
    a = {r["id"]: r for r in score(a_questions, args.scoring)}
    b = {r["id"]: r for r in score(b_questions, args.scoring)}
    responses_a = {q.id: " ".join(q.response.split()) for q in a_questions}
    responses_b = {q.id: " ".join(q.response.split()) for q in b_questions}
    common = [i for i in a if i in b]
    parse_changed, answer_changed, guess_changed = [], [], []
    for qid in common:
        if a[qid]["correct"] == b[qid]["correct"]:
            continue
        if responses_a[qid] != responses_b[qid]:
            answer_changed.append(qid)  # the model said something else
        elif a[qid]["random_guess"] or b[qid]["random_guess"]:
            guess_changed.append(qid)  # same words, a random guess on a side: the guess stream moved, not the answer
        else:
            parse_changed.append(qid)  # same words, parsed differently (another --scoring, a parser change)

    def show(title: str, ids: list[str]) -> None:
        print(f"{title}: {len(ids)}")
        for qid in ids:
            ra, rb = a[qid], b[qid]
            print(f"  {qid}: A {'right' if ra['correct'] else 'wrong'} (parsed {ra['parsed']!r}) -> "
                  f"B {'right' if rb['correct'] else 'wrong'} (parsed {rb['parsed']!r})")  # fmt: skip

    acc_a = sum(a[i]["correct"] for i in common) / max(len(common), 1)
    acc_b = sum(b[i]["correct"] for i in common) / max(len(common), 1)
    print(f"{len(common)} common question(s); accuracy A {acc_a:.3f}, B {acc_b:.3f}")
    only = sorted(set(a) ^ set(b))
    if only:
        print(f"{len(only)} question(s) in only one file (not compared)")
    show("answer changed", answer_changed)
    show("parse changed", parse_changed)
    show("random guess changed (same answer; the seeded guess stream moved)", guess_changed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="run a model on MMMU and write results.jsonl (resumable)")
    p.add_argument("--model-path", default=None, help="checkpoint (hf, vllm); openai: an optional local copy")
    p.add_argument("--data-dir", default="MMMU/MMMU", help="hub id or local folder, or a folder with MMMU_DEV_VAL.tsv")
    p.add_argument("--data-file", default=None, help="VLMEvalKit's MMMU_DEV_VAL.tsv (upstream's data file)")
    p.add_argument("--output-file", required=True)
    p.add_argument("--split", default="validation", choices=["dev", "validation", "test"])
    p.add_argument("--subjects", default=None, help="comma-separated short (acc,bio) or full names; default all 30")
    p.add_argument("--limit", type=int, default=None, help="at most N questions per subject")
    p.add_argument("--prompt", default="official", choices=["official", "qwen"])
    p.add_argument("--image-placement", default="interleaved", choices=["interleaved", "first"])
    p.add_argument("--use-cot", action="store_true", help="append upstream's reasoning hint to each question")
    p.add_argument("--cot-prompt", default=None, help="with --use-cot: this text instead of upstream's")
    p.add_argument("--max-pixels", type=int, default=None, help="default: the checkpoint's saved settings")
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm", "openai"],
                   help="hf (transformers) or vllm in this process, or openai: an OpenAI-compatible server")  # fmt: skip
    p.add_argument("--base-url", default=None, help="openai backend: the server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="openai backend: the served model's name (default: the only one)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: environment variable of the key")
    p.add_argument("--family", default=None, choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"],
                   help="openai backend: the served model's family when its config cannot be read")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=8, help="openai backend: requests in flight")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend")
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="run N shard processes (each --tensor-parallel-size GPUs) and merge them")  # fmt: skip
    p.add_argument("--num-shards", type=int, default=None, help="this process answers one of N shards")
    p.add_argument("--shard-index", type=int, default=None, help="which shard (0..N-1); torchrun sets both")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm backend")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm backend (default: the model's)")
    p.add_argument("--max-images-per-prompt", type=int, default=10, help="vllm backend")
    p.add_argument("--enforce-eager", action="store_true", help="vllm backend: no CUDA graphs / compilation")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--attn-implementation", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    p.add_argument("--preset", default=None, choices=["instruct", "think"],
                   help="upstream's sampling settings and token limits (instruct: T 0.7, top-p 0.8, top-k 20, "
                        "presence 1.5, 32768 tokens; think: T 1.0, top-p 0.95, top-k 20, 40960 tokens)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (or the preset's)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default without a preset)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--presence-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--allow-settings-change",
        action="store_true",
        help="resume into a file whose answers were made with other answer-changing settings (recorded per segment)",
    )
    p.set_defaults(func=infer)
    m = sub.add_parser("merge", help="join the shard files of an infer run into --output-file")
    m.add_argument("--output-file", required=True, help="the --output-file the shards were run with")
    m.add_argument("--num-shards", type=int, required=True)
    m.set_defaults(func=merge)
    answers_help = "gold answers (official answer_dict_val.json) for an {id: prediction} input file"
    e = sub.add_parser("eval", help="score results.jsonl (or an official output.json / {id: prediction} file)")
    e.add_argument("--input-file", required=True, help="results.jsonl, an official output.json or folder of them")
    e.add_argument("--output-file", required=True)
    e.add_argument("--scoring", default="official", choices=["official", "strict", "lenient"])
    e.add_argument("--answers", default=None, help=answers_help)
    e.add_argument("--judge", default=None, choices=["openai", "all"],
                   help="re-check with an LLM judge on an OpenAI-compatible server: openai = the multiple-choice "
                        "answers the rules cannot parse; all = every answer")  # fmt: skip
    e.add_argument("--judge-model", default=None, help="the judge's model name on that server")
    e.add_argument("--base-url", default=None, help="the judge's server, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable of the judge's key")
    e.add_argument("--judge-concurrency", type=int, default=8)
    e.set_defaults(func=evaluate)
    c = sub.add_parser("compare", help="questions whose correctness differs between two results files")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--scoring", default="official", choices=["official", "strict", "lenient"])
    c.add_argument("--answers", default=None, help=answers_help)
    c.set_defaults(func=compare)
    x = sub.add_parser("export", help="write the official {id: prediction} file (MMMU evaluation, test submission)")
    x.add_argument("--input-file", required=True)
    x.add_argument("--output-file", required=True)
    x.add_argument("--scoring", default="official", choices=["official", "strict", "lenient"])
    x.add_argument("--answers", default=None, help=answers_help)
    x.set_defaults(func=export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ScoringInputError, ValueError, ConnectionError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
