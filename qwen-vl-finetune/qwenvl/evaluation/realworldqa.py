"""RealWorldQA: inference and scoring (``evaluation/RealWorldQA/run_realworldqa.py`` is the entry point).

Run::

    python evaluation/RealWorldQA/run_realworldqa.py infer --model-path Qwen/Qwen3-VL-8B-Instruct \\
        --data-dir LMUData --output-file out/rwqa.jsonl [--preset instruct|think] [--backend hf|vllm|openai]
    python evaluation/RealWorldQA/run_realworldqa.py eval --input-file out/rwqa.jsonl --output-file out/scores.json \\
        [--scoring official|upstream] [--judge openai --judge-model NAME --base-url URL]

Data: VLMEvalKit's ``RealWorldQA.tsv`` (``--data-dir`` holding it, or ``--data-file``), the file upstream
downloads; nothing is downloaded here. Prompt: upstream's (VLMEvalKit's default multiple-choice prompt, byte for
byte: ``Hint:`` when there is one, ``Question:``, ``Options:`` and the closing sentence with its trailing space),
images first. Scoring:

* ``official``: VLMEvalKit's current rule matching (RealWorldQA has no scorer of its own; VLMEvalKit is the
  reference): an answer no rule reads is wrong (``Z``), as VLMEvalKit's ``exact_matching`` leaves it;
* ``upstream``: upstream's older matcher (the article rule always on, no length limits) and, for an answer it
  cannot read, a random letter or ``Z`` as upstream draws it without a judge, here from a seeded stream (seed 42,
  in index order) so a score is reproducible;
* ``--judge openai`` (either mode): an LLM re-checks the answers the rules cannot read, instead of the fall-back.

The report gives Overall and, when the TSV has them, per ``category`` and ``l2-category``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, Iterator

from qwenvl.cli import UserError
from qwenvl.evaluation.core import (
    Task,
    accuracy,
    add_compare_command,
    add_eval_command,
    add_export_command,
    add_infer_arguments,
    add_merge_command,
    ci_text,
    empty_answers,
    empty_answers_warning,
    extraction_methods,
    grouped,
    judge_choices,
    load_records,
    run_infer,
    run_main,
    strip_reasoning,
    upstream_presets,
    upstream_result,
    write_scores,
)
from qwenvl.evaluation.mcq import can_infer


TSV_NAME = "RealWorldQA.tsv"
UPSTREAM_MIN_PIXELS, UPSTREAM_MAX_PIXELS = 768 * 28 * 28, 5120 * 28 * 28
PRESETS = upstream_presets(default_tokens=128, think_temperature=0.6, think_tokens=32768)


def tsv_path(args: argparse.Namespace) -> str:
    if args.data_file:
        return args.data_file
    name = f"{args.dataset}.tsv" if getattr(args, "dataset", None) else TSV_NAME
    path = Path(args.data_dir) / name
    if not path.is_file():
        raise UserError(f"--data-dir {args.data_dir} has no {name}; put VLMEvalKit's file there or pass --data-file")
    return str(path)


def iter_rows(path: str, ids: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Questions of the TSV with decoded images (only those in ``ids`` when given), in file order."""
    from qwenvl.evaluation import tsv

    rows = tsv.read_rows(path, ("index", "question", "answer", "image"))
    by_index = {row["index"]: row for row in rows}
    for row in rows:
        if ids is not None and row["index"] not in ids:
            continue
        at = tsv.where(path, row)
        options = tsv.letter_options(row, "ABCDEFGH")
        if not options:
            raise tsv.TSVError(f"{at}: no options (columns A, B, ...); RealWorldQA questions are multiple choice")
        yield {
            "index": row["index"],
            "question": row["question"],
            "hint": row["hint"] if tsv.present(row.get("hint")) else None,
            "options": options,
            "answer": row["answer"].strip(),
            "category": row.get("category") if tsv.present(row.get("category")) else None,
            "l2-category": row.get("l2-category") if tsv.present(row.get("l2-category")) else None,
            "images": tsv.row_images(row, by_index, at),
        }


def prompt_text(row: dict[str, Any]) -> str:
    """Upstream's text (VLMEvalKit's multiple-choice prompt), byte for byte; no strip at the end."""
    text = f"Hint: {row['hint']}\n" if row.get("hint") else ""
    text += f"Question: {row['question']}\n"
    if row["options"]:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in row["options"].items())
        text += "Please select the correct answer from the options above. \n"
    return text


def _conversation(args: argparse.Namespace, row: dict[str, Any]) -> list[dict[str, Any]]:
    content = [{"type": "image", "image": image} for image in row["images"]]
    return [{"role": "user", "content": [*content, {"type": "text", "text": prompt_text(row)}]}]


def _record(args: argparse.Namespace, row: dict[str, Any], conversation: list[dict[str, Any]], text: Any) -> dict:
    return {
        "id": row["index"],
        "question": row["question"],
        "options": row["options"],
        "answer": row["answer"],
        "category": row["category"],
        "l2-category": row["l2-category"],
        "response": strip_reasoning(text),
        "raw_response": str(text),
    }


def _budget_overrides(args: argparse.Namespace) -> dict[str, Any]:
    upstream = args.preset is not None  # a preset reproduces upstream: its pixel budget too, unless flags say
    return {
        "min_pixels": args.min_pixels if args.min_pixels is not None else (UPSTREAM_MIN_PIXELS if upstream else None),
        "max_pixels": args.max_pixels if args.max_pixels is not None else (UPSTREAM_MAX_PIXELS if upstream else None),
    }


def _ids(args: argparse.Namespace) -> list[str]:
    from qwenvl.evaluation import tsv

    rows = tsv.read_rows(tsv_path(args), ("index", "question", "answer", "image"))
    ids = [row["index"] for row in rows]
    return ids[: args.limit] if args.limit else ids


TASK = Task(
    name="realworldqa",
    module="qwenvl.evaluation.realworldqa",
    question_ids=_ids,
    rows=lambda args, ids: iter_rows(tsv_path(args), ids),
    conversation=_conversation,
    record=_record,
    settings=lambda args: {"data_file": tsv_path(args), "limit": args.limit, "prompt": "upstream (VLMEvalKit MCQ)"},
    presets=PRESETS,
    budget_overrides=_budget_overrides,
    answer_settings=("prompt",),
)


# ----------------------------------------------------------------------------------------------- scoring


def score(records: list[dict[str, Any]], mode: str = "official", seed: int = 42) -> list[dict[str, Any]]:
    """Per-question results: the letter read, how, and whether it is right (see the module doc)."""
    if mode not in ("official", "upstream"):
        raise UserError(f"--scoring must be official or upstream, got {mode!r}")
    rng = random.Random(seed)
    out = []
    for r in sorted(records, key=lambda r: _index_key(r["id"])):
        options = {k: str(v) for k, v in r["options"].items()}
        letter = can_infer(r["response"], options, "vlmevalkit" if mode == "official" else "upstream")
        how = "rule"
        if letter is None:
            if mode == "upstream":
                letter, how = rng.choice([*options, "Z"]), "random"
            else:
                letter, how = "Z", "unparsed"
        out.append({
            "id": r["id"], "answer": r["answer"], "extracted": letter, "method": how,
            "correct": letter == r["answer"], "category": r.get("category"), "l2-category": r.get("l2-category"),
        })  # fmt: skip
    return out


def _index_key(index: str) -> tuple[int, Any]:
    return (0, int(index)) if str(index).isdigit() else (1, str(index))


def aggregate(scored: list[dict[str, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {"overall": accuracy(scored), "methods": extraction_methods(scored)}
    for key in ("category", "l2-category"):
        groups = grouped(scored, lambda r, key=key: r.get(key))
        if groups:
            report[key] = groups
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'':40} {'num':>5} {'acc':>7} {'95% CI':>16}"]
    lines.append(f"{'Overall':40} {report['overall']['num']:>5} {report['overall']['acc']:>7.3f} "
                 f"{ci_text(report['overall']):>16}")  # fmt: skip
    for key in ("category", "l2-category"):
        for name, s in report.get(key, {}).items():
            lines.append(f"  {key} {name:<{38 - len(key)}} {s['num']:>5} {s['acc']:>7.3f} {ci_text(s):>16}")
    lines.append("extraction: " + ", ".join(f"{m} {n}" for m, n in report["methods"].items()))
    return "\n".join(lines)


def from_upstream(line: dict[str, Any]) -> dict[str, Any]:
    """A record of upstream's ``run_realworldqa.py infer`` (the whole TSV row in ``annotation``) as ours."""
    from qwenvl.evaluation import tsv

    row = line["annotation"]
    options = {k: str(row[k]) for k in "ABCDEFGH" if tsv.present(row.get(k))}
    present = {k: row.get(k) if tsv.present(row.get(k)) else None for k in ("category", "l2-category")}
    return {"id": str(row["index"]), "question": row["question"], "options": options,
            "answer": str(row["answer"]).strip(), **present, **upstream_result(line)}  # fmt: skip


def _load(path: Path) -> list[dict[str, Any]]:
    return load_records(path, ("id", "options", "answer", "response"), "run_realworldqa.py", from_upstream)


def evaluate(args: argparse.Namespace) -> int:
    records = _load(Path(args.input_file))
    scored = score(records, args.scoring)
    judge_summary = None
    if args.judge:
        by_id = {r["id"]: r for r in records}
        judge_summary = judge_choices(args, scored, ("unparsed", "random"), lambda s: (
            s["id"], by_id[s["id"]].get("question", ""), list(by_id[s["id"]]["options"].values()),
            by_id[s["id"]]["response"]))  # fmt: skip
    report = aggregate(scored)
    empty = empty_answers(records)
    output = Path(args.output_file)
    write_scores(output, {"scoring": args.scoring, "judge": judge_summary, **report, "empty_responses": empty,
                          "questions": scored},
                 {"input_file": args.input_file, "scoring": args.scoring, "judge": judge_summary, "seed": 42})  # fmt: skip
    print(f"scoring: {args.scoring}" + (f" + judge {args.judge_model}" if args.judge else ""))
    print(format_report(report))
    if warning := empty_answers_warning(empty, len(records)):
        print(warning)
    print(f"-> {output}")
    return 0


def _scored(path: Path, mode: str) -> list[dict[str, Any]]:
    return score(_load(path), mode)


def build_parser() -> argparse.ArgumentParser:
    from qwenvl.cli import StrictParser

    parser = StrictParser(prog="run_realworldqa.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="answer RealWorldQA and write results.jsonl (resumable)")
    add_infer_arguments(p, PRESETS)
    p.add_argument("--data-dir", default="LMUData", help=f"folder holding {TSV_NAME}")
    p.add_argument("--data-file", default=None, help=f"the TSV itself ({TSV_NAME})")
    p.add_argument("--dataset", default="RealWorldQA", help="upstream's flag: the TSV is <--data-dir>/<dataset>.tsv")
    p.add_argument("--limit", type=int, default=None, help="the first N questions only")
    p.add_argument("--min-pixels", type=int, default=None,
                   help=f"per image (default: the checkpoint's; with --preset upstream's {UPSTREAM_MIN_PIXELS})")  # fmt: skip
    p.add_argument("--max-pixels", type=int, default=None,
                   help=f"per image (default: the checkpoint's; with --preset upstream's {UPSTREAM_MAX_PIXELS})")  # fmt: skip
    p.set_defaults(func=lambda args: run_infer(args, TASK))
    add_eval_command(sub, evaluate, tool="run_realworldqa.py")
    add_merge_command(sub)
    add_compare_command(sub, _scored)
    add_export_command(sub, _scored)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
