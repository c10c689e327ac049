"""MathVision: MATH-V's official extraction and 2-decimal equality (LaTeX read by latex2sympy2, never eval),
upstream's rule stage, the TSV and the official JSONL layouts, and infer -> eval on a tiny checkpoint."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from qwenvl.evaluation.mathvision import (
    aggregate,
    is_equal,
    iter_problems,
    official_extract,
    prompt_text,
    score_official,
    score_upstream,
)


RUN = Path(__file__).resolve().parents[2] / "evaluation" / "MathVision" / "run_mathv.py"
SHAPES = ["Square", "Circle", "Pentagon", "Hexagon", "Equilateral Triangle"]
VALUES = ["$6$", "$10$", "$12$", "$15$", "$18$"]


def _rec(response: str, answer: str, options: list[str] | None = None) -> dict:
    return {"id": "1", "response": response, "answer": answer, "options": options or [], "subject": "algebra",
            "level": 2}  # fmt: skip


@pytest.mark.parametrize(
    "response, answer, options, official, upstream",
    [
        ("So \\boxed{18}", "E", VALUES, True, False),  # the option's value counts officially
        ("the answer is 7", "7", None, True, False),  # upstream needs the whole answer to equal the gold
        ("7", "7", None, True, True),
        ("The answer is \\frac{1}{2}.", "0.5", None, True, False),
        ("\\boxed{\\sqrt{2}}", "1.414", None, True, False),  # 2 decimals officially, 1e-6 upstream
        ("\\boxed{c}", "C", SHAPES, True, False),  # lower-case letter in the box
        ("**Answer: B**", "B", SHAPES, False, True),
        ("A is tempting, but the answer is D", "D", SHAPES, True, False),
        ("Cannot determine the answer", "A", SHAPES, False, False),  # a refusal
        ("", "A", SHAPES, False, False),
        ("First \\boxed{3}, finally \\boxed{4}", "4", None, True, False),  # several boxes: the last
        ("\\boxed{(1,2)}", "(1, 2)", None, True, False),  # tuples element by element
        ("Equilateral Triangle", "E", SHAPES, False, True),  # a bare option text: only upstream's text match
        ("<think>long reasoning</think>", "A", SHAPES, False, False),
    ],
)
def test_official_and_upstream_outcomes(response, answer, options, official, upstream):
    assert score_official([_rec(response, answer, options)])[0]["correct"] is official
    assert score_upstream([_rec(response, answer, options)])[0]["correct"] is upstream


def test_extraction_and_equality_details():
    assert official_extract("So \\boxed{18}") == "18"
    assert official_extract("The answer is 3 cm. Then more text") == "3cm"
    assert is_equal("\\frac{\\sqrt{3}}{2}", "0.866") and not is_equal("0.87", "0.866", decimals=None)
    assert not is_equal("__import__('os')", "1")  # never evaluated as Python


def _b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tsv(path: Path) -> None:
    columns = ["index", "image", "question", "answer", "choices", "category", "level"]
    rows = [
        ["1", _b64(Image.new("RGBA", (80, 60), (1, 2, 3, 4))), "Which shape? <image1>", "B", str(SHAPES), "logic", "1"],
        ["2", "1", "How many sides? <image1>", "007", "[]", "counting", "2"],
        ["3", _b64(Image.new("RGB", (60, 60))), "Pick one.", "A", "['A', 'B', 'C', 'D', 'E']", "logic", "1"],
    ]  # fmt: skip
    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(r) + "\n" for r in rows))


def test_layouts_and_prompts(tmp_path):
    _tsv(tmp_path / "MathVision_MINI.tsv")
    problems = list(iter_problems(str(tmp_path / "MathVision_MINI.tsv")))
    assert problems[1]["answer"] == "007" and problems[1]["options"] == []  # a digit string stays a string
    assert problems[1]["images"][0].tobytes() == problems[0]["images"][0].tobytes()
    assert prompt_text(problems[0], "upstream") == "Which shape? <image1>"
    official = prompt_text(problems[0], "official")
    assert official.startswith('Please solve the problem step by step and put your answer in one "\\boxed{}".')
    assert "(B) Circle\n" in official
    assert "(A)" not in prompt_text(problems[2], "official")  # bare letters: the options are in the image
    (tmp_path / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "1.jpg")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "testmini.jsonl").write_text(json.dumps(
        {"id": "1", "question": "Area?", "options": [], "image": "images/1.jpg", "answer": "12", "solution": "",
         "level": 3, "subject": "metric geometry - area"}) + "\n")  # fmt: skip
    [item] = iter_problems(str(tmp_path / "data" / "testmini.jsonl"))
    assert item["images"] == [str(tmp_path / "images" / "1.jpg")] and item["level"] == 3
    report = aggregate(score_official([_rec("\\boxed{12}", "12"), _rec("5", "7")]), "official")
    assert report["overall"]["acc"] == 0.5 and report["level"]["level2"]["num"] == 2
    assert report["subject_level"]["algebra_level2"]["correct"] == 1


@pytest.mark.slow
def test_infer_and_eval(tiny_checkpoints, tmp_path):
    _tsv(tmp_path / "MathVision_MINI.tsv")
    from qwenvl.evaluation import mathvision, runner
    from qwenvl.evaluation.benchmark import InferOptions
    from qwenvl.inference.config import BackendConfig

    options = mathvision.Options(data_dir=str(tmp_path), dataset="MathVision_MINI", prompt="official")
    results = runner.infer(mathvision.BENCHMARK, options, BackendConfig(model_path=str(tiny_checkpoints["qwen3_vl"])),
                           InferOptions(str(tmp_path / "mathv.jsonl"), max_new_tokens=4, min_pixels=16 * 32 * 32,
                                        max_pixels=64 * 32 * 32))  # fmt: skip
    assert [json.loads(x)["id"] for x in results.read_text().splitlines()] == ["1", "2", "3"]
    manifest = json.loads(Path(f"{results}.manifest.json").read_text())
    assert manifest["pixel_policy"] == "flags" and manifest["pixel_budgets"]["max_pixels"] == 64 * 32 * 32
    report = runner.evaluate(mathvision.BENCHMARK, results, tmp_path / "scores.json")
    assert report["overall"]["num"] == 3 and report["level"]["level1"]["num"] >= 1


def test_upstream_judge_extracts_answers_and_caches(tmp_path):
    """--judge: an LLM extracts the final answer of what the rules could not read (here a deterministic local
    server that replies with the last number of the model response); verdicts are cached."""
    import re

    from tests.evaluation.chat_server import chat_server

    def last_number(body: dict) -> str:
        response = body["messages"][-1]["content"].rsplit("Model response: ", 1)[1].split("\nExtracted answer:")[0]
        numbers = re.findall(r"\d+(?:\.\d+)?", response)
        return numbers[-1] if numbers else ""

    with chat_server(last_number) as server:
        results = tmp_path / "r.jsonl"
        lines = [_rec("Counting carefully, I get 12 apples in all", "12") | {"id": "1", "question": "How many?"},
                 _rec("12", "12") | {"id": "2", "question": "How many?"}]  # fmt: skip
        results.write_text("".join(json.dumps(x) + "\n" for x in lines))
        scores = tmp_path / "s.json"
        args = [sys.executable, str(RUN), "eval", "--input-file", str(results), "--output-file", str(scores),
                "--scoring", "upstream", "--judge", "openai", "--judge-model", "j",
                "--base-url", server.url]  # fmt: skip
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        report = json.loads(scores.read_text())
        by_id = {q["id"]: q for q in report["questions"]}
        assert by_id["1"]["method"] == "judge" and by_id["1"]["correct"]  # the rules could not read it
        assert by_id["2"]["method"] == "rule" and len(server.requests) == 1  # read by the rules: not sent
        assert subprocess.run(args, capture_output=True, text=True, timeout=120).returncode == 0
        assert len(server.requests) == 1  # the second run answers from the cache


@pytest.mark.parametrize("status, tries", [(500, 3), (400, 1)])
def test_a_failing_judge_ends_in_one_line_naming_it_and_empty_answers_are_counted(tmp_path, capsys, status, tries):
    from qwenvl.evaluation.mathvision import main
    from tests.evaluation.chat_server import chat_server, http_error

    results = tmp_path / "r.jsonl"
    lines = [_rec("no number here", "12") | {"id": "1", "question": "How many?"},
             _rec("", "7") | {"id": "2", "question": "How many?"},
             _rec("7", "7") | {"id": "3", "question": "How many?"}]  # fmt: skip
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    scores = tmp_path / "scores" / "s.json"
    with chat_server(lambda body: http_error(status, "judge model is overloaded")) as server:
        code = main(["eval", "--input-file", str(results), "--output-file", str(scores), "--judge", "openai",
                     "--judge-model", "j", "--base-url", server.url])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        suffix = f" (tried {tries} times)" if tries > 1 else ""
        assert err.splitlines()[-1] == (f"error: the judge: {server.url}/chat/completions answered HTTP {status}: "
                                        f"judge model is overloaded{suffix}")  # fmt: skip
        assert tries <= len(server.requests) <= 2 * tries  # two answers to re-read, each tried at most `tries` times
    assert not (tmp_path / "scores").exists() or not any((tmp_path / "scores").iterdir())

    assert main(["eval", "--input-file", str(results), "--output-file", str(scores)]) == 0
    out = capsys.readouterr().out
    assert json.loads(scores.read_text())["empty_responses"] == {"num": 1, "ids": ["2"]}
    assert "warning: 1 of 3 answer(s) are empty" in out
