"""Video-MME: the official extractor and answered-only accuracy, upstream's matcher, subtitles at the sampled
frames, the parquet + videos layout, and infer -> eval on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl.evaluation.videomme import aggregate, official_extract, option_texts, parse_srt, score, subtitles_at


RUN = Path(__file__).resolve().parents[2] / "evaluation" / "VideoMME" / "run_videomme.py"
OPTIONS = ["A. Black.", "B. 3.5 m.", "C. red", "D. blue"]


@pytest.mark.parametrize(
    "response, official, upstream",
    [
        ("B", "B", "B"),
        ("The best answer is C.", "C", "C"),
        ("Best answer: C", "B", "C"),  # "Best answer:" is never removed on its own (glued in the official list)
        ("Based on the video, so the answer is C.", "B", "C"),  # the first capital A-D: the B of "Based"
        ("Black.", "B", "A"),  # official: the B of "Black"; upstream: the option's text
        ("the answer is d", "", None),  # no capital letter: unanswered
        ("none of these choices fits what the people in the clip are doing at all", "", None),  # > 10 words
        ("E", "", None),
        ("答案是 C", "C", "C"),
        ("Neither A nor B; it is C.", "A", None),  # upstream: three letters, no text: its judge / a guess
    ],
)
def test_extractors(response, official, upstream):
    from qwenvl.scoring.mcq import can_infer

    assert official_extract(response) == official
    assert can_infer(response, option_texts(OPTIONS), "upstream") == upstream


def test_option_texts_keep_inner_periods():
    assert option_texts(OPTIONS) == {"A": "Black.", "B": "3.5 m.", "C": "red", "D": "blue"}


def test_official_accuracy_counts_answered_questions_only():
    records = [
        {"id": "001-1", "options": OPTIONS, "answer": "B", "response": "B", "duration": "short", "domain": "Knowledge",
         "sub_category": "Humanity", "task_type": "OCR Problems"},
        {"id": "001-2", "options": OPTIONS, "answer": "A", "response": "C", "duration": "short", "domain": "Knowledge",
         "sub_category": "Humanity", "task_type": "Counting Problem"},
        {"id": "001-3", "options": OPTIONS, "answer": "A", "response": "no idea", "duration": "short",
         "domain": "Knowledge", "sub_category": "Humanity", "task_type": "Counting Problem"},
    ]  # fmt: skip
    report = aggregate(score(records, "official"), "official")
    assert report["overall"]["answered"] == 2 and report["overall"]["acc"] == 0.5  # 1 of 2 answered
    counting = report["task_type"]["Counting Problem"]
    assert {k: v for k, v in counting.items() if k != "ci95"} == {"num": 2, "answered": 1, "correct": 0, "acc": 0.0}
    z2 = 1.959963984540054**2  # Wilson's upper bound for 0 of n is z^2 / (n + z^2): here n = the 1 answered
    assert counting["ci95"] == pytest.approx([0.0, z2 / (1 + z2)])
    upstream = aggregate(score(records, "upstream"), "upstream")
    assert upstream["overall"]["num"] == 3 and upstream["denominator"] == "all"
    assert score(records, "upstream") == score(records, "upstream")  # the fall-back guess is seeded


def test_subtitles_at_frame_times(tmp_path):
    srt = tmp_path / "v.srt"
    srt.write_text(
        "1\n00:00:00,500 --> 00:00:01,000\nfirst cue\n\n"
        "2\n00:00:01,200 --> 00:00:01,500\nstarts on a frame\n\n"  # t = 1.2 is on its start: not strictly inside
        "3\n00:00:02,000 --> 00:00:02,500\nline one\\Nline two\n\n"
        "4\n00:00:02,600 --> 00:00:03,000\n\n\n"  # an empty cue
    )
    cues = parse_srt(str(srt))
    assert cues[2] == (2.0, 2.5, "line one line two")
    assert subtitles_at(cues, [0.0, 0.6, 1.2, 1.7, 2.3, 2.9]) == "first cue line one line two"


def _video(path: Path, seconds: float, fps: int) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.full((48, 64, 3), (i * 8) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _dataset(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "videomme").mkdir(parents=True)
    (root / "videos").mkdir()
    (root / "subtitle").mkdir()
    _video(root / "videos" / "vidA.mp4", 3, 10)
    _video(root / "videos" / "vidB.mp4", 2, 8)
    (root / "subtitle" / "vidA.srt").write_text("1\n00:00:00,500 --> 00:00:01,000\na red square\n")
    rows = []
    for vid, duration, n in (("vidA", "short", "001"), ("vidB", "medium", "002")):
        for q in range(1, 4):
            rows.append({"video_id": n, "duration": duration, "domain": "Knowledge", "sub_category": "Humanity",
                         "url": "", "videoID": vid, "question_id": f"{n}-{q}", "task_type": "Counting Problem",
                         "question": f"How many squares? ({q})", "options": OPTIONS, "answer": "ABCD"[q]})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")


@pytest.mark.slow
def test_infer_and_eval(tiny_checkpoints, tmp_path, capsys):
    data = tmp_path / "Video-MME"
    _dataset(data)
    from qwenvl.evaluation import runner, videomme
    from qwenvl.evaluation.benchmark import InferOptions
    from qwenvl.inference.config import BackendConfig

    model = str(tiny_checkpoints["qwen3_vl"])
    results = runner.infer(videomme.BENCHMARK, videomme.Options(data_dir=str(data), use_subtitle=True),
                           BackendConfig(model_path=model),
                           InferOptions(str(tmp_path / "short.jsonl"), max_frames=8, max_pixels=64 * 32 * 32,
                                        min_pixels=16 * 32 * 32, max_new_tokens=3))  # fmt: skip
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["001-1", "001-2", "001-3"]  # the short video's questions only
    assert all(x["subtitles"] for x in lines) and lines[0]["task_type"] == "Counting Problem"
    manifest = json.loads(Path(str(results) + ".manifest.json").read_text())
    assert manifest["pixel_policy"] == "flags"
    budgets = manifest["pixel_budgets"]
    assert (budgets["video_max_frames"], budgets["video_max_pixels"], budgets["video_min_pixels"]) == (
        8, 64 * 32 * 32, 16 * 32 * 32) and manifest["decoding"]["seed"] == 3407  # fmt: skip
    report = runner.evaluate(videomme.BENCHMARK, results, tmp_path / "scores.json")
    assert report["overall"]["num"] == 3 and report["denominator"] == "answered"
    (tmp_path / "empty").mkdir()
    argv = ["infer", "--model-path", model, "--output-file", str(tmp_path / "x.jsonl"), "--data-dir"]
    assert videomme.main([*argv, str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "test-*.parquet" in err and "Traceback" not in err
    (data / "videos" / "vidA.mp4").unlink()  # a question whose video is missing is named
    assert videomme.main([*argv, str(data)]) == 2
    err = capsys.readouterr().err
    assert "001-1:" in err and "vidA.mp4 does not exist" in err
