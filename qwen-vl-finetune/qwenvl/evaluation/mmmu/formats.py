"""Result files in the official MMMU layouts, in and out.

In (scored by ``eval`` / ``compare`` besides our JSONL):

* the official ``output.json`` of one subject (``run_llava.py``): a list of samples with ``id``,
  ``question_type``, ``answer``, ``all_choices``, ``index2ans``, ``response``; or a folder of
  ``<Subject>/output.json`` files (what ``main_parse_and_eval.py`` reads);
* the official ``{id: prediction}`` file (``total_val_output.json``, what ``main_eval_only.py`` and the test-split
  submission server take), with the gold answers from ``--answers answer_dict_val.json``
  (``{id: {"question_type", "ground_truth"}}``): multiple-choice predictions are letters compared as they are, open
  predictions are parsed, as ``main_eval_only.py`` does.

Out (``export``): the ``{id: prediction}`` file: for a multiple-choice question the letter the official parser
reads (with its seeded guess when it reads none, as the official run writes it), for an open question the answer
text, which the official evaluation and the submission server parse themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwenvl.evaluation.mmmu.scoring import Question, ScoringInputError, parse_gold, subject_of, validate_line


def _samples_to_questions(samples: list[Any], source: str, start: int = 0) -> list[Question]:
    questions = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or "id" not in sample:
            raise ScoringInputError(f"{source}: item {i + 1} is not an official sample (a dict with 'id')")
        qid = sample["id"]
        for key in ("question_type", "answer", "response"):
            if key not in sample:
                raise ScoringInputError(f"{qid}: {source} lacks {key!r} (official samples have id, question_type, "
                                        "answer, all_choices, index2ans, response)")  # fmt: skip
        options: list[str] = []
        if sample["question_type"] == "multiple-choice":
            choices, index2ans = sample.get("all_choices") or [], sample.get("index2ans") or {}
            options = [str(index2ans.get(c, "")) for c in choices]
        line = {"id": qid, "question_type": sample["question_type"], "options": options,
                "answer": sample["answer"], "response": str(sample["response"])}  # fmt: skip
        questions.append(validate_line(line, start + i))
    return questions


def _predictions_to_questions(predictions: dict[str, Any], answers_path: str | None, source: str) -> list[Question]:
    if not answers_path:
        raise ScoringInputError(
            f"{source} is an {{id: prediction}} file: pass --answers answer_dict_val.json (the official gold answers, "
            "{id: {question_type, ground_truth}}) to score it"
        )
    try:
        answers = json.loads(Path(answers_path).read_text())
    except (OSError, ValueError) as e:
        raise ScoringInputError(f"--answers {answers_path}: cannot read it as JSON ({e})") from None
    questions = []
    for i, (qid, prediction) in enumerate(predictions.items()):
        gold = answers.get(qid)
        if not isinstance(gold, dict) or "ground_truth" not in gold:
            raise ScoringInputError(f"{qid}: not in --answers {answers_path}; give the gold file of this split")
        qtype = gold.get("question_type", "multiple-choice")
        qtype = "multiple-choice" if qtype == "multiple-choice" else "open"
        response = prediction if isinstance(prediction, str) else json.dumps(prediction)
        questions.append(
            Question(qid, subject_of(qid), qtype, [], parse_gold(gold["ground_truth"], qid), response, i, given=True)
        )
    return questions


def load_official(path: Path, answers: str | None = None) -> list[Question] | None:
    """Questions from a file or folder in an official layout, or None when ``path`` is not one (our JSONL)."""
    if path.is_dir():
        files = sorted(path.glob("*/output.json")) or sorted(path.glob("output.json"))
        if not files:
            raise ScoringInputError(
                f"{path}: a folder, but with no <Subject>/output.json files of the official layout"
            )
        questions: list[Question] = []
        for file in files:
            samples = json.loads(file.read_text())
            if not isinstance(samples, list):
                raise ScoringInputError(f"{file}: expected a list of official samples")
            questions += _samples_to_questions(samples, str(file), len(questions))
        return questions
    if path.suffix != ".json":
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ScoringInputError(f"{path}: not valid JSON ({e}); results files of infer are .jsonl") from None
    if isinstance(data, list):
        return _samples_to_questions(data, str(path))
    if isinstance(data, dict):
        return _predictions_to_questions(data, answers, str(path))
    raise ScoringInputError(f"{path}: neither a list of official samples nor an {{id: prediction}} object")


def export_predictions(records: list[dict[str, Any]], questions: list[Question]) -> dict[str, Any]:
    """The official ``{id: prediction}`` object from scored records (see the module doc)."""
    by_id = {q.id: q for q in questions}
    out: dict[str, Any] = {}
    for record in records:
        q = by_id[record["id"]]
        out[q.id] = record["parsed"] if q.is_mc else q.response
    return out
