"""The pieces of the ``eval`` side every benchmark shares: upstream's judge flags mapped onto ours, multiple-choice
re-checking by the judge, reading results (ours or upstream's), accuracies with their 95% interval, and writing the
scores in the format ``--output-file`` names."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from qwenvl.cli import UserError
from qwenvl.evaluation.results import results_to_score, write_manifest
from qwenvl.evaluation.stats import wilson_interval


# Upstream's --api-type: the environment variables its judge wrappers read (server URL, key).
UPSTREAM_API_TYPES = {"dash": ("DASHSCOPE_API_BASE", "CHATGPT_DASHSCOPE_API_KEY"),
                      "mit": ("MIT_SPIDER_URL", "MIT_SPIDER_TOKEN")}  # fmt: skip


def apply_upstream_judge_flags(args: Any) -> None:
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


def judge_choices(
    judge: Any,
    options: Any,
    scored: list[dict[str, Any]],
    unresolved: tuple[str, ...],
    item: Callable[[dict[str, Any]], tuple[str, str, list[str], str]],
) -> dict[str, Any]:
    """Multiple-choice re-checking: every scored answer whose ``method`` is in ``unresolved`` (all with ``--judge
    all``) is matched to an option by ``judge``; a usable verdict replaces the rule result (``item`` gives ``(id,
    question, option texts, answer)``). ``options``: the judge options. Returns the summary for the report."""
    targets = [s for s in scored if options.judge == "all" or s["method"] in unresolved]
    verdicts = judge.choose_all([item(s) for s in targets])
    failures = 0
    for s, verdict in zip(targets, verdicts):
        if verdict.letter is None:
            failures += 1  # the rule result stands
            continue
        s.update(extracted=verdict.letter, method="judge", answered=True, correct=verdict.letter == s["answer"])
    return {"model": options.judge_model, "base_url": options.base_url, "rechecked": len(targets),
            "failures": failures, "requests": judge.requests, "cached": sum(v.cached for v in verdicts)}  # fmt: skip


UPSTREAM_RECORD = ("question_id", "annotation", "result")


def load_records(
    path: Path,
    required: tuple[str, ...],
    tool: str,
    from_upstream: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    upstream_fields: tuple[str, ...] = UPSTREAM_RECORD,
) -> list[dict[str, Any]]:
    """The results of ``tool infer`` in ``path``, each line checked for the ``required`` fields. A line of
    upstream's results file (``upstream_fields``: ``question_id``, ``annotation``, ``result``) is converted by
    ``from_upstream``."""
    lines = results_to_score(path)
    out = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            raise UserError(f"{path}: line {i + 1} is not a JSON object (results of {tool} infer)")
        if from_upstream is not None and all(k in line for k in upstream_fields) and "response" not in line:
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
