"""MMMU: the official parser on the documented edge cases, the seeded guess stream, strict/lenient modes, input
validation, data layouts, and infer -> eval end to end on a generated dataset with a tiny checkpoint (resume too).

MMMU is called in-process through the runner's typed API (its ``Options``, ``BackendConfig``, ``InferOptions``);
only what needs a real command line runs ``run_mmmu.py``: the torchrun shards, ``--data-parallel-size``, one
infer + eval round trip at upstream's path, and the one-line error of a user's mistake."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from qwenvl.cli import UserError
from qwenvl.evaluation import runner
from qwenvl.evaluation.benchmark import InferOptions, JudgeOptions
from qwenvl.evaluation.mmmu.cli import BENCHMARK as MMMU
from qwenvl.evaluation.mmmu.cli import EvalOptions, Options
from qwenvl.evaluation.mmmu.data import build_messages, iter_questions, prompt_text
from qwenvl.evaluation.mmmu.scoring import (
    ScoringInputError,
    aggregate,
    eval_open,
    format_report,
    lenient_normalise,
    parse_multi_choice,
    parse_open,
    score,
    validate_line,
)
from qwenvl.inference.config import BackendConfig
from qwenvl.model.budget import TRAINING_BUDGET
from qwenvl.model.preprocessing import PreprocessingSettings, save_preprocessing


RUN_MMMU = Path(__file__).resolve().parents[2] / "evaluation" / "mmmu" / "run_mmmu.py"
OPTIONS = ["$6", "$7", "$8", "$9"]
LETTERS = ["A", "B", "C", "D"]
INDEX2ANS = dict(zip(LETTERS, OPTIONS))


@pytest.mark.parametrize(
    "response, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("Answer: B", "B"),
        ("The answer is (B)", "B"),
        ("DNA B", "B"),
        ("I think the answer is $8 because it fits", "C"),
        ("A and B are wrong, so C", "C"),
        ("(A) is wrong; (C) is right", "C"),
        ("(B)(D)", "D"),
        ("?!B,.", None),  # the strips run one character at a time, in order: "!B," is left, no " B "
        ("B\n", None),
        ("Answer: C.\n", None),
        ("**B**", None),
        ("b", None),
        ("B) $7", None),
        ("The correct option is $8", None),  # exactly 5 tokens: the option-text pass does not run
        ("", None),
    ],
)
def test_official_multi_choice_parser(response, expected):
    assert parse_multi_choice(response, LETTERS, INDEX2ANS).letter == expected


def test_content_match_ties_resolve_to_first_candidate_and_last_occurrence():
    index2ans = {"A": "cat", "B": "dog"}
    assert parse_multi_choice("it is a dog not a cat here", ["A", "B"], index2ans).letter == "A"
    assert parse_multi_choice("it is a cat not a dog here", ["A", "B"], index2ans).letter == "B"


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("The answer is 42.", "42", True),
        ("42.001", "42", True),  # rounded to 2 decimals
        ("1.055", "1.06", False),  # round(1.055, 2) == 1.05 in binary floating point
        ("so the result = 3,000", "3000", True),
        ("The city is Tampa", ["Tampa", "Florida"], True),
        ("Tampa is the city", ["Tampa", "Florida"], False),  # the key part is the tail after "is "
        ("it is florida", "['Tampa', 'Florida']", True),
        ("MgS", "['$MgS$', 'MgS']", True),
        ("The answer is C", "C", True),  # one-char key and gold are both padded to " c" / "c "
        ("the answer is chloride", "C", False),  # so a one-char gold does not match inside a word
        ("answer: x is c here", "C", True),
        ("first line\nthe value is 24/7", "24/7", True),
        ("nothing useful", "5", False),
    ],
)
def test_official_open_parser(response, gold, correct):
    line = {"id": "validation_Math_1", "question_type": "open", "answer": gold, "options": "[]", "response": response}
    q = validate_line(line, 0)
    assert eval_open(q.answer, parse_open(q.response)) is correct


def test_open_parser_quirks():
    assert 0.0 in parse_open("about 3,000 units")  # the simple-number regex also reads "000"
    assert parse_open("") == [""]
    # The sentence split never fires on lower-cased text: one sub-response, its key is the tail after the last "is ".
    assert parse_open("a is b. Then c is d") == [" d", "d "]
    assert sorted(map(str, parse_open("a is b\nThen c is d"))) == [" b", " d", "b ", "d "]


def _mc(qid: str, response: str, answer: str = "A", n: int = 4) -> dict:
    return {"id": qid, "question_type": "multiple-choice", "answer": answer, "options": str([f"o{i}" for i in range(n)]),
            "response": response}  # fmt: skip


def test_official_random_guesses_follow_one_seeded_stream_in_subject_then_question_order():
    lines = [
        _mc("validation_Physics_2", "no idea", n=5),
        _mc("validation_Accounting_10", "???", n=4),
        _mc("validation_Accounting_2", "hmm", n=9),
        _mc("validation_Agriculture_1", "B", n=2),
        _mc("validation_Physics_1", "dunno", n=3),
    ]
    rng = random.Random(42)
    # Official order: Accounting, Agriculture, ..., Physics; inside a subject by question number.
    expected = {
        "validation_Accounting_2": rng.choice(list("ABCDEFGHI")),
        "validation_Accounting_10": rng.choice(list("ABCD")),
        "validation_Physics_1": rng.choice(list("ABC")),
        "validation_Physics_2": rng.choice(list("ABCDE")),
    }
    for order in (lines, list(reversed(lines))):
        records = {r["id"]: r for r in score([validate_line(x, i) for i, x in enumerate(order)], "official")}
        assert {k: records[k]["parsed"] for k in expected} == expected
        assert all(records[k]["random_guess"] for k in expected)
        assert (
            records["validation_Agriculture_1"]["parsed"] == "B"
            and not records["validation_Agriculture_1"]["random_guess"]
        )
    strict = {r["id"]: r for r in score([validate_line(x, i) for i, x in enumerate(lines)], "strict")}
    assert all(strict[k]["parsed"] is None and not strict[k]["correct"] and strict[k]["unparsed"] for k in expected)


@pytest.mark.parametrize(
    "response", ["**B**", "b", "B) $7", "B\n", "Answer: b", " (b) ", "B.", "The answer is **B**."]
)
def test_lenient_accepts_common_forms(response):
    q = validate_line(_mc("validation_Art_1", response, answer="B"), 0)
    [record] = score([q], "lenient")
    assert record["parsed"] == "B" and record["correct"] and not record["random_guess"]


def test_lenient_does_not_invent_answers():
    assert lenient_normalise("I think so", LETTERS) == "I think so"
    assert lenient_normalise("Perhaps (E)", LETTERS) == "Perhaps (E)"
    # Still unparsed after normalising: the official guess, from the same stream.
    q = validate_line(_mc("validation_Art_1", "no idea at all", answer="B"), 0)
    [lenient], [official] = score([q], "lenient"), score([q], "official")
    assert lenient["unparsed"] and lenient["random_guess"] and lenient["parsed"] == official["parsed"]


@pytest.mark.parametrize(
    "response, letter",
    [("(B) is wrong; (C) is right", "C"), ("A. Both (A) and (B)", "B"), ("B) no, (D) yes", "D"), ("b", "B")],
)
def test_lenient_never_overrides_a_deterministic_official_parse(response, letter):
    q = validate_line(_mc("validation_Art_1", response, answer="C"), 0)
    [lenient] = score([q], "lenient")
    [official] = score([q], "official")
    assert lenient["parsed"] == letter
    if not official["random_guess"]:
        assert official["parsed"] == lenient["parsed"] and official["correct"] == lenient["correct"]


def test_lenient_only_adds_and_keeps_the_guess_stream():
    responses = ["**B**", "no idea", "(A)", "I pick c.", "b", "hmm", "C", "D) 7", "???", "Answer: d"]
    lines = [_mc(f"validation_Art_{i + 1}", r, answer="ABCD"[i % 4]) for i, r in enumerate(responses)]
    qs = [validate_line(x, i) for i, x in enumerate(lines)]
    official = {r["id"]: r for r in score(qs, "official")}
    lenient = {r["id"]: r for r in score(qs, "lenient")}
    for qid, o in official.items():
        if not o["random_guess"]:
            assert lenient[qid]["parsed"] == o["parsed"], qid  # deterministic outcomes unchanged
        elif lenient[qid]["random_guess"]:
            assert lenient[qid]["parsed"] == o["parsed"], qid  # the same draw: the stream did not move
    assert sum(r["random_guess"] for r in lenient.values()) < sum(r["random_guess"] for r in official.values())


def test_table_rounds_once_like_the_official_print():
    lines = [_mc(f"validation_Art_{i}", "A" if i <= 112 else "B") for i in range(1, 223)]
    report = aggregate(score([validate_line(x, i) for i, x in enumerate(lines)], "strict"))
    assert report["overall"]["acc"] == 112 / 222  # stored unrounded
    assert "0.505" in format_report(report).splitlines()[-3]  # Overall row: round(0.5045..., 3), not 0.504


def _without_ci(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "ci95"}


def test_unknown_subjects_empty_disciplines_and_mixed_splits():
    lines = [_mc("validation_Art_1", "A"), _mc("validation_Cooking_1", "A"), _mc("dev_Art_1", "B")]
    report = aggregate(score([validate_line(x, i) for i, x in enumerate(lines)], "strict"))
    assert report["overall"]["num"] == 2 and report["unknown_subjects"] == {"Cooking": 1}  # left out of Overall
    assert report["disciplines"]["Business"] == {
        "num": 0,
        "acc": 0.0,
        "random_guesses": 0,
        "unparsed": 0,
        "ci95": [0.0, 1.0],
    }  # no questions: the interval says nothing
    table = format_report(report)
    assert "Overall-Business" in table and "Cooking (1)" in table
    assert set(report["splits"]) == {"dev", "validation"} and "mix splits" in table


def test_bad_gold_is_counted_wrong_and_test_split_is_not_scored(tmp_path):
    lines = [_mc("validation_Art_1", "A"), _mc("validation_Art_2", "A", answer="Z")]
    report = aggregate(score([validate_line(x, i) for i, x in enumerate(lines)], "official"))
    assert _without_ci(report["overall"]) == {"num": 2, "acc": 0.5, "random_guesses": 0, "unparsed": 0}
    assert "validation_Art_2" in report["gold_problems"]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(_mc(f"test_Art_{i}", "A", answer="?")) + "\n" for i in range(3)))
    body = runner.evaluate(MMMU, test, tmp_path / "s.json")
    why = body["unscorable"]  # nothing written, and the reason returned
    assert body["scoring"] == "official" and "nothing to score" in why and "export" in why
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(
    "line, match",
    [
        (
            {"id": "validation_Art_3", "question_type": "multiple-choice", "answer": "A", "response": "A"},
            "validation_Art_3: a multiple-choice question needs options",
        ),
        (
            {"id": "validation_Art_4", "question_type": "open", "options": "[]", "response": "x"},
            "validation_Art_4: missing field 'answer'",
        ),
        (
            {
                "id": "validation_Art_5",
                "question_type": "multiple-choice",
                "answer": "A",
                "options": "A, B",
                "response": "A",
            },
            "validation_Art_5: options 'A, B' is not a list literal",
        ),
        ({"question_type": "open"}, "line 1: missing 'id'"),
    ],
)
def test_malformed_inputs_name_the_question(line, match):
    with pytest.raises(ScoringInputError, match=match):
        validate_line(line, 0)


def test_aggregation_is_instance_weighted_in_official_order():
    lines = [_mc(f"validation_Art_{i}", "A") for i in range(1, 4)] + [_mc("validation_Design_1", "B")]
    lines.append({"id": "validation_Math_1", "question_type": "open", "answer": "5", "options": "[]", "response": "5"})
    report = aggregate(score([validate_line(x, i) for i, x in enumerate(lines)], "strict"))
    assert _without_ci(report["disciplines"]["Art and Design"]) == {"num": 4, "acc": 0.75, "random_guesses": 0,
                                                                    "unparsed": 0}  # fmt: skip
    assert report["overall"]["num"] == 5 and report["overall"]["acc"] == 0.8
    assert _without_ci(report["open"]) == {"num": 1, "acc": 1.0, "random_guesses": 0, "unparsed": 0}
    assert [d for d, s in report["disciplines"].items() if s["num"]] == ["Art and Design", "Science"]


def test_official_prompt_and_interleaving():
    from PIL import Image

    img = Image.new("RGB", (32, 32))
    row = {"id": "validation_Art_1", "question": "Compare <image 1> with <image 2>. Again <image 1>?",
           "options": "['<image 3>', 'no']", "question_type": "multiple-choice", "answer": "A",
           "image_1": img, "image_2": img, "image_3": img, "image_4": None}  # fmt: skip
    text = prompt_text(row, "official")
    assert text == (
        "Compare <image 1> with <image 2>. Again <image 1>?\n(A) <image 3>\n(B) no\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    [message], n = build_messages(row, "official", "interleaved")
    kinds = [item["type"] for item in message["content"]]
    assert n == 3 and kinds == ["text", "image", "text", "image", "text", "image", "text"]
    assert message["content"][4]["text"] == ". Again <image 1>?\n(A) "  # a repeated tag stays text
    [message], _ = build_messages(row, "official", "first")
    assert [i["type"] for i in message["content"]] == ["image", "image", "image", "text"]
    open_row = {**row, "question_type": "open", "options": "[]", "question": "How many?"}
    assert prompt_text(open_row, "official") == "How many?\nAnswer the question using a single word or phrase."
    assert prompt_text(row, "qwen").startswith("Question: Compare <image 1>") and "A. <image 3>\nB. no" in prompt_text(
        row, "qwen"
    )


# ----------------------------------------------------------------------------------------------- end to end


SUBJECTS = {"Art": 4, "Math": 3, "Physics": 3}


def _make_dataset(root: Path) -> list[dict]:
    import datasets
    from PIL import Image

    rows_all = []
    for subject, n in SUBJECTS.items():
        rows = []
        for i in range(1, n + 1):
            n_options = 2 + (i * 3) % 8  # 2..9 options
            is_open = subject == "Math" and i == 2
            image = Image.new("RGB", (40 + 8 * i, 32), (30 * i, 100, 200))
            rows.append(
                {
                    "id": f"validation_{subject}_{i}",
                    "question": f"What is shown in <image 1>? (item {i})",
                    "options": "[]" if is_open else str([f"choice {k}" for k in range(n_options)]),
                    "explanation": "",
                    "image_1": image,
                    "image_2": image if i == 1 else None,
                    "img_type": "['Photos']",
                    "answer": "12" if is_open else "ABCDEFGHI"[i % n_options],
                    "topic_difficulty": "Easy",
                    "question_type": "open" if is_open else "multiple-choice",
                    "subfield": "x",
                }
            )
        features = datasets.Features(
            {k: datasets.Image() if k.startswith("image_") else datasets.Value("string") for k in rows[0]}
        )
        ds = datasets.Dataset.from_list(rows, features=features)
        (root / subject).mkdir(parents=True)
        ds.to_parquet(str(root / subject / "validation-00000-of-00001.parquet"))
        rows_all += rows
    return rows_all


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_MMMU), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_infer_eval_end_to_end_with_resume(tiny_checkpoints, tmp_path, capsys):
    data = tmp_path / "mmmu"
    rows = _make_dataset(data)
    results = tmp_path / "out" / "results.jsonl"
    # A fine-tuned checkpoint: its saved budgets differ from the max_pixels option, which is reported.
    model = str(tmp_path / "finetuned")
    shutil.copytree(tiny_checkpoints["qwen3_vl"], model)
    trained = dict(max_pixels=8192, min_pixels=1024, video_max_pixels=65536, video_min_pixels=4096)
    save_preprocessing(PreprocessingSettings("qwen3_vl", 16, TRAINING_BUDGET.overridden(**trained)), model)
    options = Options(data_dir=str(data), subjects="art,math,phys")
    backend = BackendConfig(model_path=model)

    def infer(data_options: Options = options, **run) -> Path:
        settings = {"batch_size": 3, "max_new_tokens": 4, "max_pixels": 4096, **run}
        return runner.infer(MMMU, data_options, backend, InferOptions(str(results), **settings))

    assert infer(limit=2) == results
    drift = "warning: --max-pixels 4096 differs from the 8192 this checkpoint was trained with"
    assert drift in capsys.readouterr().err
    assert len(results.read_text().splitlines()) == 6
    # A crash mid-write leaves a torn last line: it is repaired and that question re-run.
    with results.open("a") as f:
        f.write('{"id": "validation_Physics_3", "resp')
    infer()
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    ids = [x["id"] for x in lines]
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == len(set(ids))
    assert "6 question(s) already in" in capsys.readouterr().err
    line = lines[0]
    assert {
        "id",
        "subject",
        "question_type",
        "options",
        "answer",
        "response",
        "raw_response",
        "prompt",
        "image_placement",
    } <= set(line)
    assert line["question"].startswith("What is shown in <image 1>?")  # the text, for a judge
    without_text = {k: v for k, v in line.items() if k not in ("question", "image_placement", "num_images")}
    assert "image" not in json.dumps(without_text) and len(json.dumps(line)) < 2000  # never image data
    assert lines[ids.index("validation_Art_1")]["num_images"] == 2
    manifest = json.loads(Path(str(results) + ".manifest.json").read_text())
    assert (
        manifest["model_config_sha256"]
        and manifest["prompt"] == "official"
        and manifest["pixel_budgets"]["max_pixels"] == 4096
        and manifest["pixel_budgets"]["drift_from_checkpoint"] == {"max_pixels": {"flag": 4096, "trained": 8192}}
    )
    assert "transformers" in manifest["versions"]
    assert len(manifest["segments"]) == 2  # one entry per run that wrote into the file

    # A resume with settings that change answers is refused (a user error: one line on the command line), naming
    # them; the manifest is left as it was.
    with pytest.raises(UserError) as refused:
        infer(replace(options, prompt="qwen", image_placement="first"), max_new_tokens=5)
    message = str(refused.value)
    assert "prompt: official -> qwen" in message and "image_placement: interleaved -> first" in message
    assert "max_new_tokens" in message and "--allow-settings-change" in message
    assert json.loads(Path(str(results) + ".manifest.json").read_text())["prompt"] == "official"
    infer(replace(options, prompt="qwen"), allow_settings_change=True)
    assert "mixing answers" in capsys.readouterr().err
    manifest = json.loads(Path(str(results) + ".manifest.json").read_text())
    assert [seg["prompt"] for seg in manifest["segments"]] == ["official", "official", "qwen"]

    # Two infer runs on one output: the second stops at once naming the first one's pid.
    import fcntl

    with open(str(results) + ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write("4242")
        held.flush()
        with pytest.raises(UserError, match=r"being written by another infer \(pid 4242\)"):
            infer()
    assert len(results.read_text().splitlines()) == 10  # nothing written twice

    scores = tmp_path / "scores.json"
    capsys.readouterr()
    body = runner.evaluate(MMMU, results, scores, verbose=True)
    report = json.loads(scores.read_text())
    assert report["overall"]["num"] == 10 and set(report["subjects"]) == set(SUBJECTS)
    assert report["open"]["num"] == 1
    assert len(report["questions"]) == 10 and all("random_guess" in q for q in report["questions"])
    assert body["overall"] == report["overall"]  # the body returned is the one written
    printed = capsys.readouterr().out
    assert "Overall-Art and Design" in printed and "Overall-Science" in printed

    strict = runner.evaluate(MMMU, results, tmp_path / "strict.json", scoring="strict")
    assert strict["scoring"] == "strict" and (tmp_path / "strict.json").is_file()
    # compare (strict scoring: no random fall-backs, so one edit changes one result): a copy whose answer to one
    # wrongly answered multiple-choice question is made right differs in exactly that question.
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    wrong = {q["id"] for q in strict["questions"] if not q["correct"]}
    target = next(x for x in lines if x["question_type"] == "multiple-choice" and x["id"] in wrong)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps({**x, "response": x["answer"]} if x is target else x) + "\n" for x in lines))
    text = runner.compare(MMMU, results, edited, "strict")
    assert "parse changed: 0" in text and "answer changed: 1" in text
    assert f"  {target['id']}: A wrong" in text and "-> B right" in text


def test_compare_splits_parse_and_answer_changes(tmp_path, capsys):
    a = [_mc("validation_Art_1", "A"), _mc("validation_Art_2", "B"), _mc("validation_Art_3", "(A)")]
    b = [_mc("validation_Art_1", "B"), _mc("validation_Art_2", "A"), _mc("validation_Art_3", "(A)")]
    for path, lines in ((tmp_path / "a.jsonl", a), (tmp_path / "b.jsonl", b)):
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = runner.compare(MMMU, tmp_path / "a.jsonl", tmp_path / "b.jsonl", "strict")
    assert "answer changed: 2" in text and "validation_Art_1" in text
    assert "only A right: 1, only B right: 1; exact McNemar p = 1: no difference beyond noise" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_mc("validation_Art_9", "A", answer="Z")) + "\n")
    body = runner.evaluate(MMMU, bad, tmp_path / "s.json", verbose=True)
    problem = "answer 'Z' is not one of the option letters"
    assert problem in body["gold_problems"]["validation_Art_9"]  # scored (counted wrong), not refused
    assert f"validation_Art_9: {problem}" in capsys.readouterr().out  # and the report says so
    # Official scoring: one answer edited from unparsable to parsed moves the seeded guess stream; the other
    # questions' changed guesses are reported as such, not as changed answers or parses.
    base = [_mc(f"validation_Art_{i}", "no idea", answer="A") for i in range(1, 13)]
    edit = [dict(x, response="B") if x["id"] == "validation_Art_1" else x for x in base]
    for path, lines in ((tmp_path / "g1.jsonl", base), (tmp_path / "g2.jsonl", edit)):
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = runner.compare(MMMU, tmp_path / "g1.jsonl", tmp_path / "g2.jsonl", "official")
    assert "answer changed: 1" in text and "parse changed: 0" in text
    assert (
        "random guess changed" in text
        and "random guess changed (same answer; the seeded guess stream moved): 0" not in text
    )


def test_data_layouts(tmp_path):
    import datasets

    rows = _make_dataset(tmp_path / "hub")
    assert [r["id"] for r in iter_questions(str(tmp_path / "hub"), "validation", ["Physics", "Art"])][:2] == [
        "validation_Physics_1",
        "validation_Physics_2",
    ]
    merged = datasets.concatenate_datasets(
        [
            datasets.load_dataset("parquet", data_files=str(p), split="train")
            for p in sorted((tmp_path / "hub").glob("*/*.parquet"))
        ]
    )
    (tmp_path / "mirror" / "data").mkdir(parents=True)
    merged.to_parquet(str(tmp_path / "mirror" / "data" / "validation-00000-of-00001.parquet"))
    assert len(list(iter_questions(str(tmp_path / "mirror"), "validation", ["Math"]))) == SUBJECTS["Math"]
    # Listing the questions (infer's first pass) decodes no image, in every layout.
    for layout in ("hub", "mirror"):
        listed = list(iter_questions(str(tmp_path / layout), "validation", ["Art", "Math"], images=False))
        assert listed and not any(k.startswith("image_") for r in listed for k in r)
    datasets.DatasetDict({"validation": merged}).save_to_disk(str(tmp_path / "disk"))
    assert len(list(iter_questions(str(tmp_path / "disk"), "validation", ["Art", "Math", "Physics"]))) == len(rows)


def test_official_layouts_in_and_out(tmp_path):
    lines = [_mc(f"validation_Art_{i}", r, answer="ABCD"[i % 4]) for i, r in
             enumerate(["A", "no idea", "(C)", "hmm", "D", "B"], start=1)]  # fmt: skip
    lines += [{"id": "validation_Math_1", "question_type": "open", "options": "[]", "answer": "['24/7', '3.429']",
               "response": "The answer is 3.429."},
              {"id": "validation_Math_2", "question_type": "open", "options": "[]", "answer": "5", "response": "7"}]  # fmt: skip
    ours = tmp_path / "results.jsonl"
    ours.write_text("".join(json.dumps(x) + "\n" for x in lines))
    reference = json.loads(_scores(ours, tmp_path / "ours.json").read_text())

    # Out: the {id: prediction} file: letters (official guesses included), open answers as text.
    preds = runner.export(MMMU, ours, tmp_path / "predictions.json")
    exported = json.loads(preds.read_text())
    parsed = {q["id"]: q["parsed"] for q in reference["questions"]}
    assert exported["validation_Art_2"] == parsed["validation_Art_2"] in "ABCD"  # the seeded guess
    assert exported["validation_Math_1"] == "The answer is 3.429."

    # In: that file with the official gold answers (main_eval_only's layout) scores the same.
    answers = tmp_path / "answer_dict_val.json"
    answers.write_text(json.dumps({x["id"]: {"question_type": "short-answer" if x["question_type"] == "open" else
                                             x["question_type"], "ground_truth": x["answer"]} for x in lines}))  # fmt: skip
    via_predictions = json.loads(_scores(preds, tmp_path / "p.json", str(answers)).read_text())
    assert via_predictions["overall"]["acc"] == reference["overall"]["acc"]  # (the guesses are letters there)
    with pytest.raises(UserError, match="--answers"):  # an {id: prediction} file needs the gold answers
        runner.evaluate(MMMU, preds, tmp_path / "x.json")

    # In: the official per-subject output.json samples (main_parse_and_eval's layout), one folder per subject.
    for subject in ("Art", "Math"):
        samples = []
        for x in lines:
            if f"_{subject}_" not in x["id"]:
                continue
            options = json.loads(x["options"].replace("'", '"'))
            letters = "ABCDEFGHI"[: len(options)]
            samples.append({"id": x["id"], "question_type": x["question_type"], "answer": x["answer"],
                            "all_choices": list(letters), "index2ans": dict(zip(letters, options)),
                            "response": x["response"]})  # fmt: skip
        (tmp_path / "official" / subject).mkdir(parents=True)
        (tmp_path / "official" / subject / "output.json").write_text(json.dumps(samples))
    via_samples = json.loads(_scores(tmp_path / "official", tmp_path / "s.json").read_text())
    assert via_samples["overall"] == reference["overall"]
    assert [q["parsed"] for q in via_samples["questions"]] == [q["parsed"] for q in reference["questions"]]


def _scores(input_path: Path, output: Path, answers: str | None = None) -> Path:
    runner.evaluate(MMMU, input_path, output, options=EvalOptions(answers=answers))
    return output


def _b64(image, fmt: str) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path: Path, rows: list[dict]) -> None:
    columns = [
        "index",
        "id",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "split",
        "image",
        "image_path",
    ]
    with path.open("w") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(row.get(c, "")) for c in columns) + "\n")


@pytest.mark.slow
def test_upstream_vlmevalkit_tsv(tiny_checkpoints, tmp_path):
    from PIL import Image

    rgba = Image.new("RGBA", (48, 40), (200, 30, 30, 128))
    jpeg = Image.new("RGB", (56, 32), (20, 200, 20))
    palette = Image.new("P", (40, 40), 3)
    rows = [
        {"index": 1, "id": "validation_Art_1", "question": "Colour of <image 1>?", "A": "red", "B": "green",
         "C": "blue", "D": "nan", "answer": "A", "category": "Art", "split": "validation", "image": _b64(rgba, "PNG"),
         "image_path": "validation_Art_1_1.png", "hint": "Look closely."},
        # the image cell names row 1's index: its image is shared
        {"index": 2, "id": "validation_Art_2", "question": "And <image 1>?", "A": "x", "B": "y", "answer": "B",
         "category": "Art", "split": "validation", "image": "1", "image_path": "validation_Art_2_1.png"},
        # several images: list literals in both image and image_path
        {"index": 3, "id": "validation_Art_3", "question": "Compare <image 1> and <image 2>.", "A": "same",
         "B": "different", "answer": "B", "category": "Art", "split": "validation",
         "image": str([_b64(jpeg, "JPEG"), _b64(palette, "PNG")]), "image_path": "['a.jpg', 'b.png']"},
        # an open question: no options
        {"index": 4, "id": "validation_Math_1", "question": "How many sides has <image 1>?", "answer": "12",
         "category": "Math", "split": "validation", "image": _b64(jpeg, "PNG"), "image_path": "m.png"},
        {"index": 5, "id": "dev_Art_1", "question": "Dev <image 1>", "A": "p", "B": "q", "answer": "A",
         "category": "Art", "split": "dev", "image": "1", "image_path": "d.png"},
    ]  # fmt: skip
    data = tmp_path / "LMUData"
    data.mkdir()
    _write_tsv(data / "MMMU_DEV_VAL.tsv", rows)
    got = list(iter_questions(str(data), "validation", ["Art", "Math"]))
    assert [r["id"] for r in got] == ["validation_Art_1", "validation_Art_2", "validation_Art_3", "validation_Math_1"]
    assert got[0]["options"] == ["red", "green", "blue"] and got[0]["question_type"] == "multiple-choice"
    assert got[0]["image_1"].mode == "RGBA" and got[1]["image_1"].tobytes() == got[0]["image_1"].tobytes()
    assert got[2]["image_2"].mode == "P" and got[2]["image_1"].size == (56, 32)
    assert got[3]["question_type"] == "open" and got[3]["options"] == []
    assert prompt_text(got[0], "qwen").startswith("Hint: Look closely.\nQuestion: Colour of <image 1>?")
    assert [r["id"] for r in iter_questions(str(data / "MMMU_DEV_VAL.tsv"), "dev", ["Art"])] == ["dev_Art_1"]
    assert "image_1" not in next(iter_questions(str(data), "validation", ["Art"], images=False))

    # Hostile or broken cells are refused by name, never evaluated.
    evil = tmp_path / "evil.tsv"
    _write_tsv(evil, [dict(rows[0], image="[__import__('os').system('touch " + str(tmp_path / "PWNED") + "')]")])
    with pytest.raises(Exception, match=r"evil.tsv:2 \(index 1\).*list literal"):
        list(iter_questions(str(evil), "validation", ["Art"]))
    assert not (tmp_path / "PWNED").exists()
    dangling = tmp_path / "dangling.tsv"
    _write_tsv(dangling, [dict(rows[1], image="77")])
    with pytest.raises(Exception, match="refers to index '77', which has no image"):
        list(iter_questions(str(dangling), "validation", ["Art"]))

    # infer reads it with data_file (--data-file: upstream's file), images in the model's input.
    results = runner.infer(MMMU, Options(data_file=str(data / "MMMU_DEV_VAL.tsv"), subjects="art,math"),
                           BackendConfig(model_path=str(tiny_checkpoints["qwen3_vl"])),
                           InferOptions(str(tmp_path / "tsv.jsonl"), max_new_tokens=3))  # fmt: skip
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [x["num_images"] for x in lines] == [1, 1, 2, 1]


def test_presets_and_flags():
    from qwenvl.evaluation.benchmark import InferOptions
    from qwenvl.evaluation.mmmu.cli import BENCHMARK
    from qwenvl.evaluation.runner import generation_settings

    def gen(**options):
        return generation_settings(BENCHMARK, InferOptions("x", **options))

    assert vars(gen()) == dict(max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                               presence_penalty=0.0, seed=42)  # fmt: skip
    instruct = gen(preset="instruct")
    assert (instruct.temperature, instruct.top_p, instruct.top_k, instruct.presence_penalty,
            instruct.max_new_tokens) == (0.7, 0.8, 20, 1.5, 32768)  # fmt: skip
    think = gen(preset="think", max_new_tokens=64)  # a flag wins over its preset
    assert (think.temperature, think.top_p, think.max_new_tokens) == (1.0, 0.95, 64)


def _png():
    from PIL import Image

    return Image.new("RGB", (64, 48), (200, 30, 30))


def test_hf_presence_penalty_and_truncation(tiny_checkpoints):
    import torch

    from qwenvl.inference.base import GenerationSettings
    from qwenvl.inference.hf import HFBackend

    backend = HFBackend(str(tiny_checkpoints["qwen3_vl"]), device="cpu")
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Say something long."}]}]
    inputs = backend.inputs([conversation])
    prompt = inputs["input_ids"].shape[1]

    def generated(gen: GenerationSettings) -> list[int]:
        with torch.no_grad():
            out = backend.model.generate(**inputs, **backend._generate_kwargs(gen, prompt), min_new_tokens=40)
        return out[0, prompt:].tolist()

    plain = generated(GenerationSettings(max_new_tokens=40))
    penalised = generated(GenerationSettings(max_new_tokens=40, presence_penalty=1e4))
    assert len(set(plain)) < len(plain)  # the random model repeats tokens when greedy
    assert len(penalised) == 40 and len(set(penalised)) == 40  # each generated token at most once
    # An answer cut at max_new_tokens is marked truncated (and one that ended is not).
    image = [{"role": "user", "content": [{"type": "image", "image": _png()}, {"type": "text", "text": "Hi"}]}]
    cut, ended = backend.generate([image, conversation], GenerationSettings(max_new_tokens=6))
    assert cut and cut.truncated  # six tokens of text, no end of answer
    assert not ended.truncated  # the text-only prompt ends at once with the end token


@pytest.mark.slow
def test_openai_backend_sharding_and_merge(tiny_checkpoints, transformers_server, tmp_path):
    data = tmp_path / "mmmu"
    _make_dataset(data)
    model = str(tiny_checkpoints["qwen3_vl"])
    options = Options(data_dir=str(data), subjects="art,math")
    run = InferOptions(str(tmp_path / "single.jsonl"), limit=2, max_new_tokens=4, batch_size=1)
    # The same options on the command line (the shard processes below are started as a user starts them).
    common = ["--data-dir", str(data), "--subjects", "art,math", "--limit", "2", "--max-new-tokens", "4",
              "--batch-size", "1"]  # fmt: skip
    single = runner.infer(MMMU, options, BackendConfig(model_path=model), run)
    reference = {x["id"]: x["response"] for x in map(json.loads, single.read_text().splitlines())}
    assert len(reference) == 4

    # A served model: the same answers, the same file layout, the manifest naming the server.
    base, served = transformers_server
    server = BackendConfig(backend="openai", base_url=base, model=served, concurrency=4)
    served_out = runner.infer(MMMU, options, server, replace(run, output_file=str(tmp_path / "served.jsonl")))
    got = {x["id"]: x["response"] for x in map(json.loads, served_out.read_text().splitlines())}
    assert got == reference
    manifest = json.loads(Path(str(served_out) + ".manifest.json").read_text())
    assert manifest["backend"] == "openai" and manifest["base_url"] == base and manifest["served_model"] == served
    # On the command line, a server that is down is a user's error: one line, exit 2.
    down = _run("infer", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--output-file",
                str(tmp_path / "down.jsonl"), *common)  # fmt: skip
    assert down.returncode == 2 and "cannot reach" in down.stderr and "Traceback" not in down.stderr

    # Two shards under torchrun: each writes its file, the last one merges; equal to the single run.
    sharded = tmp_path / "sharded.jsonl"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), str(RUN_MMMU), "infer", "--model-path", model, "--output-file", str(sharded),
                *common]  # fmt: skip
    run = subprocess.run(torchrun, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "sharded.shard-0-of-2.jsonl").exists() and (tmp_path / "sharded.shard-1-of-2.jsonl").exists()
    merged = {x["id"]: x["response"] for x in map(json.loads, sharded.read_text().splitlines())}
    assert merged == reference and len(sharded.read_text().splitlines()) == 4

    # merge refuses shards that lack answers, naming the shard.
    shard1 = tmp_path / "sharded.shard-1-of-2.jsonl"
    shard1.write_text(shard1.read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="shard 1 lacks 1 of its 2 ids"):
        runner.merge(sharded, 2)

    # --data-parallel-size starts the shard processes itself and merges them.
    parallel = tmp_path / "parallel.jsonl"
    out = _run("infer", "--model-path", model, "--output-file", str(parallel), "--data-parallel-size", "2", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {x["id"]: x["response"] for x in map(json.loads, parallel.read_text().splitlines())} == reference


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _option_judge(body: dict) -> str:
    """A deterministic judge: the letter of the only option whose text appears in the answer, else Z; "garble" in
    an answer gets an unusable reply."""
    import re

    last = body["messages"][-1]["content"].rsplit("Question: ", 1)[-1]
    options = dict(re.findall(r"^([A-Z])\. (.*)$", last.split("\nAnswer: ")[0], re.M))
    answer = last.split("\nAnswer: ", 1)[1].rsplit("\nReply:", 1)[0]
    hits = [k for k, v in options.items() if v.lower() in answer.lower()]
    return "I cannot say" if "garble" in answer else (hits[0] if len(hits) == 1 else "Z")


def test_llm_judge_rechecks_and_caches(tmp_path, capsys):
    from tests.evaluation.chat_server import chat_server

    with chat_server(_option_judge) as server:
        lines = [
            _mc("validation_Art_1", "B"),  # parsed by the rules: not re-checked by --judge openai
            dict(_mc("validation_Art_2", "it is o1", answer="B"), question="Which?"),
            _mc("validation_Art_3", "something unrelated", answer="C"),  # the judge says Z: wrong, no guess
            _mc("validation_Art_4", "garble garble garble garble garble", answer="D"),  # no usable verdict
            {"id": "validation_Math_1", "question_type": "open", "options": "[]", "answer": "12",
             "response": "The total is twelve (12 apples)."},
        ]  # fmt: skip
        results = tmp_path / "results.jsonl"
        results.write_text("".join(json.dumps(x) + "\n" for x in lines))
        scores = tmp_path / "scores.json"
        judge = JudgeOptions(judge="openai", judge_model="judge-1", base_url=server.url)
        body = runner.evaluate(MMMU, results, scores, judge=judge, verbose=True)
        report = json.loads(scores.read_text())
        assert body["judge"] == report["judge"]  # the body returned is the one written
        judged = {q["id"]: q for q in report["judged_questions"]}
        assert judged["validation_Art_2"]["judge"] == "B" and judged["validation_Art_2"]["correct"]
        assert judged["validation_Art_3"]["judge"] == "Z" and not judged["validation_Art_3"]["correct"]
        assert judged["validation_Art_4"]["judge"] is None  # the rule result (its seeded guess) stands
        assert (
            judged["validation_Art_4"]["correct"]
            == {q["id"]: q for q in report["questions"]}["validation_Art_4"]["correct"]
        )
        assert "judge" not in judged["validation_Art_1"] and "judge" not in judged["validation_Math_1"]
        assert report["judge"]["rechecked"] == 3 and report["judge"]["failures"] == 1
        printed = capsys.readouterr().out
        assert "rule" in printed and "judged" in printed  # the rule-based and judged accuracies side by side
        first_requests = len(server.requests)
        assert first_requests == 1 + 1 + 3  # the garbled answer is asked three times

        runner.evaluate(MMMU, results, scores, judge=judge)  # every verdict from the cache: no request
        assert len(server.requests) == first_requests
        assert json.loads(scores.read_text())["judge"]["cached"] == 3

        # --judge all also asks about parsed and open answers (open: A = the gold answer, B = other answers).
        runner.evaluate(MMMU, results, scores, judge=replace(judge, judge="all"))
        report = json.loads(scores.read_text())
        judged = {q["id"]: q for q in report["judged_questions"]}
        assert judged["validation_Math_1"]["judge"] == "A" and judged["validation_Math_1"]["correct"]
        assert report["judge"]["rechecked"] == 5


@pytest.mark.slow
def test_infer_and_eval_on_a_thinking_qwen3_5_checkpoint(tiny_checkpoints, tmp_path):
    """MMMU on a tiny Qwen3.5 (linear attention, thinking template) with the hf backend: every question answered,
    the prompt opens the reasoning as the chat template does, and eval scores the text after ``</think>``. The
    round trip a user runs: ``run_mmmu.py infer`` then ``eval``, at upstream's path, as processes."""
    data = tmp_path / "mmmu"
    rows = _make_dataset(data)
    results = tmp_path / "results.jsonl"
    out = _run("infer", "--model-path", str(tiny_checkpoints["qwen3_5"]), "--data-dir", str(data),
               "--output-file", str(results), "--subjects", "art,math,phys", "--max-new-tokens", "6")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(r["id"] for r in rows)
    manifest = json.loads((tmp_path / "results.jsonl.manifest.json").read_text())
    assert manifest["backend"] == "hf" and manifest["model_path"].endswith("qwen3_5")
    scored = _run("eval", "--input-file", str(results), "--output-file", str(tmp_path / "score.json"))
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads((tmp_path / "score.json").read_text())["overall"]["num"] == len(rows)


def test_a_subject_missing_from_the_data_is_named_with_the_subjects_present(tmp_path, monkeypatch, capsys):
    import datasets

    from qwenvl.evaluation.mmmu.cli import main
    from qwenvl.evaluation.mmmu.data import DataError

    _make_dataset(tmp_path / "hub")
    shutil.rmtree(tmp_path / "hub" / "Physics")
    merged = datasets.concatenate_datasets([datasets.load_dataset("parquet", data_files=str(p), split="train")
                                            for p in sorted((tmp_path / "hub").glob("*/*.parquet"))])  # fmt: skip
    (tmp_path / "mirror" / "data").mkdir(parents=True)
    merged.to_parquet(str(tmp_path / "mirror" / "data" / "validation-00000-of-00001.parquet"))
    tsv = tmp_path / "MMMU_DEV_VAL.tsv"
    _write_tsv(tsv, [{"index": 1, "id": "validation_Art_1", "question": "Q <image 1>", "A": "x", "B": "y",
                      "answer": "A", "category": "Art", "split": "validation", "image": _b64(_png(), "PNG")}])  # fmt: skip
    for source, has in ((tmp_path / "hub", "Art, Math"), (tmp_path / "mirror", "Art, Math"), (tsv, "Art")):
        for subjects in (["Physics"], ["Art", "Physics"]):
            with pytest.raises(
                DataError, match=rf"Physics is not in {source} \(split 'validation'\), which has {has};"
            ):
                list(iter_questions(str(source), "validation", subjects, images=False))
    # Without --subjects (every subject), a local copy of some of them is read as it is.
    from qwenvl.evaluation.mmmu.scoring import SUBJECT_ORDER

    listed = list(iter_questions(str(tmp_path / "hub"), "validation", list(SUBJECT_ORDER), False, required=False))
    assert len(listed) == SUBJECTS["Art"] + SUBJECTS["Math"]
    # From the command line: one line, exit 2, before any server is asked.
    code = main(["infer", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--data-dir",
                 str(tmp_path / "hub"), "--subjects", "phys", "--output-file", str(tmp_path / "out" / "r.jsonl")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Physics is not in" in err and "which has Art, Math" in err and "split is" not in err
    assert not (tmp_path / "out").exists()


def test_the_download_hint_names_the_hub_client_that_is_installed(tmp_path, monkeypatch):
    from qwenvl.evaluation.mmmu.data import DataError

    monkeypatch.chdir(tmp_path)  # "MMMU/MMMU" is not a local folder here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as caught:
        list(iter_questions("MMMU/MMMU", "validation", ["Art"], images=False))
    hint = re.search(r"\((\S+ download [^)]*)\)", str(caught.value)).group(1)
    assert hint == "hf download MMMU/MMMU --repo-type dataset --local-dir MMMU"
    # The program is the one huggingface_hub installs beside this Python (huggingface-cli is gone).
    assert (Path(sys.executable).parent / hint.split()[0]).exists()
    assert "huggingface-cli" not in str(caught.value)
