"""RealWorldQA: the two matchers on hand-checked answers, upstream's prompt byte for byte, the TSV quirks, and
infer -> eval on a tiny checkpoint."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from qwenvl.evaluation.realworldqa import aggregate, iter_rows, prompt_text, score
from qwenvl.scoring.mcq import can_infer


RUN = Path(__file__).resolve().parents[2] / "evaluation" / "RealWorldQA" / "run_realworldqa.py"
OPTIONS = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}


@pytest.mark.parametrize(
    "answer, vlmevalkit, upstream",
    [
        ("B", "B", "B"),
        ("B. green", "B", "B"),
        ("Green", "B", "B"),  # option text, any case
        ("The light is green", "B", "B"),  # text inside a sentence
        ("red and green", None, None),  # two option texts
        ("A car is parked, so the answer is B", "B", None),  # two letters: only the answer-is rule reads it
        ("The answer is B. A is wrong because the car is red.", "B", "A"),  # upstream falls to text: red
        ("B because the light shows the green signal", None, "B"),  # letter not among the last four tokens
        ("E", None, None),  # not an option
        ("Z", "Z", "Z"),
        ("Cannot determine the answer", "Z", "Z"),  # a refusal
        ("", None, None),
        ("A", "A", "A"),
        ("A. red is my choice here", "A", "A"),  # upstream: "A" is an article here, then the text says red
    ],
)
def test_matchers(answer, vlmevalkit, upstream):
    options = dict(OPTIONS)
    assert can_infer(answer, options, "vlmevalkit") == vlmevalkit
    assert can_infer(answer, options, "upstream") == upstream
    assert options == OPTIONS  # never mutated


def _b64(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path: Path) -> None:
    columns = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category"]
    rows = [
        ["1", _b64(Image.new("RGBA", (64, 48), (200, 0, 0, 120)), "PNG"), "What colour is the light?", "",
         "red", "green", "", "", "A", "driving"],
        ["2", _b64(Image.new("RGB", (80, 60), (0, 200, 0)), "JPEG"), "Which lane is free?", "Look left.",
         "left", "middle", "right", "", "B", "driving"],
        ["3", "1", "How many cars are there?", "nan", "1", "2", "3", "4", "C", "counting"],
    ]  # fmt: skip
    path.write_text("\t".join(columns) + "\n" + "".join("\t".join(r) + "\n" for r in rows))


def test_tsv_and_prompt(tmp_path):
    _write_tsv(tmp_path / "RealWorldQA.tsv")
    rows = list(iter_rows(str(tmp_path / "RealWorldQA.tsv")))
    assert [len(r["options"]) for r in rows] == [2, 3, 4]
    assert rows[2]["images"][0].tobytes() == rows[0]["images"][0].tobytes()  # "1": row 1's image
    assert prompt_text(rows[1]) == (
        "Hint: Look left.\nQuestion: Which lane is free?\nOptions:\nA. left\nB. middle\nC. right\n"
        "Please select the correct answer from the options above. \n"
    )
    assert prompt_text(rows[0]).startswith("Question: What colour")  # no hint line without a hint


def test_scoring_modes():
    records = [
        {"id": "1", "options": OPTIONS, "answer": "B", "response": "B", "category": "x"},
        {"id": "2", "options": OPTIONS, "answer": "B", "response": "B because the light shows the green signal"},
        {"id": "10", "options": OPTIONS, "answer": "A", "response": "no idea at all"},
    ]
    official = {r["id"]: r for r in score(records, "official")}
    assert official["1"]["correct"] and official["2"]["extracted"] == "Z" and official["10"]["method"] == "unparsed"
    upstream = score(records, "upstream")
    assert [r["id"] for r in upstream] == ["1", "2", "10"]  # numeric index order
    assert upstream[1]["correct"] and upstream[2]["method"] == "random"
    assert upstream == score(records, "upstream")  # the fall-back is seeded: the same every run
    report = aggregate(score(records, "official"))
    assert {k: v for k, v in report["overall"].items() if k != "ci95"} == {"num": 3, "correct": 1, "acc": 1 / 3}
    assert report["category"]["x"]["num"] == 1


@pytest.mark.slow
def test_infer_and_eval(tiny_checkpoints, tmp_path):
    _write_tsv(tmp_path / "RealWorldQA.tsv")
    results = tmp_path / "out.jsonl"
    run = subprocess.run([sys.executable, str(RUN), "infer", "--model-path", str(tiny_checkpoints["qwen3_vl"]),
                          "--data-dir", str(tmp_path), "--output-file", str(results), "--max-new-tokens", "4"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["1", "2", "3"] and all("response" in x for x in lines)
    scores = tmp_path / "scores.json"
    ev = subprocess.run([sys.executable, str(RUN), "eval", "--input-file", str(results), "--output-file", str(scores)],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert json.loads(scores.read_text())["overall"]["num"] == 3 and "Overall" in ev.stdout
    bad = subprocess.run([sys.executable, str(RUN), "infer", "--model-path", str(tiny_checkpoints["qwen3_vl"]),
                          "--data-dir", str(tmp_path / "nowhere"), "--output-file", str(tmp_path / "x.jsonl")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "RealWorldQA.tsv" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_counts_empty_answers(tmp_path, capsys):
    from qwenvl.evaluation.realworldqa import main

    records = [
        {"id": "1", "options": OPTIONS, "answer": "B", "response": "B"},
        {"id": "2", "options": OPTIONS, "answer": "A", "response": ""},
        {"id": "3", "options": OPTIONS, "answer": "C", "response": "  \n"},
    ]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = tmp_path / "scores.json"
    assert main(["eval", "--input-file", str(results), "--output-file", str(scores), "--scoring", "upstream"]) == 0
    assert json.loads(scores.read_text())["empty_responses"] == {"num": 2, "ids": ["2", "3"]}
    assert "warning: 2 of 3 answer(s) are empty (no text from the model or server), scored as unreadable: 2, 3" in (
        capsys.readouterr().out
    )
