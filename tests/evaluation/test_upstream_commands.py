"""Upstream Qwen3-VL's eval command lines run unchanged (their flags accepted; the judge flags mapped onto ours),
upstream's results files are scored by ``eval`` as they are, and ``eval --output-file`` writes the format its
extension names."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest

from qwenvl.evaluation.command import build_parser
from tests.evaluation.chat_server import chat_server


SAMPLING = ["--max-new-tokens", "32768", "--temperature", "0.7", "--top-p", "0.8", "--top-k", "20",
            "--repetition-penalty", "1.0", "--presence-penalty", "1.5", "--tensor-parallel-size", "1",
            "--gpu-memory-utilization", "0.9", "--max-model-len", "128000"]  # fmt: skip
# Upstream's shell scripts (infer_instruct.sh, eval_instruct.sh), per benchmark.
UPSTREAM = {
    "mathvision": (
        ["infer", "--model-path", "M", "--data-dir", "D", "--dataset", "MathVision", "--output-file", "o.jsonl",
         "--num-samples", "5", "--use-cot", "--cot-prompt", " Think.", "--max-images-per-prompt", "10", *SAMPLING],
        ["eval", "--data-dir", "D", "--input-file", "o.jsonl", "--output-file", "o.csv", "--dataset", "MathVision",
         "--eval-model", "gpt-4o-2024-05-13", "--api-type", "dash", "--nproc", "16"],
    ),
    "realworldqa": (
        ["infer", "--model-path", "M", "--data-dir", "D", "--dataset", "RealWorldQA", "--output-file", "o.jsonl",
         "--min-pixels", "602112", "--max-pixels", "4014080", "--max-images-per-prompt", "10", *SAMPLING],
        ["eval", "--data-dir", "D", "--input-file", "o.jsonl", "--output-file", "o.csv", "--dataset", "RealWorldQA",
         "--eval-model", "gpt-3.5-turbo-0125", "--api-type", "dash", "--nproc", "4"],
    ),
    "videomme": (
        ["infer", "--model-path", "M", "--data-dir", "D", "--duration", "short", "--use-subtitle", "--output-file",
         "o.jsonl", "--sys-prompt", "s.txt", "--max-samples", "3", "--fps", "2", "--min-pixels", "3584",
         "--max-pixels", "401408", "--min-frames", "4", "--max-frames", "512", "--total-pixels", "19267584",
         "--max-videos-per-prompt", "1", "--seed", "3407", *SAMPLING],
        ["eval", "--data-dir", "D", "--input-file", "o.jsonl", "--output-file", "o.csv",
         "--eval-model", "gpt-3.5-turbo-0125", "--api-type", "dash", "--nproc", "4"],
    ),
    "odinw": (
        ["infer", "--model-path", "M", "--data-dir", "D", "--output-file", "o.jsonl", "--max-images-per-prompt", "10",
         *SAMPLING],
        ["eval", "--data-dir", "D", "--input-file", "o.jsonl", "--output-file", "o.json"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_upstreams_command_lines_parse(name):
    benchmark = importlib.import_module(f"qwenvl.evaluation.{name}").BENCHMARK
    infer, evaluate = UPSTREAM[name]
    args = build_parser(benchmark).parse_args(infer)
    assert args.model_path == "M" and args.temperature == 0.7 and args.max_model_len == 128000
    if name in ("mathvision", "videomme", "odinw"):  # one name for the sample limit; upstream's kept as an alias
        limited = build_parser(benchmark).parse_args(["infer", "--model-path", "M", "--data-dir", "D", "--output-file",
                                                    "o.jsonl", "--limit", "7"])  # fmt: skip
        assert (getattr(limited, "num_samples", None) or getattr(limited, "max_samples", None) or limited.limit) == 7
    args = build_parser(benchmark).parse_args(evaluate)
    assert args.input_file == "o.jsonl" and args.data_dir == "D"
    if name != "odinw":
        assert args.judge_concurrency == int(evaluate[-1]) and args.eval_model.startswith("gpt-")


def test_output_extension_is_checked_at_parse_time(capsys):
    from qwenvl.evaluation.realworldqa import BENCHMARK

    with pytest.raises(SystemExit) as exit_:
        build_parser(BENCHMARK).parse_args(["eval", "--input-file", "r.jsonl", "--output-file", "scores.txt"])
    assert exit_.value.code == 2 and ".json, .csv, .jsonl" in capsys.readouterr().err


def _tsv_row(index: int, question: str, answer: str, **extra) -> dict:
    return {"index": index, "image": "iVBORw0KGgo=", "question": question, "answer": answer, **extra}


def _upstream(annotation: dict, gen: str, qid: int, task: str = "") -> dict:
    return {"question_id": qid, "annotation": annotation, "task": task, "messages": [],
            "result": {"gen": gen, "gen_raw": "<think>x</think>" + gen}}  # fmt: skip


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_mathvision_upstream_results_and_eval_command_with_its_judge(tmp_path, monkeypatch, capsys):
    from qwenvl.evaluation.mathvision import main

    lines = [_upstream(_tsv_row(1, "How many?", "12", choices="[]", category="counting", level=1),
                       "Counting carefully, I get 12 apples", 0),
             _upstream(_tsv_row(2, "Which?", "B", choices="['3', '4', '5']", category="algebra", level=2), "B", 1),
             _upstream(_tsv_row(3, "How many?", "7", choices="[]", category="counting", level=1), "7", 2)]  # fmt: skip
    results = _write(tmp_path / "mathv.jsonl", lines)
    output = tmp_path / "out" / "mathv.csv"
    argv = ["eval", "--data-dir", str(tmp_path), "--input-file", str(results), "--output-file", str(output),
            "--dataset", "MathVision", "--eval-model", "gpt-4o-2024-05-13", "--api-type", "dash", "--nproc", "16"]  # fmt: skip
    # Without upstream's judge server: scored by the rules, with a warning that says how to add the judge.
    monkeypatch.delenv("DASHSCOPE_API_BASE", raising=False)
    assert main(argv) == 0
    assert "set $DASHSCOPE_API_BASE" in capsys.readouterr().err
    rows = list(csv.DictReader(output.open()))
    assert [r["id"] for r in rows] == ["1", "2", "3"] and [r["correct"] for r in rows] == ["False", "True", "True"]
    summary = json.loads((tmp_path / "out" / "mathv_acc.json").read_text())
    assert summary["overall"]["correct"] == 2 and "questions" not in summary
    # With it (an OpenAI-compatible server named by $DASHSCOPE_API_BASE): the judge reads what the rules could not.
    with chat_server(lambda body: "12") as server:
        monkeypatch.setenv("DASHSCOPE_API_BASE", server.url)
        monkeypatch.setenv("CHATGPT_DASHSCOPE_API_KEY", "k")
        assert main(argv) == 0
        assert server.requests and {r["model"] for r in server.requests} == {"gpt-4o-2024-05-13"}
    assert json.loads((tmp_path / "out" / "mathv_acc.json").read_text())["overall"]["correct"] == 3


def test_realworldqa_and_videomme_upstream_results_are_scored(tmp_path):
    from qwenvl.evaluation import realworldqa, videomme

    nan = float("nan")  # upstream writes the TSV row as it is: an absent option is NaN
    rwqa = [_upstream(_tsv_row(1, "Color?", "A", A="red", B="blue", C="green", D=nan), "A", 0),
            _upstream(_tsv_row(2, "Side?", "B", A="left", B="right", C=nan, D=nan), "right", 1),
            _upstream(_tsv_row(3, "Side?", "B", A="left", B="right", C=nan, D=nan), "C", 2)]  # fmt: skip
    results = tmp_path / "rwqa.jsonl"
    results.write_text("".join(json.dumps(x) + "\n" for x in rwqa))  # json writes NaN, as upstream's file has
    output = tmp_path / "rwqa.jsonl.scores.jsonl"
    assert realworldqa.main(["eval", "--input-file", str(results), "--output-file", str(output)]) == 0
    rows = [json.loads(x) for x in output.read_text().splitlines()]
    assert [(r["id"], r["correct"]) for r in rows] == [("1", True), ("2", True), ("3", False)]
    assert rows[2]["extracted"] != "C"  # NaN options are not options

    annotation = {"question_id": "001-1", "question": "What is shown?", "answer": "C", "answer_id": "001-1",
                  "video_path": "videos/abc.mp4", "domain": "Knowledge", "sub_category": "Humanity & History",
                  "choices": {"A": "A cat.", "B": "A dog.", "C": "A bird.", "D": "A fish."}}  # fmt: skip
    vmme = [_upstream(annotation, "C", 0, "VideoMME_short_wo_subtitle"),
            _upstream({**annotation, "question_id": "001-2", "answer": "A"}, "B", 1, "VideoMME_short_wo_subtitle")]  # fmt: skip
    results = _write(tmp_path / "vmme.jsonl", vmme)
    output = tmp_path / "vmme.json"
    assert videomme.main(["eval", "--data-dir", "x", "--input-file", str(results), "--output-file", str(output)]) == 0
    report = json.loads(output.read_text())
    assert [(q["id"], q["correct"]) for q in report["questions"]] == [("001-1", True), ("001-2", False)]


def test_another_benchmarks_file_is_refused_in_one_line(tmp_path, capsys):
    from qwenvl.evaluation.videomme import main

    results = _write(tmp_path / "odinw.jsonl", [{"id": "ToyA/1", "dataset": "ToyA", "img_id": 1, "response": "[]"}])
    assert main(["eval", "--input-file", str(results), "--output-file", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "another benchmark" in err
