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

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from qwenvl.cli import UserError
from qwenvl.evaluation import command
from qwenvl.evaluation.benchmark import Benchmark, JudgeResult, PixelPolicy, Run, Scoring, option
from qwenvl.evaluation.reports import (
    accuracy,
    extraction_methods,
    grouped,
    judge_choices,
    upstream_result,
)
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.evaluation.stats import ci_text
from qwenvl.inference.base import strip_reasoning
from qwenvl.scoring.mcq import can_infer


TSV_NAME = "RealWorldQA.tsv"
UPSTREAM_MIN_PIXELS, UPSTREAM_MAX_PIXELS = 768 * 28 * 28, 5120 * 28 * 28
PRESETS = upstream_presets(default_tokens=128, think_temperature=0.6, think_tokens=32768)


@dataclass
class Options:
    """RealWorldQA's data."""

    data_dir: str = option(f"folder holding {TSV_NAME}", default="LMUData")
    data_file: str | None = option(f"the TSV itself ({TSV_NAME})")
    dataset: str = option("upstream's flag: the TSV is <--data-dir>/<dataset>.tsv", default="RealWorldQA")


def tsv_path(options: Options) -> str:
    if options.data_file:
        return options.data_file
    name = f"{options.dataset}.tsv" if options.dataset else TSV_NAME
    path = Path(options.data_dir) / name
    if not path.is_file():
        raise UserError(
            f"--data-dir {options.data_dir} has no {name}; put VLMEvalKit's file there or pass --data-file"
        )
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


def _conversation(options: Options, row: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    content = [{"type": "image", "image": image} for image in row["images"]]
    return [{"role": "user", "content": [*content, {"type": "text", "text": prompt_text(row)}]}]


def _record(options: Options, row: dict[str, Any], conversation: list[dict[str, Any]], text: Any, run: Run) -> dict:
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


def _ids(options: Options) -> list[str]:
    from qwenvl.evaluation import tsv

    return [row["index"] for row in tsv.read_rows(tsv_path(options), ("index", "question", "answer", "image"))]


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


def _judge(
    judge: Any, options: Any, records: list[dict[str, Any]], scored: list[dict[str, Any]], context: Any
) -> JudgeResult:
    by_id = {r["id"]: r for r in records}
    return JudgeResult(judge_choices(judge, options, scored, ("unparsed", "random"), lambda s: (
        s["id"], by_id[s["id"]].get("question", ""), list(by_id[s["id"]]["options"].values()),
        by_id[s["id"]]["response"])))  # fmt: skip


def _mode(mode: str, help: str) -> Scoring:
    return Scoring(help, lambda records, context: score(records, mode), lambda scored, context: aggregate(scored),
                   lambda report, context: format_report(report))  # fmt: skip


BENCHMARK = Benchmark(
    name="realworldqa",
    description="RealWorldQA: multiple-choice questions on real-world photos",
    doc=__doc__,
    tool="run_realworldqa.py",
    options=Options,
    question_ids=_ids,
    rows=lambda options, ids: iter_rows(tsv_path(options), ids),
    conversation=_conversation,
    record=_record,
    settings=lambda options: {"data_file": tsv_path(options), "prompt": "upstream (VLMEvalKit MCQ)"},
    answer_settings=("prompt",),
    pixels=PixelPolicy(image={"min_pixels": UPSTREAM_MIN_PIXELS, "max_pixels": UPSTREAM_MAX_PIXELS}),
    presets=PRESETS,
    scoring={
        "official": _mode("official", "VLMEvalKit's rule matching (an answer no rule reads is wrong)"),
        "upstream": _mode("upstream", "upstream's matcher, an unreadable answer a seeded random letter or Z"),
    },
    from_upstream=from_upstream,
    judge=_judge,
)


def main(argv: list[str] | None = None) -> int:
    return command.main(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
