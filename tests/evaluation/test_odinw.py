"""ODinW-13: box parsing through the grounding module, coordinates back to the original image per family, COCO
mAP with pycocotools (name-based vs upstream's positional categories, box order with score 1.0), the flat config
read without running it, and infer -> eval on a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from qwenvl.evaluation.odinw import evaluate_dataset, parse_boxes, read_config, to_original


RUN = Path(__file__).resolve().parents[2] / "evaluation" / "ODinW-13" / "run_odinw.py"


def _coco(path: Path, images: list[tuple[int, str, int, int]], cats: list[tuple[int, str]], anns: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "categories": [{"id": i, "name": n} for i, n in cats],
        "annotations": [{"id": k + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for k, (img, cat, box) in enumerate(anns)],
    }))  # fmt: skip


def _rel(box_xywh: list[float], w: int, h: int) -> list[int]:
    x, y, bw, bh = box_xywh
    return [round(x / w * 1000), round(y / h * 1000), round((x + bw) / w * 1000), round((y + bh) / h * 1000)]


def _record(img_id: int, response: str, w: int, h: int, family: str = "qwen3_vl", rw: int = 0, rh: int = 0) -> dict:
    return {"img_id": img_id, "response": response, "width": w, "height": h, "family": family,
            "resized_width": rw or w, "resized_height": rh or h}  # fmt: skip


def test_parsing_formats():
    for text in ('```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "Crab"}]\n```',
                 "Here they are: [{'bbox_2d': [1, 2, 30, 40], 'label': 'Crab'}] done",
                 '{"bbox_2d": [1, 2, 30, 40], "label": "Crab", "visible": true, "note": null}'):  # fmt: skip
        assert parse_boxes(text) == ([([1.0, 2.0, 30.0, 40.0], "Crab")], True), text
    assert parse_boxes('[{"bbox_2d": [1, 2, 30], "label": "Crab"}]') == ([], False)  # 3 numbers: unreadable
    assert parse_boxes("[]") == ([], True) and parse_boxes("I see no crabs.") == ([], False)
    assert parse_boxes('[{"bbox_2d": [1, 2, 3, 4]}]') == ([([1.0, 2.0, 3.0, 4.0], "")], True)  # no label: kept, ""


def test_coordinates_by_family():
    record = _record(1, "", 640, 480, "qwen3_vl")
    assert to_original([500, 500, 1000, 1000], record, "auto") == [320.0, 240.0, 640.0, 480.0]
    resized = _record(1, "", 640, 480, "qwen2_5_vl", rw=1024, rh=768)
    assert to_original([512, 384, 1024, 768], resized, "auto") == [320.0, 240.0, 640.0, 480.0]


def test_map_name_mapping_box_order_and_empty(tmp_path):
    ann = tmp_path / "shell.json"
    # Category ids not in the class order: Crab is 2, Lobster 1.
    _coco(ann, [(1, "a.jpg", 640, 480), (2, "b.jpg", 416, 416), (3, "c.jpg", 1000, 500)],
          [(1, "Lobster"), (2, "Crab")], [(1, 2, [64, 48, 128, 96]), (2, 1, [10, 10, 100, 200])])  # fmt: skip
    classes = ["Crab", "Lobster"]
    crab, lobster = _rel([64, 48, 128, 96], 640, 480), _rel([10, 10, 100, 200], 416, 416)
    false_box = [900, 900, 990, 990]

    def answer(*boxes: tuple[list[int], str]) -> str:
        return json.dumps([{"bbox_2d": b, "label": label} for b, label in boxes])

    perfect = [_record(1, answer((crab, "crab")), 640, 480), _record(2, answer((lobster, "Lobster")), 416, 416),
               _record(3, "[]", 1000, 500)]  # fmt: skip
    official = evaluate_dataset("Shellfish", ann, classes, perfect, "auto", "official")
    assert official["mAP"] == pytest.approx(1.0) and official["parse_failures"] == 0  # mis-cased "crab" matched
    upstream = evaluate_dataset("Shellfish", ann, classes, perfect, "auto", "upstream")
    assert upstream["mAP"] == 0.0  # positional: Crab -> category 1 (Lobster), Lobster -> 2
    assert evaluate_dataset("Shellfish", ann, classes, perfect, "absolute", "official")["mAP"] < 0.1  # wrong scale
    # Every box scores 1.0: a false positive written before the true one halves the crab's AP, after it does not.
    before = [_record(1, answer((false_box, "Crab"), (crab, "Crab")), 640, 480), *perfect[1:]]
    after = [_record(1, answer((crab, "Crab"), (false_box, "Crab")), 640, 480), *perfect[1:]]
    ap_before = evaluate_dataset("Shellfish", ann, classes, before, "auto", "official")["mAP"]
    ap_after = evaluate_dataset("Shellfish", ann, classes, after, "auto", "official")["mAP"]
    assert ap_after == pytest.approx(1.0) and ap_before == pytest.approx(0.75, abs=0.01)  # mean of 0.5 and 1.0
    # No prediction at all: mAP 0, not a crash; unreadable answers and unknown labels are counted.
    empty = [_record(1, "I cannot see.", 640, 480), _record(2, answer((lobster, "Shrimp")), 416, 416)]
    result = evaluate_dataset("Shellfish", ann, classes, empty, "auto", "official")
    assert result["mAP"] == 0.0 and result["parse_failures"] == 1 and result["unknown_labels"] == 1


def test_flat_config_is_read_not_run(tmp_path):
    config = tmp_path / "odinw13_config.py"
    config.write_text(
        "dataset_prefixes = ['Shell']\n"
        "datasets = [dict(type='CocoDataset', metainfo=dict(classes=('Crab', 'Lobster')),\n"
        "                 data_root='/x/data/odinw/Shell/raw/', ann_file='valid/ann.json', data_prefix=dict(img='valid/'))]\n"
        "import os; os.system('touch " + str(tmp_path / "PWNED") + "')\n"
    )
    assert read_config(config, str(tmp_path)) == {
        "Shell": ("Shell/raw/", "valid/ann.json", "valid/", ["Crab", "Lobster"])
    }
    assert not (tmp_path / "PWNED").exists()
    config.write_text("base = '/x/'\ndataset_prefixes = ['S']\ndatasets = [dict(data_root=base + 'data/odinw/S/')]\n")
    with pytest.raises(ValueError, match="only literals and dict"):
        read_config(config, str(tmp_path))


@pytest.mark.slow
def test_infer_and_eval(tiny_checkpoints, tmp_path):
    data = tmp_path / "odinw"
    root = data / "Shell" / "raw"
    (root / "valid").mkdir(parents=True)
    for name, size in (("a.jpg", (640, 480)), ("b.jpg", (416, 416)), ("c.jpg", (1000, 500))):
        Image.new("RGB", size, (90, 40, 20)).save(root / "valid" / name)
    _coco(root / "valid" / "ann.json", [(1, "a.jpg", 640, 480), (2, "b.jpg", 416, 416), (3, "c.jpg", 1000, 500)],
          [(1, "Crab"), (2, "Sea-Lobster")], [(1, 1, [64, 48, 128, 96])])  # fmt: skip
    (data / "odinw13_config.py").write_text(
        "dataset_prefixes = ['Shell']\ndatasets = [dict(metainfo=dict(classes=('Crab', 'Sea-Lobster')),\n"
        "    data_root='data/odinw/Shell/raw/', ann_file='valid/ann.json', data_prefix=dict(img='valid/'))]\n"
    )
    results = tmp_path / "odinw.jsonl"
    run = subprocess.run([sys.executable, str(RUN), "infer", "--model-path", str(tiny_checkpoints["qwen3_vl"]),
                          "--data-dir", str(data), "--output-file", str(results), "--max-new-tokens", "8"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [(x["id"], x["family"]) for x in lines] == [("Shell/1", "qwen3_vl"), ("Shell/2", "qwen3_vl"),
                                                       ("Shell/3", "qwen3_vl")]  # fmt: skip
    assert (lines[0]["resized_width"], lines[0]["resized_height"]) == (1024, 768)  # 640x480 at 768..12800 tokens
    scores = tmp_path / "map.json"
    ev = subprocess.run([sys.executable, str(RUN), "eval", "--input-file", str(results), "--data-dir", str(data),
                         "--output-file", str(scores)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    report = json.loads(scores.read_text())
    assert report["datasets"]["Shell"]["images"] == 3 and "Average" in ev.stdout
