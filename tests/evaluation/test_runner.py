"""The runner gives a declared benchmark everything: a tiny benchmark declared here (3 colour questions, nothing but
its ``Benchmark``) gets infer / eval / merge / compare / export, in-process and on the command line, against the
fake OpenAI-compatible server; the pixel policy (checkpoint / preset / flags) is recorded in the manifest, reaches
the images sent, and resolves the same way for the six registered benchmarks."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qwenvl.cli import UserError
from qwenvl.evaluation import command, runner
from qwenvl.evaluation.benchmark import Benchmark, InferOptions, PixelPolicy, Scoring, option
from qwenvl.evaluation.reports import accuracy
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.inference.config import BackendConfig
from tests.evaluation.chat_server import chat_server


COLOURS = {"q1": ("red", (255, 0, 0)), "q2": ("green", (0, 255, 0)), "q3": ("blue", (0, 0, 255))}
UPSTREAM = {"min_pixels": 8 * 32 * 32, "max_pixels": 16 * 32 * 32}  # what --preset takes, for this benchmark


@dataclass
class ColourOptions:
    """The fake benchmark's data options: they become its flags."""

    size: int = option("side of each generated square image, in pixels", default=256)
    style: str = option("how the question is asked", default="plain", choices=["plain", "polite"])


def _ids(options: ColourOptions) -> list[str]:
    return list(COLOURS)


def _rows(options: ColourOptions, ids: set[str]):
    for qid, (name, rgb) in COLOURS.items():
        if qid in ids:
            yield {"id": qid, "answer": name, "image": Image.new("RGB", (options.size, options.size), rgb)}


def _conversation(options: ColourOptions, row: dict, run: Any) -> list[dict]:
    text = f"[{row['id']}] What colour is this?" + (" Please." if options.style == "polite" else "")
    return [{"role": "user", "content": [{"type": "image", "image": row["image"]}, {"type": "text", "text": text}]}]


def _record(options: ColourOptions, row: dict, conversation: list, text: Any, run: Any) -> dict:
    return {"id": row["id"], "answer": row["answer"], "response": str(text), "style": options.style}


def _score(records: list[dict], context: Any) -> list[dict]:
    return [{"id": r["id"], "answer": r["answer"], "extracted": r["response"].strip().lower(), "method": "rule",
             "correct": r["response"].strip().lower() == r["answer"]} for r in records]  # fmt: skip


FAKE = Benchmark(
    name="colours",
    description="three coloured squares",
    options=ColourOptions,
    question_ids=_ids,
    rows=_rows,
    conversation=_conversation,
    record=_record,
    settings=lambda options: {"style": options.style},
    answer_settings=("style",),
    pixels=PixelPolicy(image=UPSTREAM),
    presets=upstream_presets(default_tokens=8, think_temperature=0.6, think_tokens=64),
    scoring={
        "exact": Scoring(
            "the colour's name, exactly",
            _score,
            lambda scored, context: accuracy(scored),
            lambda report, context: f"accuracy {report['acc']:.3f} of {report['num']}",
        )
    },
    required=("id", "answer", "response"),
)


def _answer_by_id(right: set[str]):
    """A server reply that names the right colour for the questions in ``right``, a wrong one for the rest."""

    def reply(body: dict) -> str:
        text = json.dumps(body["messages"])
        qid = next(q for q in COLOURS if f"[{q}]" in text)
        return COLOURS[qid][0] if qid in right else "purple"

    return reply


def _sizes(requests: list[dict]) -> list[tuple[int, int]]:
    """The (width, height) of every image the server received."""
    out = []
    for request in requests:
        for message in request["messages"]:
            for item in message["content"] if isinstance(message["content"], list) else []:
                if item.get("type") == "image_url":
                    data = base64.b64decode(item["image_url"]["url"].split(",", 1)[1])
                    out.append(Image.open(io.BytesIO(data)).size)
    return out


def _backend(url: str, checkpoint: Path | None = None) -> BackendConfig:
    return BackendConfig(backend="openai", base_url=url, family="qwen3_vl",
                         model_path=str(checkpoint) if checkpoint else None)  # fmt: skip


def test_a_declared_benchmark_gets_infer_eval_merge_compare_export_in_process(tmp_path):
    options = ColourOptions(style="polite")
    with chat_server(_answer_by_id({"q1", "q2"})) as server:
        # Two shards, run one after the other: the last one to finish merges them.
        for index in range(2):
            runner.infer(FAKE, options, _backend(server.url),
                         InferOptions(str(tmp_path / "a.jsonl"), num_shards=2, shard_index=index))  # fmt: skip
        assert all("Please." in json.dumps(r["messages"]) for r in server.requests)  # the typed option reached it
    a = tmp_path / "a.jsonl"
    assert sorted(json.loads(x)["id"] for x in a.read_text().splitlines()) == ["q1", "q2", "q3"]
    assert json.loads(Path(f"{a}.manifest.json").read_text())["merged_shards"] == 2
    runner.merge(a, 2)  # merging again writes the same answers
    assert sorted(json.loads(x)["id"] for x in a.read_text().splitlines()) == ["q1", "q2", "q3"]

    report = runner.evaluate(FAKE, a, tmp_path / "scores.csv")
    assert (report["correct"], report["num"]) == (2, 3) and len(report["ci95"]) == 2
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("id,answer,extracted") and len(rows) == 4  # one row per question
    assert json.loads((tmp_path / "scores_acc.json").read_text())["correct"] == 2

    with chat_server(_answer_by_id({"q3"})) as server:
        b = runner.infer(FAKE, options, _backend(server.url), InferOptions(str(tmp_path / "b.jsonl"), limit=2))
    assert [json.loads(x)["id"] for x in b.read_text().splitlines()] == ["q1", "q2"]  # the limit: first 2
    text = runner.compare(FAKE, a, b)
    assert "2 common question(s)" in text and "only A right: 2, only B right: 0" in text and "2 changed" in text
    exported = runner.export(FAKE, a, tmp_path / "answers.json")
    assert json.loads(exported.read_text()) == {"q1": "red", "q2": "green", "q3": "purple"}


def test_a_declared_benchmark_gets_its_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        command.main(FAKE, ["infer", "--help"])
    usage = capsys.readouterr().out
    assert "--size" in usage and "--style {plain,polite}" in usage and "--preset {upstream,instruct,think}" in usage
    results = tmp_path / "out" / "r.jsonl"
    with chat_server(_answer_by_id({"q1", "q2", "q3"})) as server:
        argv = ["infer", "--backend", "openai", "--base-url", server.url, "--family", "qwen3_vl", "--size", "64",
                "--output-file", str(results)]  # fmt: skip
        assert command.main(FAKE, argv) == 0
        assert set(_sizes(server.requests)) == {(64, 64)}  # --size reached the rows
        # Resuming with an answer-changing option of the benchmark is refused in one line.
        assert command.main(FAKE, [*argv, "--style", "polite"]) == 2
        assert "style: plain -> polite" in capsys.readouterr().err and len(server.requests) == 3
    assert command.main(FAKE, ["eval", "--input-file", str(results), "--output-file", str(tmp_path / "s.json")]) == 0
    assert "accuracy 1.000 of 3" in capsys.readouterr().out
    assert command.main(FAKE, ["compare", str(results), str(results)]) == 0
    assert "0 changed" in capsys.readouterr().out
    assert command.main(FAKE, ["export", "--input-file", str(results), "--output-file", str(tmp_path / "x.json")]) == 0
    assert command.main(FAKE, ["merge", "--output-file", str(tmp_path / "none.jsonl"), "--num-shards", "2"]) == 2
    assert "shard 0" in capsys.readouterr().err


def _checkpoint(folder: Path, min_pixels: int, max_pixels: int) -> Path:
    """A checkpoint folder with the budget it was trained with (all the pixel policy reads of it)."""
    folder.mkdir(parents=True)
    (folder / "qwenvl_preprocessing.json").write_text(json.dumps(
        {"model_type": "qwen3_vl", "patch_size": 16, "min_pixels": min_pixels, "max_pixels": max_pixels,
         "video_min_pixels": 16 * 32 * 32, "video_max_pixels": 64 * 32 * 32, "video_fps": 1.0,
         "video_max_frames": 6, "video_min_frames": 2}))  # fmt: skip
    return folder


@pytest.mark.parametrize(
    "policy, extra, bounds",
    [
        ("checkpoint", {}, (2 * 32 * 32, 4 * 32 * 32)),
        ("upstream", {"preset": "instruct", "max_new_tokens": 8}, (8 * 32 * 32, 16 * 32 * 32)),
        ("upstream", {"preset": "upstream"}, (8 * 32 * 32, 16 * 32 * 32)),  # upstream's pixels, greedy decoding
        ("flags", {"preset": "instruct", "max_new_tokens": 8, "max_pixels": 3 * 32 * 32, "min_pixels": 32 * 32},
         (32 * 32, 3 * 32 * 32)),
    ],
)  # fmt: skip
def test_the_manifest_records_the_pixel_policy_and_the_images_follow_it(tmp_path, policy, extra, bounds):
    checkpoint = _checkpoint(tmp_path / "ckpt", 2 * 32 * 32, 4 * 32 * 32)
    output = tmp_path / "r.jsonl"
    with chat_server(_answer_by_id(set())) as server:
        runner.infer(FAKE, ColourOptions(), _backend(server.url, checkpoint), InferOptions(str(output), **extra))
        sizes = _sizes(server.requests)
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    low, high = bounds
    assert manifest["pixel_policy"] == policy
    if extra.get("preset") == "upstream":
        assert manifest["decoding"]["temperature"] == 0.0 and manifest["preset"] == "upstream"
    source = manifest["pixel_budgets"]["source"]
    assert ("flags" in source) == (policy == "flags") and ("upstream" in source) == (policy != "checkpoint")
    assert (manifest["pixel_budgets"]["min_pixels"], manifest["pixel_budgets"]["max_pixels"]) == (low, high)
    assert len(sizes) == 3
    for width, height in sizes:  # 256 x 256 squares, resized under the policy's budget (multiples of 32)
        assert low <= width * height <= high and width % 32 == 0, (width, height, bounds)


# Upstream's pixel values of each benchmark, from upstream's own scripts (the oracle; None: upstream sets none).
UPSTREAM_PIXELS = {
    "realworldqa": {"min_pixels": 768 * 28 * 28, "max_pixels": 5120 * 28 * 28},
    "mathvision": {"min_pixels": 768 * 28 * 28, "max_pixels": 5120 * 28 * 28},
    "odinw13": {"min_pixels": 768 * 32 * 32, "max_pixels": 12800 * 32 * 32},
    "videomme": {"video_fps": 2.0, "video_min_pixels": 3584, "video_max_pixels": 512 * 28 * 28, "video_min_frames": 4,
                 "video_max_frames": 512, "video_total_pixels": 19267584},
    "mmmu": None,
    "mmmu_pro": None,
}  # fmt: skip


@pytest.mark.parametrize("name", list(UPSTREAM_PIXELS))
def test_one_pixel_policy_for_every_benchmark(tmp_path, name):
    from qwenvl.evaluation.registry import BENCHMARKS, get

    assert set(BENCHMARKS) == set(UPSTREAM_PIXELS)
    benchmark = get(name)
    checkpoint = _checkpoint(tmp_path / "ckpt", 2 * 32 * 32, 4 * 32 * 32)
    saved = json.loads((checkpoint / "qwenvl_preprocessing.json").read_text())
    video = "video" in benchmark.pixels.media

    def values(p: runner.Pixels) -> dict:
        keys = ("video_fps", "video_min_pixels", "video_max_pixels", "video_min_frames", "video_max_frames") if video \
            else ("min_pixels", "max_pixels")  # fmt: skip
        return {**{k: getattr(p.budget, k) for k in keys}, **({"video_total_pixels": p.video_total_pixels}
                                                              if video else {})}  # fmt: skip

    ckpt = runner.resolve_pixels(benchmark, str(checkpoint), None)
    assert ckpt.policy == "checkpoint"
    assert values(ckpt) == {k: saved.get(k) for k in values(ckpt)}  # the saved budget, nothing of upstream's

    preset = runner.resolve_pixels(benchmark, str(checkpoint), "think")
    if UPSTREAM_PIXELS[name] is None:
        assert preset.policy == "checkpoint" and values(preset) == values(ckpt)
    else:
        assert preset.policy == "upstream" and values(preset) == UPSTREAM_PIXELS[name]

    flags = runner.resolve_pixels(benchmark, str(checkpoint), "think", {"max_pixels": 13000 * 32 * 32})
    key = "video_max_pixels" if video else "max_pixels"
    assert flags.policy == "flags" and getattr(flags.budget, key) == 13000 * 32 * 32
    assert flags.entry[key] == 13000 * 32 * 32 and flags.entry["policy"] == "flags"
    # A released checkpoint (no saved budget): qwen_vl_utils' defaults, i.e. nothing set.
    bare = runner.resolve_pixels(benchmark, str(tmp_path), None)
    assert bare.policy == "checkpoint" and not any(values(bare).values())


@pytest.mark.parametrize(
    "name, flag",
    [("mathvision", "--num-samples"), ("mathvision", "--limit"), ("videomme", "--max-samples"),
     ("realworldqa", "--limit"), ("odinw13", "--limit"), ("mmmu", "--limit"), ("mmmu_pro", "--limit")],
)  # fmt: skip
def test_every_sample_limit_flag_is_the_one_typed_option(name, flag):
    from qwenvl.evaluation.command import build_parser, dataclass_from_args
    from qwenvl.evaluation.registry import get

    args = build_parser(get(name)).parse_args(["infer", "--output-file", "o", "--data-dir", "d", flag, "3"])
    assert dataclass_from_args(InferOptions, args).limit == 3


def test_mmmu_limits_per_subject():
    from qwenvl.evaluation.registry import get

    ids = [f"validation_Art_{i}" for i in range(1, 4)] + [f"validation_Math_{i}" for i in range(1, 4)]
    assert get("mmmu").limit(ids, 2) == ["validation_Art_1", "validation_Art_2", "validation_Math_1",
                                         "validation_Math_2"]  # fmt: skip
    assert get("realworldqa").limit(ids, 2) == ids[:2]


def test_eval_of_a_missing_results_file_says_so(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        runner.evaluate(FAKE, tmp_path / "nope.jsonl", tmp_path / "s.json")
