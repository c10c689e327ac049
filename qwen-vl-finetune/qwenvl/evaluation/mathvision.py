"""MathVision (MATH-V): inference and scoring (``evaluation/MathVision/run_mathv.py`` is the entry point).

Run::

    python evaluation/MathVision/run_mathv.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir LMUData \\
        --dataset MathVision_MINI --output-file out/mathv.jsonl [--preset instruct|think] [--prompt upstream|official]
    python evaluation/MathVision/run_mathv.py eval --input-file out/mathv.jsonl --output-file out/scores.json \\
        [--scoring official|upstream] [--judge openai --judge-model NAME --base-url URL]

Data: VLMEvalKit's ``MathVision.tsv`` / ``MathVision_MINI.tsv`` (``--data-dir`` holding them with
``--dataset``, or ``--data-file``), the files upstream reads; or the official MATH-V release (``--data-file
data/test.jsonl`` or ``testmini.jsonl``, images beside it under ``images/``). Images first, under the runner's
pixel policy (the checkpoint's budget; with ``--preset`` upstream's 768..5120·28² pixels; the flags over both).

Prompts: ``upstream`` (default): the question text alone, as upstream sends it (``--use-cot`` appends " Let's
think step by step."); ``official``: MATH-V's instruction to answer in one ``\\boxed{}``, the question, and the
options as ``(A) value`` lines (unless they are the bare letters A-E, whose contents are in the image).

Scoring:

* ``official``: MATH-V's ``evaluate.py``: the answer taken from ``\\boxed{}`` / "the answer is" / a trailing
  letter, normalised (units, ``\\frac``, ``\\sqrt``, ``a/b``, ``0.5``), and compared with the gold letter and the
  gold option's value, numerically after rounding to 2 decimals; LaTeX is read with ``latex2sympy2`` (as
  MATH-V does) and never passed to Python's ``eval``. Accuracy overall, per subject, per level and per subject and
  level.
* ``upstream``: upstream's rule stage (VLMEvalKit's old matcher for multiple choice; for free-form answers the
  whole answer must equal the gold, within 1e-6) and, for what it cannot read, ``--judge`` (an LLM extracts the
  answer, as upstream's GPT-4o does); without a judge such an answer is wrong. Accuracy overall and per subject.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from qwenvl.cli import UserError
from qwenvl.evaluation import command
from qwenvl.evaluation.benchmark import Benchmark, JudgeResult, PixelPolicy, Run, Scoring, option
from qwenvl.evaluation.reports import accuracy, extraction_methods, grouped, upstream_result
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.evaluation.stats import ci_text
from qwenvl.inference.base import strip_reasoning
from qwenvl.scoring.math_answers import (  # noqa: F401 - MATH-V's answer checking, moved below the layers that use it
    FLAGS,
    find_math_answer,
    is_equal,
    normalise,
    official_extract,
)


UPSTREAM_MIN_PIXELS, UPSTREAM_MAX_PIXELS = 768 * 28 * 28, 5120 * 28 * 28
PRESETS = upstream_presets(default_tokens=2048, think_temperature=1.0, think_tokens=40960)
OFFICIAL_INSTRUCTION = (
    'Please solve the problem step by step and put your answer in one "\\boxed{}". If it is a multiple choice '
    'question, only one letter is allowed in the "\\boxed{}".'
)
COT = " Let's think step by step."
BARE = ["A", "B", "C", "D", "E"]


# ----------------------------------------------------------------------------------------------- data


@dataclass
class Options:
    """MathVision's data and prompt."""

    data_dir: str = option("folder holding the VLMEvalKit TSV", default="LMUData")
    dataset: Literal["MathVision", "MathVision_MINI"] = option("the TSV read from --data-dir: <dataset>.tsv",
                                                               default="MathVision")  # fmt: skip
    data_file: str | None = option("a TSV, or MATH-V's data/test.jsonl / testmini.jsonl")
    prompt: Literal["upstream", "official"] = option(
        "upstream: the question text alone; official: MATH-V's \\boxed{} instruction and options", default="upstream"
    )
    use_cot: bool = option("append upstream's \" Let's think step by step.\"", default=False)
    cot_prompt: str | None = option("with --use-cot: this text instead of upstream's")


def data_path(options: Options) -> str:
    if options.data_file:
        return options.data_file
    for candidate in (Path(options.data_dir) / f"{options.dataset}.tsv",):
        if candidate.is_file():
            return str(candidate)
    raise UserError(
        f"--data-dir {options.data_dir} has no {options.dataset}.tsv; put VLMEvalKit's file there, or pass --data-file "
        "(a TSV, or MATH-V's data/test.jsonl)"
    )


def iter_problems(path: str, ids: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Problems as ``{id, question, options, answer, subject, level, images}``, in file order."""
    if path.endswith(".jsonl"):
        yield from _iter_jsonl(path, ids)
        return
    from qwenvl.evaluation import tsv

    rows = tsv.read_rows(path, ("index", "question", "answer"))
    by_index = {row["index"]: row for row in rows}
    for row in rows:
        if ids is not None and row["index"] not in ids:
            continue
        at = tsv.where(path, row)
        options = tsv.cell_list(row.get("choices", "") or "[]", "choices", at)
        yield {
            "id": row["index"],
            "question": row["question"],
            "options": options,
            "answer": row["answer"].strip(),
            "subject": row.get("category") or row.get("subject") or "",
            "level": row.get("level") if tsv.present(row.get("level")) else None,
            "images": tsv.row_images(row, by_index, at),
        }


def _iter_jsonl(path: str, ids: set[str] | None) -> Iterator[dict[str, Any]]:
    base = Path(path).parent
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{line_no}: not valid JSON") from None
        qid = str(item["id"])
        if ids is not None and qid not in ids:
            continue
        image = item.get("image")
        images = []
        if image:
            found = next((p for p in (base / image, base.parent / image) if p.is_file()), None)
            if found is None:
                raise UserError(f"{path}:{line_no} (id {qid}): image {image} not found beside the file or its parent")
            images = [str(found)]
        yield {"id": qid, "question": item["question"], "options": [str(o) for o in item.get("options") or []],
               "answer": str(item["answer"]).strip(), "subject": item.get("subject", ""),
               "level": item.get("level"), "images": images}  # fmt: skip


def prompt_text(problem: dict[str, Any], style: str) -> str:
    if style == "upstream":
        return problem["question"]
    options = problem["options"]
    listed = ""
    if options and options != BARE:
        listed = "".join(f"({chr(ord('A') + i)}) {o}\n" for i, o in enumerate(options))
    return f"{OFFICIAL_INSTRUCTION}\n{problem['question']}\n{listed}"


def _cot(options: Options) -> str | None:
    return (options.cot_prompt or COT) if options.use_cot else None


def _conversation(options: Options, problem: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    images = [{"type": "image", "image": image} for image in problem["images"]]
    text = prompt_text(problem, options.prompt) + (_cot(options) or "")
    return [{"role": "user", "content": [*images, {"type": "text", "text": text}]}]


def _record(options: Options, problem: dict[str, Any], conversation: Any, text: Any, run: Run) -> dict:
    return {k: problem[k] for k in ("id", "question", "options", "answer", "subject", "level")} | {
        "response": strip_reasoning(text), "raw_response": str(text), "prompt": options.prompt}  # fmt: skip


def _ids(options: Options) -> list[str]:
    path = data_path(options)
    if path.endswith(".jsonl"):
        return [p["id"] for p in iter_problems(path)]  # images are paths there: nothing is decoded
    from qwenvl.evaluation import tsv

    return [row["index"] for row in tsv.read_rows(path, ("index", "question", "answer"))]


# ----------------------------------------------------------------------------------------------- official scoring


def score_official(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        extracted = official_extract(r["response"])
        gold = r["answer"]
        value = ""
        if r["options"] and len(gold) == 1 and gold in "ABCDE" and ord(gold) - ord("A") < len(r["options"]):
            value = r["options"][ord(gold) - ord("A")]  # compared raw, as MATH-V ("$18$" reads as 18)
        correct = is_equal(extracted, gold) or (bool(value) and is_equal(extracted, value))
        out.append({"id": r["id"], "subject": r.get("subject"), "level": r.get("level"), "answer": gold,
                    "extracted": extracted, "method": "rule", "correct": correct})  # fmt: skip
    return out


def score_upstream(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from qwenvl.scoring.mcq import can_infer

    out = []
    for r in records:
        if r["options"]:
            choices = {chr(ord("A") + i): o for i, o in enumerate(r["options"])}
            letter = can_infer(r["response"], choices, "upstream")
            extracted, resolved = letter or "", letter is not None
            correct = resolved and letter == r["answer"]
        else:
            extracted = r["response"]
            resolved = is_equal(extracted, r["answer"], decimals=None)
            correct = resolved
        out.append({"id": r["id"], "subject": r.get("subject"), "level": r.get("level"), "answer": r["answer"],
                    "extracted": extracted, "method": "rule" if resolved else "unresolved", "correct": correct})  # fmt: skip
    return out


def aggregate(scored: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Overall and per subject; officially also per level and per subject and level (MATH-V's report)."""
    report: dict[str, Any] = {"overall": accuracy(scored)}
    keys: dict[str, Any] = {"subject": lambda r: r.get("subject")}
    if mode == "official":
        keys["level"] = lambda r: f"level{r['level']}" if r.get("level") not in (None, "") else None
        keys["subject_level"] = lambda r: (f"{r['subject']}_level{r['level']}"
                                           if r.get("subject") and r.get("level") not in (None, "") else None)  # fmt: skip
    for name, key in keys.items():
        groups = grouped(scored, key)
        if groups:
            report[name] = groups
    report["methods"] = extraction_methods(scored)
    return report


def format_report(report: dict[str, Any]) -> str:
    o = report["overall"]
    lines = [f"{'all':44} {o['correct']:>5}/{o['num']:<5} {100 * o['acc']:6.2f}% {ci_text(o, 100, 1)} (95% CI)"]
    for key in ("subject", "level", "subject_level"):
        for name, s in report.get(key, {}).items():
            lines.append(f"  {name:42} {s['correct']:>5}/{s['num']:<5} {100 * s['acc']:6.2f}% {ci_text(s, 100, 1)}")
    lines.append("extraction: " + ", ".join(f"{m} {n}" for m, n in report["methods"].items()))
    return "\n".join(lines)


def from_upstream(line: dict[str, Any]) -> dict[str, Any]:
    """A record of upstream's ``run_mathv.py infer`` (the whole TSV row in ``annotation``) as ours."""
    from qwenvl.evaluation import tsv

    row = line["annotation"]
    at = f"upstream record {line['question_id']}"
    return {"id": str(row["index"]), "question": row["question"],
            "options": [str(o) for o in tsv.cell_list(str(row.get("choices") or "[]"), "choices", at)],
            "answer": str(row["answer"]).strip(), "subject": row.get("category") or row.get("subject") or "",
            "level": row.get("level") if tsv.present(row.get("level")) else None, **upstream_result(line)}  # fmt: skip


def _judge(judge: Any, options: Any, records: list[dict[str, Any]], scored: list[dict[str, Any]],
           context: Any) -> JudgeResult:  # fmt: skip
    """Upstream's judge stage: an LLM extracts the answer of what the rules could not read; it is then compared
    like a rule result."""
    from qwenvl.scoring.mcq import can_infer

    by_id = {r["id"]: r for r in records}
    targets = [s for s in scored if options.judge == "all" or not s["correct"]]
    replies = judge.extract_all([(s["id"], by_id[s["id"]]["question"], by_id[s["id"]]["response"]) for s in targets])
    changed = 0
    for s, reply in zip(targets, replies):
        r = by_id[s["id"]]
        if r["options"]:
            choices = {chr(ord("A") + i): o for i, o in enumerate(r["options"])}
            letter = can_infer(reply, choices, "upstream")
            correct = letter == r["answer"]
        else:
            correct = is_equal(reply, r["answer"], decimals=None if context.mode == "upstream" else 2)
        changed += correct != s["correct"]
        s.update(extracted=reply, method="judge", correct=correct)
    return JudgeResult({"model": options.judge_model, "rechecked": len(targets), "changed": changed,
                        "requests": judge.requests})  # fmt: skip


BENCHMARK = Benchmark(
    name="mathvision",
    description="MathVision (MATH-V): competition maths with images",
    doc=__doc__,
    tool="run_mathv.py",
    options=Options,
    question_ids=_ids,
    rows=lambda options, ids: iter_problems(data_path(options), ids),
    conversation=_conversation,
    record=_record,
    settings=lambda options: {"data_file": data_path(options), "prompt": options.prompt, "cot": _cot(options)},
    answer_settings=("prompt", "cot"),
    limit_flags=("--limit", "--num-samples"),
    limit_help="the first N problems only",
    pixels=PixelPolicy(image={"min_pixels": UPSTREAM_MIN_PIXELS, "max_pixels": UPSTREAM_MAX_PIXELS}),
    presets=PRESETS,
    scoring={
        "official": Scoring(
            "MATH-V's evaluate.py (the numbers to compare with papers)",
            lambda records, context: score_official(records),
            lambda scored, context: aggregate(scored, "official"),
            lambda report, context: format_report(report),
        ),
        "upstream": Scoring(
            "upstream Qwen3-VL's rule stage (and its judge with --judge)",
            lambda records, context: score_upstream(records),
            lambda scored, context: aggregate(scored, "upstream"),
            lambda report, context: format_report(report),
        ),
    },  # fmt: skip
    from_upstream=from_upstream,
    judge=_judge,
    judge_unread="the answers the rules cannot read (upstream's GPT-4o stage)",
)


def main(argv: list[str] | None = None) -> int:
    return command.main(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
