"""Annotations, registry, label masks, packing planner, dataset policies and the lint CLI."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from qwenvl.data.annotations import AnnotationError, normalise_record
from qwenvl.data.dataset import (
    LengthCache,
    PackedDataset,
    Quarantine,
    SupervisedDataset,
    estimate_length,
    prefilter_overlong,
)
from qwenvl.data.encode import IGNORE_INDEX, MediaLoadError, SampleEncoder
from qwenvl.data.packing import packing_efficiency, plan_packs
from qwenvl.data.registry import DEMO_DIR, load_records, parse_dataset_use, sample_indices
from qwenvl.model.budget import TRAINING_BUDGET
from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_processor


IMAGE = sorted((DEMO_DIR / "images").iterdir())[0]


# ----------------------------------------------------------------------------------------------- annotations


def test_upstream_and_messages_formats_give_the_same_messages(tmp_path):
    upstream = {
        "image": [IMAGE.name, IMAGE.name],
        "conversations": [
            {"from": "human", "value": "Look <image> and <image>\nsame?"},
            {"from": "gpt", "value": "Yes."},
        ],
    }
    messages = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "image": IMAGE.name},
                    {"type": "text", "text": "and"},
                    {"type": "image_url", "image_url": {"url": str(IMAGE)}},
                    {"type": "text", "text": "same?"},
                ],
            },
            {"role": "assistant", "content": "Yes."},
        ]
    }
    a = normalise_record(upstream, "a.json[0]", str(IMAGE.parent))
    b = normalise_record(messages, "b.jsonl:1", str(IMAGE.parent))
    assert a.messages == b.messages
    assert a.messages[0]["content"][1] == {"type": "image", "image": str(IMAGE)}
    assert [m["type"] for m in a.media()] == ["image", "image"]


@pytest.mark.parametrize(
    "record, match",
    [
        (
            {"image": IMAGE.name, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}]},
            "1 image\\(s\\) listed but 0 <image> tag",
        ),
        (
            {"conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "a"}]},
            "more <image> tags than the 0",
        ),
        (
            {
                "image": "missing.png",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}],
            },
            "image file not found",
        ),
        (
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            "turn 0 is assistant, expected user",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
            "turn 1 is user, expected assistant",
        ),
        ({"conversations": [{"from": "human", "value": "a"}]}, "must end with an answer"),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "<image>"}]},
            "assistant turn contains",
        ),
        ({"conversations": [{"from": "robot", "value": "a"}]}, "unknown role 'robot'"),
        ({"text": "hi"}, "neither 'conversations' nor 'messages'"),
    ],
)
def test_bad_records_name_the_record_and_fix(record, match):
    with pytest.raises(AnnotationError, match="data.jsonl:7: .*" + match):
        normalise_record(record, "data.jsonl:7", str(IMAGE.parent))


def test_registry_and_seeded_sampling(tmp_path):
    assert parse_dataset_use("a, b%50,c%250") == [("a", 1.0), ("b", 0.5), ("c", 2.5)]
    with pytest.raises(ValueError, match="empty"):
        parse_dataset_use(" , ")
    # The same on every call (rank) for a seed, different for another seed; >100% repeats.
    assert sample_indices(100, 0.3, 42, "x") == sample_indices(100, 0.3, 42, "x")
    assert sample_indices(100, 0.3, 42, "x") != sample_indices(100, 0.3, 7, "x")
    assert len(sample_indices(10, 2.5, 0, "x")) == 25
    records = load_records("demo_images,demo_video,demo_messages%200")
    assert len(records) == 6 + 2 + 6
    # A path works as a dataset too, with its folder as media root; an unknown name says how to register one.
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}) + "\n"
    )
    assert len(load_records(str(path))) == 1
    with pytest.raises(ValueError, match="not registered.*--dataset_registry"):
        load_records("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "gpt", "value": "x"}]}\n')
    with pytest.raises(AnnotationError, match="(?s)1 invalid record.*bad.jsonl:1"):
        load_records(str(bad))


# ----------------------------------------------------------------------------------------------- label masks


@pytest.fixture(scope="module")
def encoders(tiny_checkpoints):
    return {
        f: SampleEncoder(load_processor(str(p)), FAMILIES[f], TRAINING_BUDGET) for f, p in tiny_checkpoints.items()
    }


def test_labels_supervise_only_assistant_turns(encoders, family):
    encoder = encoders[family]
    tok = encoder.processor.tokenizer
    answers = ["The circle is red.", "Yes, the assistant said so."]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "image", "image": str(IMAGE)}, {"type": "text", "text": "assistant colour?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answers[0]}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answers[1]}]},
    ]
    sample = encoder(messages, "t")
    ids, labels = sample["input_ids"], sample["labels"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = []
    # Thinking families (Qwen3.5), as the official template renders: the answer after the last user turn gets an
    # empty think block, supervised with it (the model learns to close it); earlier answers are plain.
    rendered = [answers[0], "<think>\n\n</think>\n\n" + answers[1] if encoder.family.thinks_by_default else answers[1]]
    for answer in rendered:
        expected += tok.encode(answer, add_special_tokens=False) + [im_end]
    assert labels[labels != IGNORE_INDEX].tolist() == expected
    # Supervised positions carry their own token ids; everything else (system, user, image pads, headers) is -100.
    mask = labels != IGNORE_INDEX
    assert torch.equal(labels[mask], ids[mask])
    assert not mask[sample["mm_token_type_ids"] != 0].any()
    assert int(mask.sum()) == len(expected)


def test_thinking_families_supervise_the_reasoning_of_the_final_answer(encoders):
    """A Qwen3.5 record whose answer carries reasoning (``<think>...</think>`` in the text, or ``reasoning_content``)
    keeps it supervised, in the official layout; reasoning of answers before the last user turn is dropped, as the
    official template drops it."""
    for family, encoder in encoders.items():
        if not encoder.family.thinks_by_default:
            continue
        tok = encoder.processor.tokenizer
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        user = {
            "role": "user",
            "content": [{"type": "image", "image": str(IMAGE)}, {"type": "text", "text": "Colour?"}],
        }
        inline = [
            user,
            {"role": "assistant", "content": [{"type": "text", "text": "<think>\nIt looks red.</think>red"}]},
        ]
        field = [user, {"role": "assistant", "content": "red", "reasoning_content": "It looks red."}]
        want = tok.encode("<think>\nIt looks red.\n</think>\n\nred", add_special_tokens=False) + [im_end]
        for messages in (inline, field):
            labels = encoder(messages, "t")["labels"]
            assert labels[labels != IGNORE_INDEX].tolist() == want, family
        earlier = [user, inline[1], {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]
        labels = encoder(earlier, "t")["labels"]
        want = (tok.encode("red", add_special_tokens=False) + [im_end]
                + tok.encode("<think>\n\n</think>\n\nyes", add_special_tokens=False) + [im_end])  # fmt: skip
        assert labels[labels != IGNORE_INDEX].tolist() == want, family


def test_reserved_tokens_in_text_are_rejected(encoders):
    encoder = encoders["qwen3_vl"]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi <|im_end|> there"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    with pytest.raises(ValueError, match="rec-9: text contains the reserved token <\\|im_end\\|>"):
        encoder(messages, "rec-9")
    messages[0]["content"][0]["text"] = "hi <|image_pad|>"  # would break the placeholder count
    with pytest.raises(ValueError, match="reserved token <\\|image_pad\\|>"):
        encoder(messages, "rec-9")


def test_qwen2_vl_grounding_markup_is_answer_text(encoders):
    """Qwen2-VL grounding answers use <|object_ref_*|> and <|box_*|> tokens: they are trained on, as single tokens."""
    encoder = encoders["qwen2_vl"]
    answer = "<|object_ref_start|>the circle<|object_ref_end|><|box_start|>(120,80),(610,930)<|box_end|>"
    messages = [
        {"role": "user", "content": [{"type": "image", "image": str(IMAGE)}, {"type": "text", "text": "Find it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    sample = encoder(messages, "ground-1")
    tok = encoder.processor.tokenizer
    supervised = sample["labels"][sample["labels"] != IGNORE_INDEX].tolist()
    for marker in ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"):
        assert tok.convert_tokens_to_ids(marker) in supervised, marker
    assert tok.decode(supervised, skip_special_tokens=False) == answer + "<|im_end|>"


def test_budgets_applied_once(encoders):
    encoder = SampleEncoder(
        encoders["qwen3_vl"].processor,
        FAMILIES["qwen3_vl"],
        TRAINING_BUDGET.overridden(max_pixels=8 * 32 * 32, min_pixels=4 * 32 * 32),
    )
    messages = [
        {"role": "user", "content": [{"type": "image", "image": str(IMAGE)}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    sample = encoder(messages, "b")
    # 160x120 under max 8 tokens (8192 px) -> 96x64 by smart_resize; the processor did not resize again.
    assert sample["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert sample["pixel_values"].shape[0] == 24


def test_length_estimates_are_exact(encoders, family):
    encoder = encoders[family]
    for record in load_records("demo_images,demo_video,demo_messages"):
        assert estimate_length(record, encoder).total == len(encoder(record.messages, record.id)["input_ids"]), (
            record.id
        )


def test_length_cache_reuses_and_invalidates(encoders, tmp_path):
    encoder = encoders["qwen3_vl"]
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "img" / "a.png")
    raw = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "x"}]}
    records = [normalise_record(raw, "d.jsonl:1", str(tmp_path / "img"))] + load_records("demo_video")
    cache_path = tmp_path / "out" / "length_cache.json"
    first = LengthCache(cache_path, encoder).estimates(records)
    assert [e.total for e in first] == [estimate_length(r, encoder).total for r in records]
    data = json.loads(cache_path.read_text())
    assert len(data["entries"]) == len(records)

    # Read back from the file, not measured: an entry edited in the file is what comes back.
    key = records[1].key
    data["entries"][key] = [1, 2, 3]
    cache_path.write_text(json.dumps(data))
    again = LengthCache(cache_path, encoder)
    assert again.loaded == len(records) and again.estimates(records)[1].total == 6

    # A replaced image (other size on disk) is measured again ...
    Image.new("RGB", (512, 384), "blue").save(tmp_path / "img" / "a.png")
    reloaded = [normalise_record(raw, "d.jsonl:1", str(tmp_path / "img"))]  # as the next run loads it
    remeasured = LengthCache(cache_path, encoder).estimates(reloaded)[0]
    assert remeasured.image_tokens > first[0].image_tokens
    # ... and other budgets ignore the whole cache.
    smaller = SampleEncoder(
        encoder.processor, encoder.family, TRAINING_BUDGET.overridden(max_pixels=32 * 32 * 4, min_pixels=32 * 32)
    )
    assert LengthCache(cache_path, smaller).loaded == 0


# ----------------------------------------------------------------------------------------------- packing planner


def test_planner_best_fit_decreasing():
    assert plan_packs([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(10, 60), rng.randint(300, 900)]) for _ in range(500)]
    packs = plan_packs(lengths, 1024, window=128)
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in p) <= 1024 for p in packs)
    assert packing_efficiency(lengths, packs, 1024) > 0.9
    with pytest.raises(ValueError, match="longer than --max_packed_tokens=100"):
        plan_packs([50, 101], 100)


# ----------------------------------------------------------------------------------------------- dataset policies


def _records_with_broken_image(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    good = {
        "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "red"}],
        "image": str(IMAGE),
    }
    bad = {
        "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "red"}],
        "image": str(broken),
    }
    return [
        normalise_record(good, "d.jsonl:1"),
        normalise_record(bad, "d.jsonl:2"),
        normalise_record(good, "d.jsonl:3"),
    ]


def test_bad_media_error_and_skip_with_quarantine(tmp_path, encoders):
    records = _records_with_broken_image(tmp_path)
    encoder = encoders["qwen2_vl"]
    strict = SupervisedDataset(records, encoder)
    assert strict[0]["sample_id"] == "d.jsonl:1"
    with pytest.raises(MediaLoadError, match="d.jsonl:2: cannot load .*broken.png.*--bad_media skip"):
        strict[1]
    quarantine = Quarantine(tmp_path / "out" / "quarantine.jsonl")
    lenient = SupervisedDataset(records, encoder, bad_media="skip", quarantine=quarantine, seed=5)
    items = [lenient[i] for i in range(3)]
    # The bad one is replaced by a good sample (seeded by index), the others are themselves.
    assert items[1]["sample_id"] in ("d.jsonl:1", "d.jsonl:3")
    assert [items[0]["sample_id"], items[2]["sample_id"]] == ["d.jsonl:1", "d.jsonl:3"]
    again = SupervisedDataset(records, encoder, bad_media="skip", quarantine=Quarantine(None), seed=5)
    assert again[1]["sample_id"] == items[1]["sample_id"]  # the same pick on another rank / a resumed run
    lines = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert lines == [
        {"key": lenient.keys[1], "id": "d.jsonl:2", "path": str(tmp_path / "broken.png"), "kind": "bad_media",
         "reason": lines[0]["reason"]}
    ]  # fmt: skip
    assert "cannot identify" in lines[0]["reason"]
    assert quarantine.summary() == {"bad_media": 1}
    assert lenient.encode(1) is None  # a later epoch: skipped again, not written twice
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 1
    events = quarantine.replacement_events()
    assert [(e["id"], e["by"]) for e in events] == [("d.jsonl:2", items[1]["sample_id"])]


def test_quarantine_is_keyed_by_content_not_by_place(tmp_path, encoders):
    records = _records_with_broken_image(tmp_path)
    encoder = encoders["qwen2_vl"]
    path = tmp_path / "out" / "quarantine.jsonl"
    first = SupervisedDataset(records, encoder, bad_media="skip", quarantine=Quarantine(path))
    assert first.encode(1) is None
    # The file is edited (a line removed, so every later record moves up one line): the good records are kept,
    # the bad one is still known without being opened.
    conv = [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "red"}]
    moved = [normalise_record({"conversations": conv, "image": str(tmp_path / "broken.png")}, "d.jsonl:1"),
             normalise_record({"conversations": conv, "image": str(IMAGE)}, "d.jsonl:2")]  # fmt: skip
    edited = SupervisedDataset(moved, encoder, bad_media="skip", quarantine=Quarantine(path))
    assert edited.encode(0) is None and edited.encode(1)["sample_id"] == "d.jsonl:2"
    # The image is repaired: its size and mtime change, so the record is tried again and trains.
    shutil.copyfile(IMAGE, tmp_path / "broken.png")
    reloaded = [normalise_record({"conversations": conv, "image": str(IMAGE)}, "d.jsonl:1"),
                normalise_record({"conversations": conv, "image": str(tmp_path / "broken.png")}, "d.jsonl:2")]  # fmt: skip
    repaired = SupervisedDataset(reloaded, encoder, bad_media="skip", quarantine=Quarantine(path))
    assert repaired.encode(1)["sample_id"] == "d.jsonl:2"
    # --bad_media error ignores the list (a good file raises nothing).
    assert SupervisedDataset(records, encoder, quarantine=Quarantine(path))[1] is not None


def test_quarantine_sees_entries_other_processes_append(tmp_path):
    path = tmp_path / "q.jsonl"
    mine, other = Quarantine(path), Quarantine(path)  # e.g. the trainer and a dataloader worker
    other.add("ka", "a", "x.png", "broken", "bad_media")
    mine.add("ka", "a", "x.png", "broken", "bad_media")  # already there: not written again
    with path.open("a") as f:
        f.write('{"key": "kb", "id": "b", "path": "", "kind": "overlong", "reason": "r"}\n{"key": "kc", "id": "c"')
    assert mine.is_known("kb", "overlong") and not mine.is_known("kc", "bad_media")
    assert mine.summary() == {"bad_media": 1, "overlong": 1}
    assert len(path.read_text().splitlines()) == 3


def test_overlong_policies(tmp_path, encoders):
    encoder = encoders["qwen3_vl"]
    records = load_records("demo_images")  # 45-token single-image samples and a 102-token two-image one
    estimates = [estimate_length(r, encoder) for r in records]
    with pytest.raises(ValueError, match="1 sample\\(s\\) exceed --model_max_length 60.*img-pair"):
        prefilter_overlong(records, estimates, 60, "error", Quarantine(None))
    q = Quarantine(tmp_path / "q.jsonl")
    kept, _ = prefilter_overlong(records, estimates, 60, "skip", q)
    assert len(kept) == 5 and q.summary() == {"overlong": 1}

    pair = [r for r in records if "img-pair" in r.id]
    with pytest.raises(ValueError, match="102 tokens exceeds --model_max_length 60"):
        SupervisedDataset(pair, encoder, model_max_length=60)[0]
    # truncate_text: cut after the last vision token, keeping answer tokens; impossible -> skipped.
    cut = SupervisedDataset(pair, encoder, model_max_length=90, overlong="truncate_text")[0]
    assert len(cut["input_ids"]) == 90 and cut["position_ids"].shape == (4, 90)
    assert (cut["labels"] != IGNORE_INDEX).any()
    q2 = Quarantine(tmp_path / "q2.jsonl")
    assert (
        SupervisedDataset(pair, encoder, model_max_length=40, overlong="truncate_text", quarantine=q2).encode(0)
        is None
    )
    assert q2.summary() == {"overlong": 1}


def test_packed_dataset_items_are_packs(encoders):
    encoder = encoders["qwen2_5_vl"]
    records = load_records("demo_images,demo_messages")
    lengths = [estimate_length(r, encoder).total for r in records]
    packed = PackedDataset(SupervisedDataset(records, encoder), lengths, max_packed_tokens=700)
    assert sum(len(p) for p in packed.packs) == len(records)
    for i in range(len(packed)):
        pack = packed[i]
        assert sum(len(s["input_ids"]) for s in pack) <= 700


# ----------------------------------------------------------------------------------------------- lint CLI


def test_lint_cli_on_bundled_dataset(tiny_checkpoints, tmp_path):
    cmd = [sys.executable, "-m", "qwenvl.data.lint", "--dataset_use", "demo_images,demo_video,demo_messages",
           "--model_name_or_path", str(tiny_checkpoints["qwen3_vl"]), "--model_max_length", "300", "--max_packed_tokens", "1024"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "11 samples" in out and "length histogram" in out
    assert "3 sample(s) over --model_max_length 300: would stop training" in out
    assert "efficiency" in out and "no problems found" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(
            {
                "image": "gone.png",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
            }
        )
        + "\n"
    )
    result = subprocess.run(cmd[:4] + [str(bad)] + cmd[5:], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "image file not found" in result.stdout
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes((DEMO_DIR / "images" / "1_blue_square.jpg").read_bytes()[:900])
    record = {
        "image": str(truncated),
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
    }
    bad.write_text(json.dumps(record) + "\n")
    assert subprocess.run(cmd[:4] + [str(bad)] + cmd[5:], capture_output=True, timeout=300).returncode == 0
    result = subprocess.run(
        cmd[:4] + [str(bad)] + cmd[5:] + ["--verify_media"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "trunc.jpg" in result.stdout


def _answer_record(tmp_path, answer: str, size=(2000, 1000)) -> object:
    path = tmp_path / "photo.png"
    Image.new("RGB", size, "white").save(path)
    raw = {"messages": [
        {"role": "user", "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": "Find it."}]},
        {"role": "assistant", "content": answer},
    ]}  # fmt: skip
    return normalise_record(raw, "g.jsonl:1")


def test_lint_grounding_conventions(tmp_path):
    from qwenvl.data.lint import check_grounding

    budget = TRAINING_BUDGET.overridden(max_pixels=256 * 28 * 28)
    q3, q25, q2 = FAMILIES["qwen3_vl"], FAMILIES["qwen2_5_vl"], FAMILIES["qwen2_vl"]
    ok = '[{"bbox_2d": [100, 200, 900, 800], "label": "cat"}, {"point_2d": [500, 500]}]'
    assert check_grounding(_answer_record(tmp_path, ok), q3, budget) == []
    bad = '[{"bbox_2d": [100, 200, 1500, 800], "label": "cat"}, {"bbox_2d": [300, 300, 200, 400]}]'
    problems = check_grounding(_answer_record(tmp_path, bad), q3, budget)
    assert (
        len(problems) == 2 and any("outside 0-1000" in p for p in problems) and any("inverted" in p for p in problems)
    )

    # Qwen2.5-VL: pixels of the resized image. 2000x1000 under 200,704 px: beta = sqrt(2e6 / 200704) = 3.157, so
    # floor(1000 / 3.157 / 28) * 28 = 308 by floor(2000 / 3.157 / 28) * 28 = 616.
    assert check_grounding(_answer_record(tmp_path, '{"bbox_2d": [10, 10, 600, 300]}'), q25, budget) == []
    original = check_grounding(_answer_record(tmp_path, '{"bbox_2d": [100, 100, 1800, 900]}'), q25, budget)
    assert len(original) == 1 and "outside the 616x308 image" in original[0]
    assert "fits the original 2000x1000: scale by 0.308 x 0.308" in original[0]

    qwen2 = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(10,20),(1100,40)<|box_end|>"
    assert "outside 0-1000" in check_grounding(_answer_record(tmp_path, qwen2), q2, budget)[0]
    assert check_grounding(_answer_record(tmp_path, qwen2.replace("1100", "900")), q2, budget) == []
