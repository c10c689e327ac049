"""Bad data never aborts training nor hides good data: a mix of 13 good and 12 bad records of every kind trains on
exactly the good ones with --bad_media skip --bad_records skip (batch size 1 and 2, padded and packed, one rank
and two), the counts in data_report.json are the true ones, and an edited annotation file keeps them true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qwenvl.train.launch import run_training


pytestmark = pytest.mark.slow
DEMO_IMAGES = Path(__file__).resolve().parents[3] / "qwen-vl-finetune" / "qwenvl" / "data" / "demo" / "images"
N_GOOD = 13


def _line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _conv(question: str, answer: str = "It is a shape.") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_mix(root: Path) -> tuple[Path, dict[str, set[str]]]:
    """``mix.jsonl`` with 13 good and 12 bad records, and the expected ids by kind."""
    media = root / "media"
    media.mkdir(parents=True)
    images = sorted(DEMO_IMAGES.iterdir())
    for image in images:
        shutil.copy(image, media / image.name)
    (media / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (media / "empty.jpg").write_bytes(b"")
    lines: list[bytes] = []
    bad_records, bad_media = set(), set()

    def add_bad(content: bytes, kind: str) -> None:
        lines.append(content)
        where = f"{root / 'mix.jsonl'}:{len(lines)}"
        (bad_media if kind == "media" else bad_records).add(where)

    good = iter(range(N_GOOD))

    def add_good() -> None:
        i = next(good)
        record = {"id": f"good-{i}", "image": images[i % len(images)].name,
                  "conversations": _conv(f"<image>\nQuestion {i}: what colour is the shape?")}  # fmt: skip
        lines.append(_line(record))

    bads = [
        (b'{"id": "raw-ff", "conversations": [{"from": "human", "value": "\xff"}]}\n', "record"),
        (
            b'{"id": "surrogate", "image": "0_red_circle.png", "conversations": [{"from": "human", "value": '
            b'"<image>\\ud800 hi"}, {"from": "gpt", "value": "x"}]}\n',
            "record",
        ),  # fmt: skip
        (_line({"id": "missing", "image": "nope.png", "conversations": _conv("<image>\nhi")}), "record"),
        (_line({"id": "tags", "image": "0_red_circle.png", "conversations": _conv("<image><image>\nhi")}), "record"),
        (_line({"id": "empty", "conversations": []}), "record"),
        (
            _line(
                {
                    "id": "assistant-first",
                    "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}],
                }
            ),
            "record",
        ),  # fmt: skip
        (_line({"id": "no-value", "conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}), "record"),
        (b'{"id": "not-json", "conversations": [\n', "record"),
        (_line({"id": "no-turns-key", "text": "hello"}), "record"),
        (
            _line(
                {
                    "id": "media-in-answer",
                    "image": "0_red_circle.png",
                    "conversations": _conv("<image>\nhi", "<image> here"),
                }
            ),
            "record",
        ),  # fmt: skip
        (_line({"id": "corrupt", "image": "corrupt.png", "conversations": _conv("<image>\nWhat is it?")}), "media"),
        (_line({"id": "empty-file", "image": "empty.jpg", "conversations": _conv("<image>\nAnd this?")}), "media"),
    ]
    for k, (content, kind) in enumerate(bads):  # interleaved: 13 good around 12 bad
        add_good()
        add_bad(content, kind)
    add_good()
    assert len(bads) == 12 and next(good, None) is None
    path = root / "mix.jsonl"
    path.write_bytes(b"".join(lines))
    return path, {"records": bad_records, "media": bad_media}


def _run(model: Path, data: Path, out: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    flags = [
        "--model_name_or_path", str(model), "--dataset_use", str(data), "--media_root", str(data.parent / "media"),
        "--output_dir", str(out), "--use_cpu", "True", "--report_to", "none", "--learning_rate", "1e-4",
        "--model_max_length", "1024", "--logging_steps", "1", "--seed", "3", "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--bad_media", "skip", "--bad_records", "skip", "--num_train_epochs", "1", *extra,
    ]  # fmt: skip
    if nproc > 1:
        flags.append("--ddp_find_unused_parameters=False")
    result = run_training(flags, nproc)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _check_report(out: Path, expected: dict[str, set[str]], read: int) -> dict:
    report = json.loads((out / "data_report.json").read_text())
    assert report["records_read"] == read
    assert {r["where"] for r in report["invalid_records"]} == expected["records"]
    assert report["usable_records"] == N_GOOD + len(expected["media"])
    assert report["quarantined"] == {"bad_media": len(expected["media"])}
    skipped = set(report["skipped_ids"])
    assert {s.split(" (")[0] for s in skipped} == expected["records"] | expected["media"]
    assert report["trained_records_this_run"] == N_GOOD  # every good record, and nothing else
    return report


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    return write_mix(tmp_path_factory.mktemp("mix"))


@pytest.mark.parametrize("batch, packed", [(1, False), (2, True)])
def test_a_mix_of_good_and_bad_records_trains_on_exactly_the_good_ones(tiny_checkpoints, mix, tmp_path, batch,
                                                                         packed):  # fmt: skip
    data, expected = mix
    extra = ["--per_device_train_batch_size", str(batch)]
    if packed:
        extra += ["--data_packing", "True", "--max_packed_tokens", "1024"]
    result = _run(tiny_checkpoints["qwen2_5_vl"], data, tmp_path, *extra)
    report = _check_report(tmp_path, expected, read=25)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    if not packed:  # 15 usable items (2 with bad media, replaced), batch 1: 15 full steps
        assert state["global_step"] == 15 and report["replaced"] == 2
        assert all(h["images_per_step"] == 1.0 for h in state["log_history"] if "images_per_step" in h)
    for line in ("not UTF-8 (byte 0xff", "lone surrogate", "image file not found", "more <image> tags",
                 "the conversation is empty", "turn 0 is assistant", "needs 'from' and 'value'", "not valid JSON",
                 "neither 'conversations' nor 'messages'", "an assistant turn contains"):  # fmt: skip
        assert line in result.stderr, line


def test_one_pack_holding_everything_trains_the_good_images_then_an_edit_keeps_counts_true(tiny_checkpoints, mix,
                                                                                             tmp_path):  # fmt: skip
    data, expected = mix
    model = tiny_checkpoints["qwen3_vl"]
    extra = ["--per_device_train_batch_size", "1", "--data_packing", "True", "--max_packed_tokens", "8192"]
    _run(model, data, tmp_path, *extra)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert [h["images_per_step"] for h in state["log_history"] if "images_per_step" in h] == [N_GOOD]
    _check_report(tmp_path, expected, read=25)

    # Edit the file: delete the bad record two lines before the first bad-media record (every later record, good
    # ones included, moves up one line).
    lines = data.read_bytes().splitlines(keepends=True)
    first_media = min(int(w.rsplit(":", 1)[1]) for w in expected["media"])
    gone = first_media - 2
    removed = f"{data}:{gone}"
    assert removed in expected["records"]
    edited = data.parent / "mix_edited.jsonl"
    edited.write_bytes(b"".join(lines[: gone - 1] + lines[gone:]))

    def shift(where: str) -> str:
        line = int(where.rsplit(":", 1)[1])
        return f"{edited}:{line - 1 if line > gone else line}"

    moved = {"records": {shift(w) for w in expected["records"] - {removed}},
             "media": {shift(w) for w in expected["media"]}}  # fmt: skip
    shutil.move(tmp_path / "quarantine.jsonl", tmp_path / "q.jsonl")
    for name in os.listdir(tmp_path):
        if name != "q.jsonl":
            (tmp_path / name).unlink() if (tmp_path / name).is_file() else shutil.rmtree(tmp_path / name)
    shutil.move(tmp_path / "q.jsonl", tmp_path / "quarantine.jsonl")  # the skip list of the earlier run stays
    result = _run(model, edited, tmp_path, *extra)
    _check_report(tmp_path, moved, read=24)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert [h["images_per_step"] for h in state["log_history"] if "images_per_step" in h] == [N_GOOD]
    assert result.stderr.count("quarantined (bad_media") == 2  # each skip through the quarantine is logged


@pytest.mark.distributed
@pytest.mark.parametrize("packed", [False, True])
def test_two_ranks_batch_two(tiny_checkpoints, mix, tmp_path, packed):
    data, expected = mix
    extra = ["--data_packing", "True", "--max_packed_tokens", "1024"] if packed else []
    _run(tiny_checkpoints["qwen2_5_vl"], data, tmp_path, "--per_device_train_batch_size", "2", *extra, nproc=2)
    _check_report(tmp_path, expected, read=25)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    if not packed:
        assert state["global_step"] == 4  # 15 items over 2 ranks x 2 per batch


def test_lint_reports_every_fault_by_line_and_always_finishes(tiny_checkpoints, mix):
    data, expected = mix
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl.data.lint", "--dataset_use", str(data), "--model_name_or_path",
         str(tiny_checkpoints["qwen2_5_vl"]), "--verify_media", "--media_root", str(data.parent / "media")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{len(expected['records']) + len(expected['media'])} problem(s):" in result.stdout
    for where in expected["records"] | expected["media"]:
        assert f"{where}:" in result.stdout or f"{where} (" in result.stdout, where
    assert f"{N_GOOD + len(expected['media'])} samples" in result.stdout  # the report covers every usable record
