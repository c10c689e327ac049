"""MMMU-Pro: the official prompt of each setting, the official answer reading (expected letters derived by hand
from MMMU-Pro's evaluate.py rules), and infer -> eval through the registry against the fake OpenAI server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from qwenvl.evaluation.mmmu_pro import parse_answer, prompt_text, score
from qwenvl.evaluation.registry import main
from tests.evaluation.chat_server import chat_server


TEN = [f"option {i}" for i in range(10)]
FOUR = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize("response, options, expected", [
    ("Answer: C", TEN, "C"),
    ("Let me think.\nAnswer: The answer is B", TEN, "B"),  # after the last "Answer:", one option letter
    ("Answer: A or B", FOUR, "B"),  # two letters there: the parser proper, the last bare letter wins
    ("The answer is (B).", FOUR, "B"),
    ("B.", FOUR, "B"),
    ("DNA replication", FOUR, "A"),  # "A " inside "DNA ": the official quirk
    ("I think (A) is wrong and (C) is right", FOUR, "C"),  # the last bracketed letter
    ("I believe the right one is the dog here", FOUR, "B"),  # more than 5 words: the option text
    ("no idea", FOUR, None),  # nothing read: the official code draws a random letter
    ({"error": "x"}, FOUR, None),  # not text
])  # fmt: skip
def test_official_answer_reading(response, options, expected):
    assert parse_answer(response, options) == expected


def test_prompts_of_both_settings():
    row = {"question": "Which <image 2> matches <image 1>?", "options": ["<image 3>", "none", "both"]}
    text, order = prompt_text(row, "standard", "direct")
    assert text == ("Which [image] matches [image]?\nA. [image]\nB. none\nC. both\n"
                    "Answer with the option letter from the given choices directly.")  # fmt: skip
    assert order == [2, 1, 3]
    text, order = prompt_text(row, "vision", "cot")
    assert text.startswith("Write out the multiple-choice question in the image") and order == []


def test_official_guesses_are_seeded_and_strict_counts_them_wrong():
    records = [{"id": str(i), "options": FOUR, "answer": "A", "response": "no idea"} for i in range(20)]
    official = score(records, "official")
    assert official == score(records, "official") and {r["method"] for r in official} == {"random"}
    assert not any(r["correct"] for r in score(records, "strict"))


def _png(color: tuple[int, int, int]) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _dataset(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    standard = root / "standard (10 options)"
    standard.mkdir(parents=True)
    rows = [{"id": f"test_Art_{i}", "question": f"Q{i}: what is in <image 1>?", "options": str(TEN),
             "answer": "A" if i < 3 else "C", "subject": "Art", "image_1": _png((i * 40, 0, 0)),
             **{f"image_{k}": None for k in range(2, 8)}} for i in range(4)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), standard / "test-00000-of-00001.parquet")
    vision = root / "vision"
    vision.mkdir()
    rows = [{"id": f"test_Art_{i}", "image": _png((0, i * 40, 0)), "options": str(TEN), "answer": "A",
             "subject": "Art"} for i in range(2)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), vision / "test-00000-of-00001.parquet")
    return root


@pytest.mark.parametrize("setting", ["standard", "vision"])
def test_infer_and_eval_through_the_registry(tmp_path, setting, capsys):
    data = _dataset(tmp_path / "MMMU_Pro")
    results = tmp_path / "out" / f"{setting}.jsonl"
    with chat_server(lambda body: "Answer: A") as server:
        code = main(["mmmu_pro", "infer", "--backend", "openai", "--base-url", server.url, "--family", "qwen3_vl",
                     "--data-dir", str(data), "--setting", setting, "--output-file", str(results)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        content = server.requests[0]["messages"][-1]["content"]
        assert content[0]["type"] == "text" and [c["type"] for c in content[1:]] == ["image_url"]
        assert content[0]["text"].endswith("directly." if setting == "standard" else "is one of options.")
    scores = tmp_path / "out" / "scores.json"
    assert main(["mmmu_pro", "eval", "--input-file", str(results), "--output-file", str(scores)]) == 0
    report = json.loads(scores.read_text())
    expected = (3, 4) if setting == "standard" else (2, 2)
    assert (report["overall"]["correct"], report["overall"]["num"]) == expected
    assert report["discipline"]["Art and Design"]["num"] == expected[1] and "ci95" in report["overall"]
