"""ODinW-13: box parsing through the grounding module, coordinates back to the original image per family, COCO
mAP with pycocotools (name-based vs upstream's positional categories, box order with score 1.0), the flat config
read without running it, and infer -> eval on a tiny checkpoint."""

from __future__ import annotations

import json
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
    box = [([1.0, 2.0, 30.0, 40.0], "Crab")]
    # Upstream's reading: fences stripped, the whole rest a Python literal.
    for text in ('```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "Crab"}]\n```',
                 "[{'bbox_2d': [1, 2, 30, 40], 'label': 'Crab'}]"):  # fmt: skip
        assert parse_boxes(text) == (box, True, 0), text
    # Refused by it (the image gets no detections), read by the lenient mode.
    for text in ("Here they are: [{'bbox_2d': [1, 2, 30, 40], 'label': 'Crab'}] done",
                 '{"bbox_2d": [1, 2, 30, 40], "label": "Crab"}',
                 '[{"bbox_2d": [1, 2, 30, 40], "label": "Crab", "visible": false}]'):  # fmt: skip
        assert parse_boxes(text) == ([], False, 0), text
        assert parse_boxes(text, "lenient") == (box, True, 0), text
    assert parse_boxes('[{"bbox_2d": [1, 2, 30], "label": "Crab"}]') == ([], True, 0)  # 3 numbers: entry skipped
    assert parse_boxes("[]") == ([], True, 0) and parse_boxes("I see no crabs.") == ([], False, 0)
    assert parse_boxes('[{"bbox_2d": [1, 2, 3, 4]}]') == ([], False, 0)  # no label: the whole answer is refused
    assert parse_boxes("[{'bbox_2d': [1, 2, 3, 4], 'label': None}, {'bbox_2d': ['a', 2, 3, 4], 'label': 'x'}]") == (
        [],
        True,
        2,
    )  # upstream crashes on these two entries; here they are dropped and counted


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
    assert official["images"] == official["answered"] == 3
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
    from qwenvl.evaluation import odinw, runner
    from qwenvl.evaluation.benchmark import InferOptions
    from qwenvl.inference.config import BackendConfig

    # --preset: upstream's settings, its pixels too (768..12800 tokens of 32x32); the record keeps the size the
    # model saw, which the boxes are scaled back from.
    results = runner.infer(odinw.BENCHMARK, odinw.Options(data_dir=str(data)),
                           BackendConfig(model_path=str(tiny_checkpoints["qwen3_vl"])),
                           InferOptions(str(tmp_path / "odinw.jsonl"), preset="instruct", max_new_tokens=8))  # fmt: skip
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [(x["id"], x["family"]) for x in lines] == [("Shell/1", "qwen3_vl"), ("Shell/2", "qwen3_vl"),
                                                       ("Shell/3", "qwen3_vl")]  # fmt: skip
    assert (lines[0]["resized_width"], lines[0]["resized_height"]) == (1024, 768)  # 640x480 at 768..12800 tokens
    assert lines[0]["pixels"] == {"min_pixels": 768 * 32 * 32, "max_pixels": 12800 * 32 * 32}
    assert json.loads(Path(f"{results}.manifest.json").read_text())["pixel_policy"] == "upstream"
    report = runner.evaluate(odinw.BENCHMARK, results, tmp_path / "map.json",
                             options=odinw.EvalOptions(data_dir=str(data)))  # fmt: skip
    assert report["datasets"]["Shell"]["images"] == 3 and report["answered"] == 3
    assert json.loads((tmp_path / "map.json").read_text())["Average"] == report["Average"]


# ----------------------------------------------------------------------------------------------- golden scenarios
# The reference, written here independently of qwenvl: upstream's reading of an answer (fences stripped,
# ast.literal_eval of the whole answer, any exception -> no detections for the image), 0-1000 relative boxes,
# categories by lowercase name, and pycocotools' COCOeval with its default parameters over every annotated image.

TOY_A = {"classes": ["Crab", "Sea-Lobster"], "images": [(1, "a.jpg", 640, 480), (2, "b.jpg", 416, 416),
         (3, "c.jpg", 1000, 500)], "anns": [(1, 1, [64, 48, 128, 96]), (1, 2, [300, 200, 200, 200]),
         (2, 1, [10, 10, 100, 200])]}  # fmt: skip
TOY_B = {"classes": ["pothole"], "images": [(1, "p.jpg", 640, 480), (2, "q.jpg", 640, 480)],
         "anns": [(1, 1, [100, 100, 200, 100]), (2, 1, [0, 0, 320, 240])]}  # fmt: skip


def _toy_data(root: Path) -> Path:
    entries = []
    for name, toy in (("ToyA", TOY_A), ("ToyB", TOY_B)):
        _coco(root / name / "valid" / "ann.json", toy["images"], list(enumerate(toy["classes"], 1)), toy["anns"])
        entries.append(f"dict(metainfo=dict(classes={tuple(toy['classes'])!r}), data_root='data/odinw/{name}/', "
                       "ann_file='valid/ann.json', data_prefix=dict(img='valid/'))")  # fmt: skip
    (root / "odinw13_config.py").write_text(
        f"dataset_prefixes = ['ToyA', 'ToyB']\ndatasets = [{', '.join(entries)}]\n"
    )
    return root


def _reference_map(ann: Path, answers: dict[int, str], positional: bool = False, classes: tuple = ()) -> float:
    import ast
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    names = {c["name"].lower(): c["id"] for c in coco.loadCats(coco.getCatIds())}
    dets = []
    for img_id, text in answers.items():
        try:
            items = ast.literal_eval(text.replace("```json", "").replace("```", ""))
            pairs = [(it["bbox_2d"], it["label"]) for it in items if len(it["bbox_2d"]) == 4]
        except Exception:  # noqa: BLE001 - upstream's reading
            pairs = []
        w, h = coco.imgs[img_id]["width"], coco.imgs[img_id]["height"]
        for (x1, y1, x2, y2), label in pairs:
            if positional:
                lower = [c.lower() for c in classes]
                cat = coco.getCatIds()[lower.index(label.lower())] if label.lower() in lower else None
            else:
                cat = names.get(label.lower())
            if cat is not None:
                box = [x1 * w / 1000, y1 * h / 1000, (x2 - x1) * w / 1000, (y2 - y1) * h / 1000]
                dets.append({"image_id": img_id, "category_id": cat, "bbox": box, "score": 1.0})
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        if positional:
            ev.params.maxDets = [100, 300, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return round(float(ev.stats[0]), 3) if positional else float(ev.stats[0])


def _j(*boxes: tuple) -> str:
    return json.dumps([{"bbox_2d": b, "label": label} for b, label in boxes])


CRAB, LOB = _rel([64, 48, 128, 96], 640, 480), _rel([300, 200, 200, 200], 640, 480)
CRAB2, HOLE1, HOLE2 = _rel([10, 10, 100, 200], 416, 416), _rel([100, 100, 200, 100], 640, 480), [0, 0, 500, 500]
PERFECT_A = {1: _j((CRAB, "Crab"), (LOB, "Sea-Lobster")), 2: _j((CRAB2, "Crab")), 3: "[]"}
PERFECT_B = {1: _j((HOLE1, "pothole")), 2: _j((HOLE2, "pothole"))}
SCENARIOS = {
    "perfect": {"ToyA": PERFECT_A, "ToyB": PERFECT_B},
    "fenced": {"ToyA": {**PERFECT_A, 1: "```json\n" + PERFECT_A[1] + "\n```"}, "ToyB": PERFECT_B},
    "python_repr": {"ToyA": {**PERFECT_A, 2: str([{"bbox_2d": CRAB2, "label": "Crab"}])}, "ToyB": PERFECT_B},
    "text_before": {"ToyA": {**PERFECT_A, 1: "Sure! " + PERFECT_A[1]}, "ToyB": PERFECT_B},
    "text_after": {"ToyA": {**PERFECT_A, 2: PERFECT_A[2] + "\nDone."}, "ToyB": PERFECT_B},
    "bare_dict": {"ToyA": {**PERFECT_A, 2: json.dumps({"bbox_2d": CRAB2, "label": "Crab"})}, "ToyB": PERFECT_B},
    "literal_false": {
        "ToyA": {**PERFECT_A, 2: json.dumps([{"bbox_2d": CRAB2, "label": "Crab", "ok": False}])},
        "ToyB": PERFECT_B,
    },  # fmt: skip
    "null_label": {"ToyA": PERFECT_A, "ToyB": {**PERFECT_B, 2: json.dumps([{"bbox_2d": HOLE2, "label": None}])}},
    "missing_label": {
        "ToyA": {**PERFECT_A, 1: json.dumps([{"bbox_2d": CRAB}, {"bbox_2d": LOB, "label": "Sea-Lobster"}])},
        "ToyB": PERFECT_B,
    },  # fmt: skip
    "three_numbers": {"ToyA": {**PERFECT_A, 2: _j((CRAB2[:3], "Crab"))}, "ToyB": PERFECT_B},
    "mis_cased_and_unknown": {"ToyA": {**PERFECT_A, 1: _j((CRAB, "CRAB"), (LOB, "lobster"))}, "ToyB": PERFECT_B},
    "false_positive_first": {
        "ToyA": {**PERFECT_A, 1: _j(([900, 900, 990, 990], "Crab"), (CRAB, "Crab"), (LOB, "Sea-Lobster"))},
        "ToyB": PERFECT_B,
    },  # fmt: skip
    "false_positive_last": {
        "ToyA": {**PERFECT_A, 1: _j((CRAB, "Crab"), ([900, 900, 990, 990], "Crab"), (LOB, "Sea-Lobster"))},
        "ToyB": PERFECT_B,
    },  # fmt: skip
    "duplicates": {"ToyA": {**PERFECT_A, 2: _j((CRAB2, "Crab"), (CRAB2, "Crab"))}, "ToyB": PERFECT_B},
    "half_overlap": {"ToyA": PERFECT_A, "ToyB": {**PERFECT_B, 2: _j(([0, 0, 500, 250], "pothole"))}},
    "over_100_boxes": {
        "ToyA": PERFECT_A,
        "ToyB": {**PERFECT_B, 1: _j(*[([i, i, i + 5, i + 5], "pothole") for i in range(120)], (HOLE1, "pothole"))},
    },  # fmt: skip
    "all_empty_dataset": {"ToyA": PERFECT_A, "ToyB": {1: "[]", 2: "I see none."}},
    "dataset_absent": {"ToyA": PERFECT_A},
    "partial_file": {"ToyA": {1: PERFECT_A[1]}},
}


def _records(scenario: dict[str, dict[int, str]], drop: str | None = None) -> list[dict]:
    out = []
    for dataset, answers in scenario.items():
        for img_id, text in answers.items():
            record = {"id": f"{dataset}/{img_id}", "dataset": dataset, "img_id": img_id, "response": text,
                      "family": "qwen3_vl", "width": 1, "height": 1}  # fmt: skip
            if drop:
                record.pop(drop)
            out.append(record)
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_official_scoring_equals_the_reference(tmp_path, name):
    from qwenvl.evaluation.odinw import score

    data = _toy_data(tmp_path / "odinw")
    scenario = SCENARIOS[name]
    # The records' sizes are wrong on purpose (1x1) or absent: the annotation's sizes are the truth.
    body = score(_records(scenario, drop="width" if name == "fenced" else None), str(data))
    expected = {d: _reference_map(data / d / "valid" / "ann.json", scenario.get(d, {})) for d in ("ToyA", "ToyB")}
    assert {d: r["mAP"] for d, r in body["datasets"].items()} == pytest.approx(expected, abs=1e-9), name
    assert body["Average"] == pytest.approx(sum(expected.values()) / 2, abs=1e-9)
    assert body["images"] == 5 and body["answered"] == sum(len(a) for a in scenario.values())
    lenient = score(_records(scenario), str(data), scoring="lenient")
    for d, r in lenient["datasets"].items():  # lenient only adds what upstream's reading refuses
        assert r["detections"] >= body["datasets"][d]["detections"]
    if name in ("text_before", "bare_dict", "literal_false"):
        assert lenient["Average"] == pytest.approx(1.0) and body["Average"] < 0.9


def test_partial_file_scores_every_annotated_image(tmp_path):
    from qwenvl.evaluation.odinw import score

    data = _toy_data(tmp_path / "odinw")
    body = score(_records(SCENARIOS["partial_file"]), str(data), datasets=["ToyA"])
    assert body["datasets"]["ToyA"]["answered"] == 1 and body["datasets"]["ToyA"]["images"] == 3
    assert body["Average"] < 1.0  # ToyA/2's crab was not answered: a miss, not left out


@pytest.mark.parametrize("name", ["perfect", "text_before", "missing_label", "mis_cased_and_unknown",
                                  "dataset_absent", "false_positive_first"])  # fmt: skip
def test_upstream_scoring_equals_upstreams_procedure(tmp_path, name):
    from qwenvl.evaluation.odinw import score

    data = _toy_data(tmp_path / "odinw")
    scenario = SCENARIOS[name]
    body = score(_records(scenario), str(data), scoring="upstream")
    classes = {"ToyA": TOY_A["classes"], "ToyB": TOY_B["classes"]}
    expected = {d: _reference_map(data / d / "valid" / "ann.json", a, True, tuple(classes[d]))
                for d, a in scenario.items()}  # fmt: skip
    assert {d: r["mAP"] for d, r in body["datasets"].items()} == expected
    assert body["Average"] == pytest.approx(sum(expected.values()) / len(expected))


def _run_eval(tmp_path: Path, lines: list, *extra: str) -> tuple[int, str, str, Path]:
    import contextlib
    import io

    from qwenvl.evaluation.odinw import main

    data = _toy_data(tmp_path / "odinw")
    results = tmp_path / "res.jsonl"
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    scores = tmp_path / "scores.json"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", "--input-file", str(results), "--data-dir", str(data), "--output-file", str(scores),
                     *extra])  # fmt: skip
    return code, out.getvalue(), err.getvalue(), scores


def test_eval_refuses_other_files_in_one_line(tmp_path):
    for lines in ([{"id": "validation_Art_1", "response": "A"}], [{"dataset": "ToyA", "img_id": 1}]):
        code, out, err, _ = _run_eval(tmp_path, lines)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "another benchmark" in err


def test_eval_reads_upstreams_results_and_is_rel(tmp_path, monkeypatch):
    upstream = []
    for qid, (img_id, text) in enumerate(PERFECT_A.items()):
        w, h = TOY_A["images"][img_id - 1][2:]
        upstream.append({"question_id": qid, "annotation": [], "messages": [],
                         "extra_info": {"dataset_name": "ToyA", "img_id": img_id, "img_w": w, "img_h": h,
                                        "resized_w": w, "resized_h": h},
                         "result": {"gen": text, "gen_raw": text}})  # fmt: skip
    monkeypatch.setenv("is_rel", "1")
    code, out, err, scores = _run_eval(tmp_path, upstream)
    assert code == 0, err
    report = json.loads(scores.read_text())
    assert report["datasets"]["ToyA"]["mAP"] == pytest.approx(1.0) and report["coords"] == "relative"
    assert "3 of 5 annotated image(s) answered" in out  # ToyB: in the table, never answered
    monkeypatch.setenv("is_rel", "0")  # upstream's default: resized-image pixels (here the original size)
    code, out, err, scores = _run_eval(tmp_path, upstream, "--scoring", "upstream")
    assert code == 0 and json.loads(scores.read_text())["datasets"]["ToyA"]["mAP"] < 0.1
