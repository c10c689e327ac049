"""MMMU answer parsing and scoring: the official rules (MMMU-Benchmark/MMMU ``eval_utils.py``) re-implemented,
plus ``strict`` and ``lenient`` variants, and the official aggregation.

Modes:

* ``official``: the official parser exactly, including a random letter for an unparsed multiple-choice answer,
  drawn from one ``random.seed(42)`` stream consumed in the official subject order, then question order;
* ``strict``: the official parser, but an unparsed multiple-choice answer is wrong (no guessing);
* ``lenient``: only adds to ``official``: where the official parser finds nothing (and would guess), the answer
  is normalised (markdown emphasis and whitespace removed, a lone lowercase letter upper-cased, ``B)`` / ``B.`` /
  ``Answer: b`` forms accepted) and parsed again; what is still unparsed gets the official random guess (the guess
  stream is consumed exactly as in ``official``, so no other question's guess moves). Every answer the official
  parser reads is scored exactly as ``official`` scores it; an open answer is right if ``official`` finds it
  right or finds it right with markdown removed.

A gold answer that cannot be right (a multiple-choice gold that is not an option letter, an empty one) is reported
per question and counted wrong, as the official code does; the test split's ``?`` golds mark answers that can be
exported for the submission server but not scored here.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from qwenvl.cli import UserError
from qwenvl.evaluation.stats import ci_text, wilson_interval


Scoring = Literal["official", "strict", "lenient"]

# Official order of disciplines and their subjects (DOMAIN_CAT2SUB_CAT).
DISCIPLINES: dict[str, list[str]] = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": [
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": [
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ],
}
# CLI short names (CAT_SHORT2LONG); their order is the order the official evaluation walks the subjects.
SHORT_NAMES: dict[str, str] = {
    "acc": "Accounting", "agri": "Agriculture", "arch": "Architecture_and_Engineering", "art": "Art",
    "art_theory": "Art_Theory", "bas_med": "Basic_Medical_Science", "bio": "Biology", "chem": "Chemistry",
    "cli_med": "Clinical_Medicine", "cs": "Computer_Science", "design": "Design",
    "diag_med": "Diagnostics_and_Laboratory_Medicine", "econ": "Economics", "elec": "Electronics",
    "ep": "Energy_and_Power", "fin": "Finance", "geo": "Geography", "his": "History", "liter": "Literature",
    "manage": "Manage", "mark": "Marketing", "mate": "Materials", "math": "Math", "mech": "Mechanical_Engineering",
    "music": "Music", "phar": "Pharmacy", "phys": "Physics", "psy": "Psychology", "pub_health": "Public_Health",
    "socio": "Sociology",
}  # fmt: skip
SUBJECT_ORDER = list(SHORT_NAMES.values())

_MC_STRIP = [",", ".", "!", "?", ";", ":", "'"]
_KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


class ScoringInputError(UserError):
    """A results line cannot be scored; the message names the question id."""


def subject_of(question_id: str) -> str:
    """``validation_Art_Theory_7`` -> ``Art_Theory``."""
    parts = question_id.split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else question_id


def choice_letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


# ----------------------------------------------------------------------------------------------- multiple choice


@dataclass
class MCParse:
    """A parsed multiple-choice answer; ``letter`` is None when nothing was found (before any guess)."""

    letter: str | None
    how: Literal["bracket", "letter", "content", "none"]


def parse_multi_choice(response: str, all_choices: list[str], index2ans: dict[str, str]) -> MCParse:
    """The official rules, without the random fallback (see :func:`score_multi_choice`)."""
    for char in _MC_STRIP:
        response = response.strip(char)
    response = f" {response} "
    candidates: list[str] = []
    how: Literal["bracket", "letter", "content", "none"] = "none"
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            how = "bracket"
    if not candidates:
        for choice in all_choices:
            if f" {choice} " in response:
                candidates.append(choice)
                how = "letter"
    if not candidates and len(response.split()) > 5:
        lowered = response.lower()
        for letter, text in index2ans.items():
            if text.lower() in lowered:
                candidates.append(letter)
                how = "content"
    if not candidates:
        return MCParse(None, "none")
    if len(candidates) == 1:
        return MCParse(candidates[0], how)

    def last_position(letter: str) -> int:
        if how == "bracket":
            return response.rfind(f"({letter})")
        if how == "letter":
            return response.rfind(f" {letter} ")
        return response.lower().rfind(index2ans[letter].lower())

    positions = [last_position(c) for c in candidates]
    return MCParse(candidates[positions.index(max(positions))], how)  # ties: the first candidate


_LENIENT_PATTERNS = [
    # "Answer: b", "The correct option is (C)."
    re.compile(
        r"^(?:the\s+)?(?:correct\s+|best\s+)?(?:answer|option|choice)\s*(?:is)?\s*:?\s*\(?([A-Za-z])\)?[.)]?$", re.I
    ),
    # "b", "(b)", "B)", "B."
    re.compile(r"^\(?([A-Za-z])\)?[.)]?$"),
    # "B) $7", "b. the second one", "(c) because ..."
    re.compile(r"^\(?([A-Za-z])[.)]\s+\S"),
]


def lenient_normalise(response: str, all_choices: list[str]) -> str:
    """Remove markdown emphasis and surrounding whitespace; map ``b`` / ``B)`` / ``B.`` / ``Answer: b`` / ``B) text``
    to ``B``. Anything else is returned stripped, for the official rules."""
    text = re.sub(r"[*_`]+", "", response).strip()
    for pattern in _LENIENT_PATTERNS:
        match = pattern.match(text)
        if match and match.group(1).upper() in all_choices:
            return match.group(1).upper()
    return text


# ----------------------------------------------------------------------------------------------- open questions


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_answer(text: str) -> list[Any]:
    """Official ``normalize_str``: a number rounded to 2 decimals, or a lower-cased string (1 char -> padded)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


def extract_numbers(text: str) -> list[str]:
    return _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


def parse_open(response: str) -> list[Any]:
    """Official ``parse_open_response``: normalised candidate strings and numbers (a de-duplicated list)."""
    normalised = response.strip().strip(".").lower()
    # The official split's [A-Z] lookahead never matches lower-cased text, so it splits on newlines only.
    subs = re.split(r"\.\s(?=[A-Z])|\n", normalised)
    keys: list[str] = []
    for index, sub in enumerate(subs):
        indicators = _KEY_INDICATORS + (["="] if index == len(subs) - 1 else [])
        shortest: str | None = None
        for indicator in indicators:
            if indicator in sub:
                tail = sub.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            keys.append(shortest)
    if not keys:
        keys = [normalised]
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    out: list[Any] = []
    for c in candidates:
        for value in normalize_answer(c):
            if value not in out:
                out.append(value)
    return out


def eval_open(gold: str | list[str], predictions: list[Any]) -> bool:
    """A string candidate is right if a gold string is a substring of it; a number if it equals a gold number."""
    golds: list[Any] = []
    for g in gold if isinstance(gold, list) else [gold]:
        golds.extend(normalize_answer(str(g)))
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# ----------------------------------------------------------------------------------------------- inputs


def parse_list_literal(value: Any, what: str, qid: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ScoringInputError(
                f"{qid}: {what} {value[:80]!r} is not a list literal like \"['a', 'b']\""
            ) from None
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    raise ScoringInputError(f"{qid}: {what} must be a list or a list-literal string, got {type(value).__name__}")


def parse_gold(answer: Any, qid: str) -> str | list[str]:
    """A gold answer: a letter, a string, a list, or a string holding a list literal (kept raw if it does not parse)."""
    if isinstance(answer, list):
        return [str(a) for a in answer]
    if not isinstance(answer, str):
        if isinstance(answer, (int, float)):
            return str(answer)
        raise ScoringInputError(f"{qid}: answer must be a string or a list, got {type(answer).__name__}")
    if answer.startswith("["):
        try:
            parsed = ast.literal_eval(answer)
            if isinstance(parsed, list):
                return [str(a) for a in parsed]
        except (ValueError, SyntaxError):
            pass
    return answer


@dataclass
class Question:
    """One results line, validated."""

    id: str
    subject: str
    question_type: str
    options: list[str]
    answer: str | list[str]
    response: str
    order: int
    extra: dict[str, Any] = field(default_factory=dict)
    gold_problem: str | None = None  # why this question's gold answer cannot be scored (counted wrong)
    given: bool = False  # the response is already the prediction (an official {id: prediction} file): not parsed

    @property
    def is_mc(self) -> bool:
        return self.question_type == "multiple-choice"


def validate_line(line: dict[str, Any], order: int) -> Question:
    qid = line.get("id")
    if not isinstance(qid, str) or not qid:
        raise ScoringInputError(f"line {order + 1}: missing 'id'")
    for key in ("question_type", "answer", "response"):
        if key not in line:
            raise ScoringInputError(
                f"{qid}: missing field {key!r} (need id, question_type, answer, options, response)"
            )
    qtype = str(line["question_type"])
    options = parse_list_literal(line.get("options", "[]"), "options", qid)
    answer = parse_gold(line["answer"], qid)
    problem = None
    if answer in ("?", "", []):
        problem = "no gold answer (test split: export it for the submission server)"
    elif qtype == "multiple-choice":
        if not options:
            raise ScoringInputError(f"{qid}: a multiple-choice question needs options")
        letters = choice_letters(len(options))
        bad = [g for g in (answer if isinstance(answer, list) else [answer]) if g not in letters]
        if bad:
            problem = f"answer {bad[0]!r} is not one of the option letters {''.join(letters)} ({len(options)} options)"
    response = line["response"]
    if not isinstance(response, str):
        raise ScoringInputError(f"{qid}: response must be a string, got {type(response).__name__}")
    subject = line.get("subject") or subject_of(qid)
    return Question(qid, subject, qtype, options, answer, response, order, line, problem)


def official_order(questions: list[Question]) -> list[Question]:
    """Subject order of the official evaluation, then question number (the dataset order), then file order."""
    rank = {s: i for i, s in enumerate(SUBJECT_ORDER)}

    def number(q: Question) -> int:
        tail = q.id.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else 1 << 30

    return sorted(questions, key=lambda q: (rank.get(q.subject, len(rank)), q.subject, number(q), q.order))


# ----------------------------------------------------------------------------------------------- scoring


def score(questions: list[Question], mode: Scoring = "official", seed: int = 42) -> list[dict[str, Any]]:
    """Per-question records (parsed answer, correct, random guess, unparsed, gold problem), in the official order."""
    if mode not in ("official", "strict", "lenient"):
        raise UserError(f"--scoring must be official, strict or lenient, got {mode!r}")
    rng = random.Random(seed)
    records = []
    for q in official_order(questions):
        record: dict[str, Any] = {
            "id": q.id,
            "subject": q.subject,
            "question_type": q.question_type,
            "answer": q.answer,
            "empty": not q.response.strip(),  # no answer at all (an empty reply from the model or server)
        }
        golds = q.answer if isinstance(q.answer, list) else [q.answer]
        if q.given and q.is_mc:  # main_eval_only: the prediction is the letter
            record.update(parsed=q.response, parse_method="given", unparsed=False, random_guess=False,
                          correct=q.response in golds)  # fmt: skip
        elif q.is_mc:
            letters = choice_letters(len(q.options))
            index2ans = dict(zip(letters, q.options))
            parsed = parse_multi_choice(q.response, letters, index2ans)
            unparsed = parsed.letter is None
            # The official stream draws once per officially unparsed answer, in every mode that guesses.
            drawn = rng.choice(letters) if unparsed and mode != "strict" else None
            letter, how, guess = parsed.letter, parsed.how, False
            if unparsed and mode == "lenient":
                recovered = parse_multi_choice(lenient_normalise(q.response, letters), letters, index2ans)
                if recovered.letter is not None:
                    letter, how, unparsed = recovered.letter, "lenient", False
            if letter is None and drawn is not None:
                letter, guess = drawn, True
            record.update(
                parsed=letter,
                parse_method=how,
                unparsed=unparsed,
                random_guess=guess,
                correct=letter is not None and letter in golds,
            )
        else:
            predictions = parse_open(q.response)
            correct = eval_open(q.answer, predictions)
            if mode == "lenient" and not correct:
                cleaned = parse_open(re.sub(r"[*_`]+", "", q.response).strip())
                if eval_open(q.answer, cleaned):
                    predictions, correct = cleaned, True
            record.update(parsed=predictions, parse_method="open", unparsed=False, random_guess=False, correct=correct)
        if q.gold_problem is not None:
            record.update(correct=False, gold_problem=q.gold_problem)
        records.append(record)
    return records


def _acc(records: list[dict[str, Any]]) -> float:
    return sum(r["correct"] for r in records) / len(records) if records else 0.0


def split_of(question_id: str) -> str:
    """``validation_Art_1`` -> ``validation`` (dev, validation or test)."""
    return question_id.split("_", 1)[0]


KNOWN_SUBJECTS = {s for subs in DISCIPLINES.values() for s in subs}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per subject, per discipline (instance-weighted, official order, every discipline even without questions)
    and overall, as the official code computes them: questions of unknown subjects are reported apart and left
    out of Overall. Accuracies are kept unrounded (the table rounds once, to 3 places, as the official print)."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_subject.setdefault(r["subject"], []).append(r)

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "num": len(rs),
            "acc": _acc(rs),
            "ci95": wilson_interval(sum(bool(r["correct"]) for r in rs), len(rs)),
            "random_guesses": sum(r["random_guess"] for r in rs),
            "unparsed": sum(r["unparsed"] for r in rs),
        }

    subjects = {s: summary(rs) for s, rs in by_subject.items()}
    disciplines = {
        discipline: summary([r for s in subs for r in by_subject.get(s, [])])
        for discipline, subs in DISCIPLINES.items()
    }
    known = [r for r in records if r["subject"] in KNOWN_SUBJECTS]
    unknown = sorted(s for s in by_subject if s not in KNOWN_SUBJECTS)
    splits = {}
    for r in known:
        splits.setdefault(split_of(r["id"]), []).append(r)
    open_rs = [r for r in known if r["question_type"] != "multiple-choice"]
    mc_rs = [r for r in known if r["question_type"] == "multiple-choice"]
    return {
        "overall": summary(known),
        "multiple_choice": summary(mc_rs),
        "open": summary(open_rs),
        "disciplines": disciplines,
        "subjects": subjects,
        "splits": {k: summary(v) for k, v in sorted(splits.items())},
        "unknown_subjects": {s: len(by_subject[s]) for s in unknown},
        "gold_problems": {r["id"]: r["gold_problem"] for r in records if r.get("gold_problem")},
        "empty_responses": empty_responses(records),
    }


def empty_responses(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many answers are empty, how many of those the scoring turned into random guesses, and their ids."""
    empty = [r for r in records if r.get("empty")]
    return {
        "num": len(empty),
        "random_guesses": sum(r["random_guess"] for r in empty),
        "ids": [r["id"] for r in empty],
    }


def format_report(report: dict[str, Any]) -> str:
    """The official table layout: each discipline's overall (with 0 when it has no questions), then its subjects;
    then Overall. Accuracies rounded once, to 3 places, as the official print."""
    lines = [f"{'':44} {'num':>5} {'acc':>7} {'guesses':>8} {'unparsed':>9} {'95% CI':>16}"]

    def row(name: str, s: dict[str, Any]) -> str:
        return (f"{name:44} {s['num']:>5} {round(s['acc'], 3):>7.3f} {s['random_guesses']:>8} {s['unparsed']:>9} "
                f"{ci_text(s):>16}")  # fmt: skip

    for discipline, subs in DISCIPLINES.items():
        lines.append(row(f"Overall-{discipline}", report["disciplines"][discipline]))
        for subject in subs:
            if subject in report["subjects"]:
                lines.append(row(f"  {subject}", report["subjects"][subject]))
    lines.append(row("Overall", report["overall"]))
    lines.append(row("  multiple-choice", report["multiple_choice"]))
    lines.append(row("  open", report["open"]))
    if len(report["splits"]) > 1:
        lines.append("warning: the results mix splits, scored together above; per split:")
        lines += [row(f"  {split}", s) for split, s in report["splits"].items()]
    if report["unknown_subjects"]:
        named = ", ".join(f"{s} ({n})" for s, n in report["unknown_subjects"].items())
        lines.append(f"warning: questions of unknown subjects, left out of Overall as the official code does: {named}")
    empty = report.get("empty_responses") or {"num": 0}
    if empty["num"]:
        guessed = f", {empty['random_guesses']} of them given a random guess" if empty["random_guesses"] else ""
        lines.append(
            f"warning: {empty['num']} empty answer(s) (no text from the model or server), scored as unreadable"
            f"{guessed}: {', '.join(empty['ids'][:10])}{' ...' if empty['num'] > 10 else ''}"
        )
    if report["gold_problems"]:
        lines.append(
            f"warning: {len(report['gold_problems'])} question(s) with an unusable gold answer, counted wrong:"
        )
        lines += [f"  {qid}: {why}" for qid, why in list(report["gold_problems"].items())[:20]]
    return "\n".join(lines)
