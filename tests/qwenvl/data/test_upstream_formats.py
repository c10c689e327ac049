"""Upstream's data conventions: pre-packed annotation files (a JSON list of lists), ``name%N`` sampling (floor, as
upstream's ``int(len * rate)``), and the media root of an annotation file given directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl.data.annotations import AnnotationError
from qwenvl.data.registry import load_records, sample_indices


DEMO = Path(__file__).resolve().parents[3] / "qwen-vl-finetune" / "qwenvl" / "data" / "demo"
IMAGES = sorted(p.name for p in (DEMO / "images").iterdir())


def _record(i: int) -> dict:
    return {"image": f"images/{IMAGES[i % len(IMAGES)]}",
            "conversations": [{"from": "human", "value": f"<image>\nShape {i}?"}, {"from": "gpt", "value": "A shape."}]}  # fmt: skip


@pytest.fixture
def packed_file(tmp_path) -> Path:
    """Upstream's tools/pack_data.py layout: packs of 3, 2 and 1 records."""
    path = tmp_path / "demo_pack.json"
    path.write_text(json.dumps([[_record(0), _record(1), _record(2)], [_record(3), _record(4)], [_record(5)]]))
    return path


def test_upstream_packed_file_is_read_as_packs_or_records(packed_file):
    records = load_records(str(packed_file), media_root=str(DEMO))
    assert len(records) == 6
    assert [r.pack for r in records] == [0, 0, 0, 1, 1, 2]
    assert records[0].id.endswith("demo_pack.json[0][0]") and records[4].id.endswith("demo_pack.json[1][1]")
    # %N takes whole packs, never splitting one
    half = load_records(f"{packed_file}%50", media_root=str(DEMO))
    packs = {}
    for r in half:
        packs.setdefault(r.pack, []).append(r)
    assert len(packs) == 1 and len(next(iter(packs.values()))) in (1, 2, 3)


def test_packs_train_together_with_data_packing(packed_file, tiny_checkpoints, tmp_path):
    from qwenvl.train.train_qwen import train

    out = tmp_path / "out"
    train([
        "--model_name_or_path", str(tiny_checkpoints["qwen2_vl"]), "--dataset_use", str(packed_file),
        "--media_root", str(DEMO), "--output_dir", str(out), "--use_cpu", "True", "--report_to", "none",
        "--data_packing", "True", "--max_packed_tokens", "2048", "--model_max_length", "1024",
        "--per_device_train_batch_size", "1", "--num_train_epochs", "1", "--logging_steps", "1",
        "--save_strategy", "no", "--dataloader_num_workers", "0", "--seed", "1",
    ])  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    per_step = sorted(h["images_per_step"] for h in history if "images_per_step" in h)
    assert per_step == [1, 2, 3]  # one step per upstream pack, each pack whole in its row


def test_percent_sampling_floors_like_upstream():
    # upstream: random.sample(ann, int(len(ann) * rate)); 7 records at 50% -> 3, at 99% -> 6, at 100% -> 7
    assert len(sample_indices(7, 0.5, 0, "x")) == 3
    assert len(sample_indices(7, 0.99, 0, "x")) == 6
    assert len(sample_indices(7, 1.0, 0, "x")) == 7
    assert len(sample_indices(10, 0.3, 0, "x")) == 3  # 10 * 0.3 = 2.9999999999999996 in floats: still 3
    # beyond upstream (documented): >100 repeats, decimals work, the same subset on every call (every rank)
    assert len(sample_indices(4, 2.5, 0, "x")) == 10
    assert len(sample_indices(8, 0.125, 0, "x")) == 1
    assert sample_indices(100, 0.37, 5, "x") == sample_indices(100, 0.37, 5, "x")


def test_annotation_file_given_directly_uses_its_folder_or_media_root(tmp_path):
    path = tmp_path / "single_images.json"
    path.write_text(json.dumps([_record(0)]))  # paths relative to the demo folder, as upstream's data_path
    with pytest.raises(AnnotationError, match="image file not found.*--media_root DIR for a file given directly"):
        load_records(str(path))
    assert len(load_records(str(path), media_root=str(DEMO))) == 1


def test_rank_balance_reports_the_wait_for_the_slowest_rank():
    from qwenvl.data.lint import rank_balance

    (even,) = rank_balance([500] * 8, world_size=4, per_rank=1)
    assert "ranks wait 0.0%" in even and "median 1.00x" in even and "epoch tokens per rank 1000-1000" in even
    # one long pack among short ones, 4 ranks, one step: the step lasts 1000 while the mean rank has 257.5 to do
    (skewed,) = rank_balance([1000, 10, 10, 10], world_size=4, per_rank=1)
    assert "ranks wait 74.2%" in skewed and "max 3.88x" in skewed and "epoch tokens per rank 10-1000" in skewed
    # 3 items on 2 ranks: 2 steps, the last one padded with a repeated item, as the sampler does
    (padded,) = rank_balance([100, 100, 100], world_size=2, per_rank=1)
    assert "2 steps of 1 per rank" in padded and "epoch tokens per rank 200-200" in padded
