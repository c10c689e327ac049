"""MMMU-Pro (``MMMU/MMMU_Pro``): inference and the official scoring, in its two settings.

Run::

    qwenvl eval mmmu_pro infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir MMMU_Pro --setting standard \\
        --output-file out/mmmu_pro_standard.jsonl [--prompt direct|cot] [--preset instruct|think]
    qwenvl eval mmmu_pro eval --input-file out/mmmu_pro_standard.jsonl --output-file out/scores.json

Data (``--data-dir``): a local copy of the dataset repository (``standard (10 options)/test-*.parquet``,
``vision/test-*.parquet``), as ``huggingface-cli download MMMU/MMMU_Pro --repo-type dataset --local-dir
MMMU_Pro`` writes it; nothing is downloaded here. 1730 questions per setting, 30 subjects.

The official protocol (the MMMU repository's ``mmmu-pro/``: ``prompts.yaml``, ``infer/``, ``evaluate.py``):

* ``standard``: the question, then the options as ``A. text`` lines (up to 10), then the instruction; every
  ``<image n>`` tag (in the question or an option) becomes ``[image]`` and ``image_n`` is sent, in the order of the
  tags; the text comes before the images;
* ``vision``: the question and options are inside one screenshot or photo; the text is the instruction alone;
* instructions: ``direct`` (default) "Answer with the option letter from the given choices directly." (vision adds
  the "Answer: $LETTER" line format), ``cot`` the step-by-step wording of ``prompts.yaml``;
* scoring: the letter after the last "Answer:" when exactly one option letter is there; else MMMU's parser
  extended with bare ``X `` and ``X.`` passes and the option texts (for answers of more than 5 words), the last
  mention winning; an answer nothing reads is a random letter (``official``, from one ``random.Random(42)``
  stream in file order: the official code draws unseeded) or wrong (``strict``). Accuracy overall, per
  discipline and per subject, with the 95% interval; the guesses are counted.

Pixels: the checkpoint's saved budget (``--min-pixels`` / ``--max-pixels`` override it).
"""

from __future__ import annotations

import ast
import io
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from qwenvl.cli import UserError
from qwenvl.evaluation import command
from qwenvl.evaluation.benchmark import Benchmark, PixelPolicy, Run, Scoring, option
from qwenvl.evaluation.reports import accuracy, extraction_methods, grouped
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.evaluation.stats import ci_text
from qwenvl.inference.base import strip_reasoning


SETTINGS = {"standard": "standard (10 options)", "vision": "vision"}
INSTRUCTIONS = {  # prompts.yaml
    ("direct", "standard"): "Answer with the option letter from the given choices directly.",
    ("direct", "vision"): "Answer with the option letter from the given choices directly. The last line of your "
    "response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options.",
    ("cot", "standard"): "Answer the preceding multiple choice question. The last line of your response should be of "
    "the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by step "
    "before answering.",
    ("cot", "vision"): "Write out the multiple-choice question in the image and then solve it. The last line of your "
    "response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. "
    "Think step by step before answering.",
}
SCORING = {
    "official": "MMMU-Pro's evaluate.py (an answer nothing reads is a seeded random letter)",
    "strict": "the same reading, an answer nothing reads is wrong",
}
PRESETS = upstream_presets(default_tokens=1024, think_temperature=0.6, think_tokens=32768)
IMAGE_TAG = re.compile(r"<image\s+(\d+)>")


# ----------------------------------------------------------------------------------------------- data


def parquet_files(data_dir: str, setting: str) -> list[Path]:
    """The setting's parquet files: ``<data-dir>/<config>/*.parquet`` (the hub layout), or ``<data-dir>/*.parquet``."""
    root = Path(data_dir)
    for folder in (root / SETTINGS[setting], root):
        files = sorted(folder.glob("*.parquet"))
        if files:
            return files
    raise UserError(f"--data-dir {data_dir} has no '{SETTINGS[setting]}/*.parquet'; download the dataset there "
                    "(huggingface-cli download MMMU/MMMU_Pro --repo-type dataset --local-dir DIR)")  # fmt: skip


def _options(raw: Any, qid: str) -> list[str]:
    if isinstance(raw, list):
        return [str(o) for o in raw]
    try:
        options = ast.literal_eval(str(raw))
    except (ValueError, SyntaxError):
        raise UserError(f"{qid}: options {str(raw)[:80]!r} is not a list literal") from None
    if not isinstance(options, list):
        raise UserError(f"{qid}: options must be a list, got {type(options).__name__}")
    return [str(o) for o in options]


def _image(cell: Any, qid: str) -> Any:
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise UserError(f"{qid}: an image the question refers to is empty")
    return Image.open(io.BytesIO(data))


def prompt_text(row: dict[str, Any], setting: str, mode: str) -> tuple[str, list[int]]:
    """The text sent and, for ``standard``, the image numbers in the order of their tags."""
    instruction = INSTRUCTIONS[(mode, setting)]
    if setting == "vision":
        return instruction, []
    options = "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(row["options"]))
    text = f"{row['question']}\n{options}\n{instruction}"
    return IMAGE_TAG.sub("[image]", text), [int(n) for n in IMAGE_TAG.findall(text)]


def iter_rows(data_dir: str, setting: str, ids: set[str] | None = None, images: bool = True) -> Iterator[dict]:
    """Questions as ``{id, question, options, answer, subject, images}`` in file order (images decoded only for
    the ``ids`` asked, and only with ``images``)."""
    import pyarrow.parquet as pq

    seen: set[str] = set()
    for file in parquet_files(data_dir, setting):
        for raw in pq.read_table(file).to_pylist():
            qid = str(raw.get("id", ""))
            if not qid or "options" not in raw or "answer" not in raw:
                raise UserError(f"{file}: a row without id / options / answer; is it MMMU-Pro's {SETTINGS[setting]}?")
            if qid in seen:
                raise UserError(f"{file}: id {qid} appears twice")
            seen.add(qid)
            if ids is not None and qid not in ids:
                continue
            row = {"id": qid, "question": str(raw.get("question") or ""), "options": _options(raw["options"], qid),
                   "answer": str(raw["answer"]).strip(), "subject": raw.get("subject") or "", "images": []}  # fmt: skip
            if images:
                if setting == "vision":
                    row["images"] = [_image(raw.get("image"), qid)]
                else:
                    _, order = prompt_text(row, setting, "direct")
                    row["images"] = [_image(raw.get(f"image_{n}"), qid) for n in order]
            yield row


@dataclass
class Options:
    """MMMU-Pro's data and prompt."""

    data_dir: str = option("local copy of MMMU/MMMU_Pro (the setting's parquet files)", required=True)
    setting: Literal["standard", "vision"] = option(
        "standard: question and 10 options as text with the images; vision: a screenshot only", default="standard"
    )
    prompt: Literal["direct", "cot"] = option("prompts.yaml's instruction", default="direct")


def _conversation(options: Options, row: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    text, _ = prompt_text(row, options.setting, options.prompt)
    content = [{"type": "text", "text": text}, *({"type": "image", "image": image} for image in row["images"])]
    return [{"role": "user", "content": content}]


def _record(options: Options, row: dict[str, Any], conversation: Any, text: Any, run: Run) -> dict[str, Any]:
    return {"id": row["id"], "setting": options.setting, "subject": row["subject"], "options": row["options"],
            "answer": row["answer"], "prompt": options.prompt, "response": strip_reasoning(text),
            "raw_response": str(text)}  # fmt: skip


def _ids(options: Options) -> list[str]:
    return [r["id"] for r in iter_rows(options.data_dir, options.setting, images=False)]


# ----------------------------------------------------------------------------------------------- scoring


def parse_answer(response: Any, options: list[str]) -> str | None:
    """The option letter MMMU-Pro's ``evaluate.py`` reads in ``response``; None where it would draw at random."""
    if not isinstance(response, str):
        response = ""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    last = response.rfind("Answer:")
    if last != -1:
        tail = response[last + len("Answer:") :].strip()
        found = [c for c in letters if c in tail]
        if len(found) == 1:
            return found[0]
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "
    candidates = [c for c in letters if f"({c})" in response]
    bracketed, by_text = bool(candidates), False
    if not candidates:
        candidates = [c for c in letters if f"{c} " in response]
    if not candidates:
        candidates = [c for c in letters if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, o in zip(letters, options) if o.lower() in response.lower()]
        by_text = bool(candidates)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        positions = [response.lower().rfind(options[ord(c) - ord("A")].lower()) for c in candidates]
    elif bracketed:
        positions = [response.rfind(f"({c})") for c in candidates]
    else:
        positions = [response.rfind(f" {c} ") for c in candidates]
    return candidates[positions.index(max(positions))]  # the first of equal positions, as numpy's argmax


def score(records: list[dict[str, Any]], mode: str = "official", seed: int = 42) -> list[dict[str, Any]]:
    """Per-question results: the letter read, how (``rule``, ``random``, ``unparsed``), and whether it is right."""
    if mode not in SCORING:
        raise UserError(f"--scoring must be one of {', '.join(SCORING)}, got {mode!r}")
    rng = random.Random(seed)
    out = []
    for r in records:
        letter, method = parse_answer(r["response"], r["options"]), "rule"
        if letter is None:
            letters = [chr(ord("A") + i) for i in range(len(r["options"]))]
            letter, method = (rng.choice(letters), "random") if mode == "official" and letters else ("", "unparsed")
        out.append({"id": r["id"], "subject": r.get("subject"), "answer": r["answer"], "extracted": letter,
                    "method": method, "correct": letter == r["answer"]})  # fmt: skip
    return out


def aggregate(scored: list[dict[str, Any]]) -> dict[str, Any]:
    from qwenvl.evaluation.mmmu.scoring import DISCIPLINES

    discipline = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}
    return {"overall": accuracy(scored), "discipline": grouped(scored, lambda r: discipline.get(r.get("subject"))),
            "subject": grouped(scored, lambda r: r.get("subject")), "methods": extraction_methods(scored)}  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'':44} {'num':>5} {'acc':>7} {'95% CI':>16}"]
    lines.append(f"{'Overall':44} {report['overall']['num']:>5} {report['overall']['acc']:>7.3f} "
                 f"{ci_text(report['overall']):>16}")  # fmt: skip
    for key in ("discipline", "subject"):
        for name, s in report[key].items():
            lines.append(f"  {name:42} {s['num']:>5} {s['acc']:>7.3f} {ci_text(s):>16}")
    lines.append("extraction: " + ", ".join(f"{m} {n}" for m, n in report["methods"].items()))
    return "\n".join(lines)


def _mode(mode: str) -> Scoring:
    return Scoring(SCORING[mode], lambda records, context: score(records, mode),
                   lambda scored, context: aggregate(scored), lambda report, context: format_report(report))  # fmt: skip


BENCHMARK = Benchmark(
    name="mmmu_pro",
    description="MMMU-Pro: 10-option and vision-only MMMU (standard / vision)",
    doc=__doc__,
    options=Options,
    question_ids=_ids,
    rows=lambda options, ids: iter_rows(options.data_dir, options.setting, ids),
    conversation=_conversation,
    record=_record,
    settings=lambda options: {"data_dir": options.data_dir, "setting": options.setting, "prompt": options.prompt},
    answer_settings=("setting", "prompt"),
    pixels=PixelPolicy(image=None),  # not one of upstream's benchmarks: its preset keeps the checkpoint's pixels
    presets=PRESETS,
    scoring={mode: _mode(mode) for mode in SCORING},
)


def main(argv: list[str] | None = None) -> int:
    return command.main(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
