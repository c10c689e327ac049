"""The runner every benchmark shares: from a declared :class:`~qwenvl.evaluation.benchmark.Benchmark`, ``infer``,
``evaluate``, ``merge``, ``compare`` and ``export``, callable in-process with typed options::

    from qwenvl.evaluation import realworldqa, runner
    from qwenvl.evaluation.benchmark import InferOptions
    from qwenvl.inference.config import BackendConfig

    results = runner.infer(realworldqa.BENCHMARK, realworldqa.Options(data_dir="LMUData"),
                           BackendConfig(model_path="Qwen/Qwen3-VL-8B-Instruct"), InferOptions("out/rwqa.jsonl"))
    report = runner.evaluate(realworldqa.BENCHMARK, results, "out/scores.json", scoring="official")

``infer`` does the checks, the data-parallel launch, this process's shard, the output lock, resume (refusing to mix
answers made with other answer-changing settings), the manifest, batched inference with a progress bar, and the
merge of the shards; ``evaluate`` reads the results (ours, or upstream's converted by the benchmark), scores them in
a mode of the benchmark, re-checks with the judge, and writes the scores in the format of the output's extension.
:mod:`qwenvl.evaluation.command` is the command line over these.

The pixel policy (the same for every benchmark; the run's manifest records it as ``pixel_policy`` with the resolved
values in ``pixel_budgets``):

* ``checkpoint`` (default): the checkpoint's saved budget (``qwenvl_preprocessing.json``, the one it was trained
  with), else qwen_vl_utils' defaults (what upstream feeds a released checkpoint);
* ``upstream``: with ``--preset upstream`` (greedy decoding) or ``instruct|think`` (upstream's sampling), upstream's
  pixel values of that
  benchmark (``Benchmark.pixels``) over the checkpoint's; a benchmark for which upstream sets none keeps the
  checkpoint's;
* ``flags``: ``--min-pixels`` / ``--max-pixels`` (per frame for a video benchmark) and the video flags
  (``--fps``, ``--min-frames``, ``--max-frames``, ``--total-pixels``) over both.

The budget reaches the media through the backend (``MediaBudget.apply``), never through keys on a benchmark's
items, so what a record says about sizes (ODinW's resized image, for its boxes) is computed with the budget used.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError
from qwenvl.evaluation.benchmark import (
    PIXEL_FLAGS,
    Benchmark,
    EvalContext,
    InferOptions,
    JudgeOptions,
    JudgeResult,
    Run,
    Scored,
)
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
    write_manifest,
)
from qwenvl.inference.config import BackendConfig


DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty")


# ----------------------------------------------------------------------------------------------- pixel policy


@dataclass
class Pixels:
    """The pixel budget of a run and where it came from (see the module doc)."""

    policy: str  # checkpoint | upstream | flags
    budget: Any  # MediaBudget
    video_total_pixels: int | None
    entry: dict[str, Any]  # the manifest's pixel_budgets


def resolve_pixels(benchmark: Benchmark, model_path: str | None, preset: str | None,
                   flags: dict[str, Any] | None = None) -> Pixels:  # fmt: skip
    """The budget of the pixel policy: the checkpoint's, upstream's values with a preset, the flags over both.

    ``flags``: the pixel flags of :class:`InferOptions` (``min_pixels``, ``max_pixels``, ``fps``, ``min_frames``,
    ``max_frames``, ``total_pixels``); ``min_pixels`` / ``max_pixels`` are per frame for a benchmark that sends
    videos only."""
    from qwenvl.model.preprocessing import checkpoint_budget, load_preprocessing

    policy = benchmark.pixels
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(given) - set(PIXEL_FLAGS)
    assert not unknown, unknown
    video_only = "video" in policy.media and "image" not in policy.media
    if "video" not in policy.media:
        extra = [k for k in given if k not in ("min_pixels", "max_pixels")]
        if extra:
            raise UserError(f"{benchmark.name} sends no videos: --{extra[0].replace('_', '-')} does not apply")

    def budget_keys(values: dict[str, Any], kind: str) -> dict[str, Any]:
        """``values`` of one media kind as MediaBudget fields (and total_pixels as it is)."""
        if kind == "image":
            return {k: values[k] for k in ("min_pixels", "max_pixels") if k in values}
        out = {}
        for key, value in values.items():
            out[key if key == "total_pixels" else "video_" + key] = value
        return out

    upstream: dict[str, Any] = {}
    if preset is not None:
        if "image" in policy.media and policy.image:
            upstream.update(budget_keys(policy.image, "image"))
        if "video" in policy.media and policy.video:
            upstream.update(budget_keys(policy.video, "video"))
    from_flags: dict[str, Any] = {}
    for key, value in given.items():
        if key in ("min_pixels", "max_pixels") and not video_only:
            from_flags[key] = value
        else:
            from_flags.update(budget_keys({key: value}, "video"))
    name = "flags" if from_flags else "upstream" if upstream else "checkpoint"
    total = from_flags.get("total_pixels", upstream.get("total_pixels"))
    budget, source = checkpoint_budget(model_path)
    for values, origin in ((upstream, "upstream's values (--preset)"), (from_flags, "flags")):
        fields = {k: v for k, v in values.items() if k != "total_pixels"}
        if fields:  # each layer over the one before: the checkpoint's, upstream's, the flags
            budget = budget.overridden(**fields)
            source += f" + {origin}" + ("".join(f" --{k}" for k in fields) if values is from_flags else "")
    saved = load_preprocessing(model_path) if model_path and Path(model_path).is_dir() else None
    drift = {k: (getattr(budget, k), getattr(saved.budget, k)) for k in from_flags if k != "total_pixels"
             and saved is not None and getattr(budget, k) != getattr(saved.budget, k)}  # fmt: skip
    for key, (flag, trained) in drift.items():
        print(f"warning: --{key.replace('_', '-')} {flag} differs from the {trained} this checkpoint was trained with "
              f"({model_path}/qwenvl_preprocessing.json); scores may not reflect the trained model",
              file=sys.stderr)  # fmt: skip
    entry = {
        "policy": name,
        "source": source,
        "upstream": upstream or None,
        "drift_from_checkpoint": {k: {"flag": f, "trained": t} for k, (f, t) in drift.items()},
        **{k: v for k, v in budget.to_dict().items() if v is not None},
        **({"video_total_pixels": total} if total is not None else {}),
    }
    return Pixels(name, budget, total, entry)


def pixel_flags(options: InferOptions) -> dict[str, Any]:
    return {k: getattr(options, k) for k in PIXEL_FLAGS}


# ----------------------------------------------------------------------------------------------- decoding


def generation_settings(benchmark: Benchmark, options: InferOptions) -> Any:
    """Decoding: the preset's values (``default`` without ``--preset``), each replaced by its option when given."""
    from qwenvl.inference.base import GenerationSettings

    if options.preset is not None and options.preset not in benchmark.presets:
        raise UserError(f"--preset {options.preset}: choose one of {', '.join(k for k in benchmark.presets)}")
    values = dict(benchmark.presets[options.preset or "default"])
    for key in DECODING_FIELDS:
        if getattr(options, key) is not None:
            values[key] = getattr(options, key)
    return GenerationSettings(**{k: values[k] for k in DECODING_FIELDS}, seed=seed_of(benchmark, options))


def seed_of(benchmark: Benchmark, options: InferOptions) -> int:
    return benchmark.seed if options.seed is None else options.seed


def upstream_presets(default_tokens: int, think_temperature: float, think_tokens: int) -> dict[str, dict[str, Any]]:
    """Greedy ``default`` decoding, ``upstream`` (the same decoding with upstream's pixel values) and upstream's
    ``instruct`` / ``think`` shell presets (the think preset's temperature and token limit differ between upstream's
    benchmarks; both take upstream's pixel values too)."""
    greedy = dict(max_new_tokens=default_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                  presence_penalty=0.0)  # fmt: skip
    return {
        "default": greedy,
        "upstream": dict(greedy),
        "instruct": dict(max_new_tokens=32768, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0,
                         presence_penalty=1.5),
        "think": dict(max_new_tokens=think_tokens, temperature=think_temperature, top_p=0.95, top_k=20,
                      repetition_penalty=1.0, presence_penalty=0.0),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- infer


def infer(benchmark: Benchmark, options: Any, backend: BackendConfig, run: InferOptions,
          argv: list[str] | None = None) -> Path:  # fmt: skip
    """Answer the benchmark's selected questions into ``run.output_file`` (resumable) and return its path.

    ``options``: the benchmark's data options; ``backend``: how to run the model; ``argv``: the command line of a
    data-parallel run's workers (built from the options when not given)."""
    from qwenvl.evaluation import shards

    output = Path(run.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    if run.data_parallel_size > 1 and run.num_shards is None:
        from qwenvl.evaluation.command import infer_argv

        worker = infer_argv(benchmark, options, backend, replace(run, data_parallel_size=1))
        per_worker = backend.tensor_parallel_size if backend.backend == "vllm" else 1
        shards.launch_data_parallel([benchmark.name, "infer", *worker], run.data_parallel_size, per_worker,
                                    "qwenvl.evaluation.registry")  # fmt: skip
        merge_outputs(output, run.data_parallel_size)
        return output
    num, index = shards.shard_from_env(run.num_shards, run.shard_index)
    # The file itself, not a symlink to it: its lock and manifest are the same whichever way it is named.
    given = shards.shard_path(output, num, index)
    path = Path(os.path.realpath(given))
    with OutputLock(path, given):
        _infer(benchmark, options, backend, run, path, num, index)
    if num > 1 and all_shards_done(output, num):
        merge_outputs(output, num)  # the last shard to finish joins them (a repeated merge writes the same file)
    return output


def _load_backend(backend: BackendConfig, budget: Any, seed: int) -> Any:
    from qwenvl.inference import load_backend

    return load_backend(backend, budget=budget, seed=seed)


def _with_total_pixels(conversation: list[dict[str, Any]], total: int | None) -> list[dict[str, Any]]:
    """Videos get the policy's ``total_pixels`` (not a field of ``MediaBudget``) where they have none."""
    if total is None:
        return conversation
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"total_pixels": total, **c} if isinstance(c, dict) and c.get("type") == "video" else c
                       for c in content]  # fmt: skip
            message = {**message, "content": content}
        out.append(message)
    return out


def _infer(benchmark: Benchmark, options: Any, backend_config: BackendConfig, run: InferOptions, output: Path,
           num_shards: int, shard_index: int) -> None:  # fmt: skip
    from qwenvl.evaluation import shards
    from qwenvl.inference.base import strip_reasoning

    done = {r["id"] for r in read_results(output, repair=True)}
    pixels = resolve_pixels(benchmark, backend_config.model_path, run.preset, pixel_flags(run))
    gen = generation_settings(benchmark, run)
    seed = seed_of(benchmark, run)
    batch_size = run.batch_size if run.batch_size is not None else benchmark.batch_size
    ids = benchmark.question_ids(options)
    if run.limit is not None:
        if run.limit < 1:
            raise UserError(f"{benchmark.limit_flags[0]} {run.limit}: give a positive number of questions")
        ids = benchmark.limit(ids, run.limit)
    assigned = shards.select(ids, num_shards, shard_index)
    # A server is asked what it serves before anything is written: the manifest records the served model.
    backend = _load_backend(backend_config, pixels.budget, seed) if backend_config.backend == "openai" else None
    model_path = backend_config.model_path
    run_settings = {
        "mode": "infer",
        "benchmark": benchmark.name,
        "model_path": model_path,
        "model_config_sha256": config_hash(model_path) if model_path else None,
        "served_model": backend.model if backend is not None else None,
        "base_url": backend_config.base_url if backend_config.backend == "openai" else None,
        **benchmark.settings(options),
        "limit": run.limit,
        "pixel_policy": pixels.policy,
        "pixel_budgets": pixels.entry,
        "preset": run.preset,
        "decoding": vars(gen),
        "backend": backend_config.backend,
        "backend_config": asdict(backend_config),
        "dtype": backend_config.dtype,
        "batch_size": batch_size,
        "shard": {"index": shard_index, "num_shards": num_shards, "ids": assigned},
    }
    previous = read_manifest(output) if done else None
    if previous is not None:
        changes = settings_changes(previous, run_settings, ANSWER_SETTINGS + benchmark.answer_settings)
        if changes and not run.allow_settings_change:
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
        return

    context = Run(run, backend_config, pixels.budget, pixels.video_total_pixels)
    started, count, truncated, empty = time.monotonic(), 0, 0, 0
    try:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), desc=benchmark.name, unit="q")  # with ETA
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        progress = None
    try:
        backend = backend or _load_backend(backend_config, pixels.budget, seed)
        batch: list[dict[str, Any]] = []
        for row in [*benchmark.rows(options, todo), None]:  # rows are read lazily; media held for one batch
            if row is not None:
                batch.append(row)
                if len(batch) < batch_size:
                    continue
            if not batch:
                break
            conversations = [benchmark.conversation(options, r, context) for r in batch]
            answers = backend.generate([_with_total_pixels(c, pixels.video_total_pixels) for c in conversations],
                                       gen)  # fmt: skip
            records = []
            for r, conversation, text in zip(batch, conversations, answers):
                cut = bool(getattr(text, "truncated", False))
                truncated += cut
                empty += not strip_reasoning(str(text))
                records.append({**benchmark.record(options, r, conversation, text, context), "truncated": cut})
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
            f"warning: {empty} of {count} answer(s) are empty (no text came back); eval scores them as unreadable and "
            "counts them. Check the server's log, or its --max-model-len and --max-new-tokens",
            file=sys.stderr,
        )


def merge(output_file: str | Path, num_shards: int) -> Path:
    """Join the shard files of an infer run into ``output_file`` (checked: every shard holds exactly its ids)."""
    merge_outputs(Path(output_file), num_shards)
    return Path(output_file)


# ----------------------------------------------------------------------------------------------- eval side


def load(benchmark: Benchmark, path: Path, options: Any = None) -> list[Any]:
    """The results in ``path``: ours, or upstream's lines converted by the benchmark, each checked."""
    from qwenvl.evaluation.reports import load_records

    if benchmark.load is not None:
        return benchmark.load(path, options if options is not None else benchmark.eval_options())
    return load_records(path, benchmark.required, benchmark.tool_name, benchmark.from_upstream,
                        benchmark.upstream_fields)  # fmt: skip


def _mode(benchmark: Benchmark, scoring: str | None) -> str:
    mode = scoring or next(iter(benchmark.scoring))
    if mode not in benchmark.scoring:
        raise UserError(f"--scoring {mode}: choose one of {', '.join(benchmark.scoring)}")
    return mode


def score_file(benchmark: Benchmark, path: str | Path, scoring: str | None = None, options: Any = None) -> Scored:
    """A results file read and scored per question in one mode."""
    mode = _mode(benchmark, scoring)
    options = options if options is not None else benchmark.eval_options()
    context = EvalContext(Path(path), mode, options)
    records = load(benchmark, Path(path), options)
    return Scored(Path(path), records, benchmark.scoring[mode].score(records, context), context)


def evaluate(
    benchmark: Benchmark,
    input_file: str | Path,
    output_file: str | Path | None = None,
    scoring: str | None = None,
    judge: JudgeOptions | None = None,
    options: Any = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Score a results file (ours or upstream's) and return the scores body; with ``output_file`` write it in the
    format of its extension (``.json``, ``.csv``, ``.jsonl``) with its manifest; ``verbose`` prints the report.

    A file the benchmark cannot score (``Benchmark.unscorable``: MMMU's test split, which has no gold answers) writes
    nothing and returns ``{"scoring": mode, "unscorable": message}``, the message saying why and what to do instead."""
    from qwenvl.evaluation.reports import empty_answers, empty_answers_warning, write_scores

    input_file = Path(input_file)
    mode = _mode(benchmark, scoring)
    options = options if options is not None else benchmark.eval_options()
    context = EvalContext(input_file, mode, options)
    records = load(benchmark, input_file, options)
    if benchmark.unscorable is not None and (message := benchmark.unscorable(records, input_file)):
        if verbose:
            print(message)
        return {"scoring": mode, "unscorable": message}
    how = benchmark.scoring[mode]
    scored = how.score(records, context)
    result: JudgeResult | None = None
    if judge is not None:
        from qwenvl.evaluation.reports import apply_upstream_judge_flags

        apply_upstream_judge_flags(judge)
    if judge is not None and judge.judge:
        if benchmark.judge is None:
            raise UserError(f"{benchmark.name} has no judge")
        result = benchmark.judge(make_judge(judge, output_file), judge, records, scored, context)
    report = how.aggregate(scored, context)
    body: dict[str, Any] = {"scoring": mode}
    if benchmark.judge is not None:
        body["judge"] = result.summary if result else None
    body.update(report)
    if "empty_responses" not in report:
        body["empty_responses"] = empty_answers(records)
    if benchmark.per_question:
        body["questions"] = scored
    if result is not None:
        body.update(result.body)
    if output_file is not None:
        settings = {"input_file": str(input_file), "scoring": mode, **({"judge": result.summary} if result else {}),
                    **({"coords": report["coords"]} if "coords" in report else {}), "seed": 42}  # fmt: skip
        write_scores(Path(output_file), body, settings)
    if verbose:
        print(f"scoring: {mode}" + (f" + judge {judge.judge_model}" if result is not None else ""))
        print(how.format_report(report, context))
        if result is not None and result.text:
            print(result.text)
        if "empty_responses" not in report and (warning := empty_answers_warning(body["empty_responses"],
                                                                                 len(records))):  # fmt: skip
            print(warning)
        if output_file is not None:
            print(f"-> {output_file}")
    return body


def make_judge(options: JudgeOptions, output_file: str | Path | None) -> Any:
    """The judge of ``eval --judge``, its verdicts cached beside the scores file."""
    from qwenvl.evaluation.judge import Judge

    if not options.base_url or not options.judge_model:
        raise UserError("--judge needs --base-url (an OpenAI-compatible server) and --judge-model (its model name)")
    output = Path(output_file or "scores.json")
    return Judge(options.base_url, options.judge_model, output.with_name(output.stem + ".judge.jsonl"),
                 os.environ.get(options.api_key_env), concurrency=options.judge_concurrency)  # fmt: skip


def compare(benchmark: Benchmark, a: str | Path, b: str | Path, scoring: str | None = None,
            options: Any = None) -> str:  # fmt: skip
    """Two results files compared on their common questions (the benchmark's comparison, else the accuracies with
    their 95% intervals, the exact McNemar test and the questions whose correctness differs); the text."""
    from qwenvl.evaluation.stats import format_comparison, paired_comparison

    left, right = score_file(benchmark, a, scoring, options), score_file(benchmark, b, scoring, options)
    if benchmark.compare is not None:
        return benchmark.compare(left, right)
    ra, rb = {r["id"]: r for r in left.scored}, {r["id"]: r for r in right.scored}
    lines = [format_comparison(paired_comparison({i: r["correct"] for i, r in ra.items()},
                                                 {i: r["correct"] for i, r in rb.items()}))]  # fmt: skip
    changed = [i for i in ra if i in rb and ra[i]["correct"] != rb[i]["correct"]]
    lines.append(f"{len(changed)} changed")
    for i in changed:
        lines.append(f"  {i}: A {ra[i].get('extracted')} ({ra[i].get('method')}) -> B {rb[i].get('extracted')} "
                     f"({rb[i].get('method')}), gold {ra[i].get('answer')}")  # fmt: skip
    return "\n".join(lines)


def export(benchmark: Benchmark, input_file: str | Path, output_file: str | Path, scoring: str | None = None,
           options: Any = None) -> Path:  # fmt: skip
    """Write the benchmark's export of a results file (default ``{id: extracted answer}``) and its manifest."""
    scored = score_file(benchmark, input_file, scoring, options)
    if benchmark.export is not None:
        payload = benchmark.export(scored)
    else:
        payload = {r["id"]: r.get("extracted") for r in scored.scored}
    output = Path(output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    settings = {f.name: getattr(scored.context.options, f.name) for f in fields(scored.context.options)}
    write_manifest(output, {"mode": "export", "input_file": str(input_file), "scoring": scored.context.mode,
                            "seed": 42, **{k: v for k, v in settings.items() if v is not None}})  # fmt: skip
    return output
