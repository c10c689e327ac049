"""ODinW-13 object detection: inference and COCO mAP (``evaluation/ODinW-13/run_odinw.py`` is the entry point).

Run::

    python evaluation/ODinW-13/run_odinw.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir odinw \\
        --output-file out/odinw.jsonl [--datasets Aquarium,pothole] [--preset instruct|think]
    python evaluation/ODinW-13/run_odinw.py eval --input-file out/odinw.jsonl --data-dir odinw --output-file out/map.json

Data (``--data-dir``): the 13 ODinW datasets in MMDetection's ``data/odinw/`` layout (each dataset's
``valid/annotations_without_background.json`` and images; see ``DATASETS``), or upstream's flat
``odinw13_config.py`` (``datasets`` and ``dataset_prefixes``; read as data, never executed). Every image of a
dataset is asked once, with all its classes: "Locate every instance that belongs to the following categories:
'c1, c2'. Report bbox coordinates in JSON format." Pixels follow the runner's policy (the checkpoint's budget;
with ``--preset`` upstream's 768..12800 tokens of 32x32 pixels; the flags over both); each record keeps the size
the model saw (``resized_width`` / ``resized_height``, computed with the budget used, which ``pixels`` records),
which the boxes are scaled back from.

Boxes come out of the answer as upstream reads them: the code fences removed, ``ast.literal_eval`` of the whole
rest, ``(bbox_2d, label)`` of each entry with 4 coordinates; an answer that does not read that way (text around the
list, JSON ``false`` / ``null``, a bare dict, an entry without a label) leaves its image without detections and is
counted as unreadable. They are mapped back to the original image: Qwen3-VL and Qwen2-VL write 0-1000 relative
coordinates, Qwen2.5-VL pixels of the resized image (``--coords auto`` picks by the family recorded at inference;
``relative`` / ``absolute`` force one; upstream assumes ``absolute`` unless ``is_rel=1`` is set, which is wrong
for Qwen3-VL; without ``--coords`` that environment variable is honoured when set).

Scoring: COCO bbox AP with pycocotools over every image of each dataset's annotation file (an image without an
answer has no detections; the report says how many were answered), iou .50:.95, maxDets 100/300/1000 as
MMDetection and GLIP, every box scored 1.0 in the order the model wrote it (VLM boxes have no confidence; the
maintainers' convention):

* ``official`` (default): classes mapped to COCO categories by name (as MMDetection's ``CocoMetric``), labels
  matched case-insensitively, every dataset asked counted (the infer manifest's, or ``--datasets``; one without
  any detection scores 0), the mean of the unrounded mAPs;
* ``lenient``: ``official``, but an answer upstream's reading refuses is searched for ``"bbox_2d": [...]`` anywhere
  (``qwenvl.model.grounding``), so it only adds detections;
* ``upstream``: upstream's numbers: its reading, positional category mapping (class i -> the i-th category id),
  only the datasets present in the results, 3-decimal rounding before the average.

Upstream's results files (``question_id``, ``extra_info``, ``result``) are scored as they are by ``eval``.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from qwenvl.cli import MissingPackage, UserError
from qwenvl.evaluation import command
from qwenvl.evaluation.benchmark import Benchmark, EvalContext, PixelPolicy, Run, Scored, Scoring, option
from qwenvl.evaluation.reports import empty_answers, empty_answers_warning
from qwenvl.evaluation.results import read_manifest, results_to_score
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.inference.base import strip_reasoning


MIN_PIXELS, MAX_PIXELS = 768 * 32 * 32, 12800 * 32 * 32
PRESETS = upstream_presets(default_tokens=2048, think_temperature=0.6, think_tokens=32768)
# MMDetection's odinw13: prefix -> (folder under data/odinw/, annotation file, image folder, classes)
DATASETS: dict[str, tuple[str, str, str, list[str]]] = {
    "AerialMaritimeDrone": ("AerialMaritimeDrone/large/", "valid/annotations_without_background.json", "valid/",
                            ["boat", "car", "dock", "jetski", "lift"]),
    "Aquarium": ("Aquarium/Aquarium Combined.v2-raw-1024.coco/", "valid/annotations_without_background.json",
                 "valid/", ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]),
    "CottontailRabbits": ("CottontailRabbits/", "valid/annotations_without_background.json", "valid/",
                          ["Cottontail-Rabbit"]),
    "EgoHands": ("EgoHands/generic/", "valid/annotations_without_background.json", "valid/", ["hand"]),
    "NorthAmericaMushrooms": ("NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco/",
                              "valid/annotations_without_background.json", "valid/", ["CoW", "chanterelle"]),
    "Packages": ("Packages/Raw/", "valid/annotations_without_background.json", "valid/", ["package"]),
    "PascalVOC": ("PascalVOC/", "valid/annotations_without_background.json", "valid/",
                  ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                   "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                   "tvmonitor"]),
    "pistols": ("pistols/export/", "val_annotations_without_background.json", "", ["pistol"]),
    "pothole": ("pothole/", "valid/annotations_without_background.json", "valid/", ["pothole"]),
    "Raccoon": ("Raccoon/Raccoon.v2-raw.coco/", "valid/annotations_without_background.json", "valid/", ["raccoon"]),
    "ShellfishOpenImages": ("ShellfishOpenImages/raw/", "valid/annotations_without_background.json", "valid/",
                            ["Crab", "Lobster", "Shrimp"]),
    "thermalDogsAndPeople": ("thermalDogsAndPeople/", "valid/annotations_without_background.json", "valid/",
                             ["dog", "person"]),
    "VehiclesOpenImages": ("VehiclesOpenImages/416x416/", "valid/annotations_without_background.json", "valid/",
                           ["Ambulance", "Bus", "Car", "Motorcycle", "Truck"]),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------- data


def _literal(node: ast.AST, where: str) -> Any:
    """A config value made of literals and ``dict(...)`` calls (MMDetection style), evaluated without running it."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value, where) for kw in node.keywords}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, where) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k, where): _literal(v, where) for k, v in zip(node.keys, node.values)}
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise UserError(f"{where}: line {node.lineno}: only literals and dict(...) are read from the config; "
                         "write the values out (no variables or expressions)") from None  # fmt: skip


def read_config(path: Path, data_dir: str) -> dict[str, tuple[str, str, str, list[str]]]:
    """Upstream's flat ``odinw13_config.py`` (``datasets`` + ``dataset_prefixes``), parsed, not executed."""
    tree = ast.parse(path.read_text(), str(path))
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("datasets", "dataset_prefixes"):
                values[node.targets[0].id] = _literal(node.value, str(path))
    if "datasets" not in values or "dataset_prefixes" not in values:
        raise UserError(f"{path}: needs `datasets = [...]` and `dataset_prefixes = [...]` (upstream's flat config)")
    out = {}
    for prefix, entry in zip(values["dataset_prefixes"], values["datasets"]):
        root = entry["data_root"]
        marker = root.find("data/odinw/")
        sub = root[marker + len("data/odinw/") :] if marker >= 0 else root
        out[prefix] = (sub, entry["ann_file"], entry.get("data_prefix", {}).get("img", ""),
                       list(entry["metainfo"]["classes"]))  # fmt: skip
    return out


def dataset_table(data_dir: str) -> dict[str, tuple[str, str, str, list[str]]]:
    config = Path(data_dir) / "odinw13_config.py"
    return read_config(config, data_dir) if config.is_file() else DATASETS


DATA_DIR_HELP = "the data/odinw folder (or one with odinw13_config.py)"


@dataclass
class Options:
    """ODinW-13's data."""

    data_dir: str = option(DATA_DIR_HELP, required=True)
    datasets: str | None = option("comma-separated prefixes (default: all 13)")


@dataclass
class EvalOptions:
    """What ODinW's scoring reads besides the results: the annotations, the datasets, the coordinates."""

    data_dir: str = option(DATA_DIR_HELP, required=True)
    datasets: str | None = option("comma-separated datasets to score (default: those infer asked, from its "
                                  "manifest; else all)")  # fmt: skip
    coords: Literal["auto", "relative", "absolute"] | None = option(
        "auto: 0-1000 relative for Qwen3-VL / Qwen2-VL, resized-image pixels for Qwen2.5-VL (the family infer "
        "recorded). Not given: upstream's is_rel=1 / is_rel=0 environment variable picks relative / absolute, else "
        "auto"
    )


def selected(options: Options) -> dict[str, tuple[str, str, str, list[str]]]:
    table = dataset_table(options.data_dir)
    if not options.datasets:
        return table
    names = [n.strip() for n in options.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"--datasets: unknown {unknown}; known: {', '.join(table)}")
    return {n: table[n] for n in names}


def annotation_path(data_dir: str, entry: tuple[str, str, str, list[str]], name: str) -> Path:
    path = Path(data_dir) / entry[0] / entry[1]
    if not path.is_file():
        raise UserError(f"{name}: {path} does not exist (MMDetection's data/odinw layout below --data-dir)")
    return path


def iter_images(options: Options, ids: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every image of the selected datasets (annotation-file order), as ``{id, dataset, img_id, path, ...}``."""
    for name, entry in selected(options).items():
        ann = json.loads(annotation_path(options.data_dir, entry, name).read_text())
        for image in ann["images"]:
            qid = f"{name}/{image['id']}"
            if ids is not None and qid not in ids:
                continue
            path = Path(options.data_dir) / entry[0] / entry[2] / image["file_name"]
            if not path.is_file():
                raise UserError(f"{qid}: image {path} does not exist")
            yield {"id": qid, "dataset": name, "img_id": image["id"], "path": str(path),
                   "width": image.get("width"), "height": image.get("height"), "classes": entry[3]}  # fmt: skip


def prompt_text(classes: list[str]) -> str:
    return (
        f"Locate every instance that belongs to the following categories: '{', '.join(classes)}'. "
        "Report bbox coordinates in JSON format."
    )


def _conversation(options: Options, row: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    image = {"type": "image", "image": row["path"]}  # the run's pixel budget is applied by the backend
    return [{"role": "user", "content": [image, {"type": "text", "text": prompt_text(row["classes"])}]}]


def _record(options: Options, row: dict[str, Any], conversation: Any, text: Any, run: Run) -> dict:
    """The answer with what its boxes need: the original size, and the size the model saw (the run's budget)."""
    from qwen_vl_utils.image_io import open_image
    from qwen_vl_utils.resize import image_target_size

    with open_image(row["path"]) as image:
        width, height = image.size
    item = run.image_item(conversation[0]["content"][0])
    rh, rw = image_target_size(height, width, item, run.family.patch_size)
    return {"id": row["id"], "dataset": row["dataset"], "img_id": row["img_id"], "family": run.family.model_type,
            "width": width, "height": height, "resized_width": rw, "resized_height": rh,
            "pixels": {k: item[k] for k in ("min_pixels", "max_pixels") if k in item},
            "response": strip_reasoning(text), "raw_response": str(text)}  # fmt: skip


def _ids(options: Options) -> list[str]:
    return [r["id"] for r in iter_images(options)]


# ----------------------------------------------------------------------------------------------- scoring


def parse_answer(text: str) -> list[tuple[Any, Any]] | None:
    """Upstream's reading of an answer: strip the code fences, ``ast.literal_eval`` the whole rest, and take
    ``(bbox_2d, label)`` of every entry whose ``bbox_2d`` has 4 elements. ``None`` when that fails anywhere (text
    around the list, JSON ``true`` / ``false`` / ``null``, a bare dict, an entry without a label): upstream then
    leaves the image without detections."""
    try:
        parsed = ast.literal_eval(text.replace("```json", "").replace("```", ""))
        pairs = []
        for item in parsed:
            box = item["bbox_2d"]
            if len(box) != 4:
                continue
            pairs.append((box, item["label"]))
    except Exception:  # noqa: BLE001 - upstream catches everything: the image gets no detections
        return None
    return pairs


def _as_box(box: Any) -> list[float] | None:
    try:
        return [float(v) for v in box]
    except (TypeError, ValueError):
        return None


def parse_boxes(text: str, mode: str = "official") -> tuple[list[tuple[list[float], str]], bool, int]:
    """The answer's ``(x1, y1, x2, y2)`` boxes with their labels, whether it was readable, and how many entries were
    dropped for coordinates that are not numbers or a label that is not a string (upstream crashes on those).

    ``official`` and ``upstream`` read the answer as upstream does (:func:`parse_answer`); ``lenient`` falls back,
    for an answer that reading refuses, to the regex reader of ``qwenvl.model.grounding`` (every ``"bbox_2d": [...]``
    anywhere in the text), so it can only add detections."""
    pairs = parse_answer(text)
    if pairs is None and mode == "lenient":
        from qwenvl.model.grounding import find_boxes

        found = find_boxes(text)
        if found:
            return found, True, 0
    if pairs is None:
        return [], False, 0
    boxes, dropped = [], 0
    for box, label in pairs:
        coords = _as_box(box)
        if coords is None or not isinstance(label, str):
            dropped += 1
            continue
        boxes.append((coords, label))
    return boxes, True, dropped


def to_original(box: list[float], record: dict[str, Any], coords: str) -> list[float]:
    """``x1, y1, x2, y2`` in the original image's pixels (``record``: ``width``, ``height``, and for resized-image
    pixels ``resized_width`` / ``resized_height``, computed from the budget when absent)."""
    w, h = record["width"], record["height"]
    family = None
    if coords in ("auto", "absolute"):
        from qwenvl.model.families import FAMILIES

        family = FAMILIES.get(record.get("family") or "")
    if coords == "auto":
        coords = "absolute" if family is not None and family.box_coords == "resized_pixels" else "relative"
    if coords == "relative":
        sx, sy = w / 1000, h / 1000
    else:
        rw, rh = record.get("resized_width"), record.get("resized_height")
        if not rw or not rh:
            from qwen_vl_utils.resize import image_target_size

            patch = family.patch_size if family is not None else 16  # upstream's factor 32
            rh, rw = image_target_size(h, w, {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}, patch)
        sx, sy = w / rw, h / rh
    x1, y1, x2, y2 = box
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
SCORING = ("official", "lenient", "upstream")


def evaluate_dataset(
    name: str,
    ann_path: Path,
    classes: list[str],
    records: list[dict[str, Any]],
    coords: str,
    mode: str,
    detections_out: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """COCO bbox metrics of one dataset over every image of its annotation file (an image without an answer has
    no detections), from the records answered (see the module doc). ``detections_out`` receives the detections in
    COCO's results format (``image_id``, ``category_id``, ``bbox`` as xywh, ``score``)."""
    import contextlib
    import io

    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingPackage("ODinW scoring needs pycocotools: pip install pycocotools") from None

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_path))
    cat_ids = sorted(coco.getCatIds())
    by_name = {c["name"].lower(): c["id"] for c in coco.loadCats(cat_ids)}
    lower_classes = [c.lower() for c in classes]
    detections, failures, unknown, dropped, answered, foreign = [], 0, 0, 0, set(), 0
    for record in records:
        image = coco.imgs.get(record.get("img_id"))
        if image is None:
            foreign += 1  # not an image of this annotation file: nothing to compare it with
            continue
        answered.add(image["id"])
        boxes, readable, bad = parse_boxes(str(record.get("response") or ""), mode)
        failures += not readable
        dropped += bad
        # The annotation's size is the truth; the record's is a fallback (upstream's results carry both).
        sized = {**record, "width": image.get("width") or record.get("width"),
                 "height": image.get("height") or record.get("height")}  # fmt: skip
        for box, label in boxes:
            if label.lower() not in lower_classes:
                unknown += 1
                continue
            if mode == "upstream":  # the class's position in the list picks the category id
                position = lower_classes.index(label.lower())
                category = cat_ids[position] if position < len(cat_ids) else None
            else:
                category = by_name.get(label.lower())
            if category is None:
                unknown += 1
                continue
            x1, y1, x2, y2 = to_original(box, sized, coords)
            detections.append({"image_id": image["id"], "category_id": category,
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0})  # fmt: skip
    if detections_out is not None:
        detections_out.extend(detections)
    metrics = {"images": len(coco.imgs), "answered": len(answered), "detections": len(detections),
               "parse_failures": failures, "unknown_labels": unknown, "bad_entries": dropped,
               "not_in_annotations": foreign}  # fmt: skip
    if not detections:  # pycocotools cannot load an empty result list; nothing detected is AP 0
        return {**metrics, **dict.fromkeys(METRICS, 0.0)}
    with contextlib.redirect_stdout(io.StringIO()):
        results = coco.loadRes([dict(d) for d in detections])  # it adds area, id, ... to what it is given
        ev = COCOeval(coco, results, "bbox")  # every image and category of the annotation file
        ev.params.maxDets = [100, 300, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(x) for x in ev.stats[:6]]
    if mode == "upstream":
        stats = [round(x, 3) for x in stats]
    return {**metrics, **dict(zip(METRICS, stats))}


UPSTREAM_FIELDS = ("question_id", "extra_info", "result")


def from_upstream(line: dict[str, Any]) -> dict[str, Any]:
    """A record of upstream's ``run_odinw.py infer`` as ours (upstream records no family: ``--coords`` decides)."""
    extra, result = line["extra_info"], line["result"]
    return {"id": f"{extra['dataset_name']}/{extra['img_id']}", "dataset": extra["dataset_name"],
            "img_id": extra["img_id"], "width": extra.get("img_w"), "height": extra.get("img_h"),
            "resized_width": extra.get("resized_w"), "resized_height": extra.get("resized_h"),
            "response": result.get("gen", ""), "raw_response": result.get("gen_raw", "")}  # fmt: skip


def load_odinw_records(path: Path) -> list[dict[str, Any]]:
    """ODinW records of ``path`` (ours, or upstream's, converted), each checked for what scoring needs."""
    lines = results_to_score(path)
    records = []
    for i, line in enumerate(lines):
        if isinstance(line, dict) and all(k in line for k in UPSTREAM_FIELDS) and "dataset" not in line:
            extra = line["extra_info"]
            if not isinstance(extra, dict) or not {"dataset_name", "img_id"} <= set(extra):
                raise UserError(f"{path}: line {i + 1}: upstream record without extra_info.dataset_name / img_id")
            line = from_upstream(line)
        missing = [k for k in ("dataset", "img_id", "response") if not isinstance(line, dict) or k not in line]
        if missing:
            raise UserError(
                f"{path}: line {i + 1} has no {', '.join(map(repr, missing))}: not the results of run_odinw.py infer "
                "(ours or upstream's); is it another benchmark's file?"
            )
        records.append(line)
    return records


def score(
    records: list[dict[str, Any]],
    data_dir: str,
    scoring: str = "official",
    coords: str = "auto",
    datasets: list[str] | None = None,
    with_detections: bool = False,
) -> dict[str, Any]:
    """The scores of ODinW ``records`` (see the module doc): per dataset, the Average, and how many annotated images
    were answered. ``datasets``: the datasets to score (default: those the infer run asked, else the whole table;
    ``upstream`` scoring takes the datasets present in the records, as upstream does). ``with_detections`` adds
    ``detections``: each dataset's detections in COCO's results format."""
    if scoring not in SCORING:
        raise UserError(f"--scoring {scoring}: choose one of {', '.join(SCORING)}")
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_dataset.setdefault(str(r["dataset"]), []).append(r)
    table = dataset_table(data_dir)
    unknown = [d for d in [*by_dataset, *(datasets or [])] if d not in table]
    if unknown:
        raise UserError(f"datasets {sorted(set(unknown))} are not in --data-dir {data_dir}'s table; known: "
                        f"{', '.join(table)}")  # fmt: skip
    if scoring == "upstream":
        scope = sorted(by_dataset)
    else:
        scope = sorted(datasets if datasets else table)
    report: dict[str, Any] = {}
    detections: dict[str, list[dict[str, Any]]] = {}
    for name in scope:
        entry = table[name]
        detections[name] = []
        report[name] = evaluate_dataset(name, annotation_path(data_dir, entry, name), entry[3],
                                        by_dataset.get(name, []), coords, scoring, detections[name])  # fmt: skip
    average = sum(r["mAP"] for r in report.values()) / max(len(report), 1)
    images = sum(r["images"] for r in report.values())
    answered = sum(r["answered"] for r in report.values())
    outside = sorted(set(by_dataset) - set(scope))
    return {"scoring": scoring, "coords": coords, "datasets": report, "Average": average,
            "images": images, "answered": answered, "datasets_not_scored": outside,
            "empty_responses": empty_answers(records),
            **({"detections": detections} if with_detections else {})}  # fmt: skip


def infer_datasets(input_file: Path) -> list[str] | None:
    """The datasets the infer run that wrote ``input_file`` asked (its manifest), or None when unknown."""
    manifest = read_manifest(input_file) or {}
    names = manifest.get("datasets")
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _coords(options: EvalOptions) -> str:
    if options.coords is not None:
        return options.coords
    rel = os.environ.get("is_rel")  # upstream's switch, an environment variable, when the flag is not given
    return "auto" if rel is None else ("relative" if rel == "1" else "absolute")


def _report(records: list[dict[str, Any]], context: EvalContext, with_detections: bool = False) -> dict[str, Any]:
    """``score`` of a file's records with the eval options (``--datasets``, ``--coords`` or ``is_rel``)."""
    options: EvalOptions = context.options
    datasets = None
    if options.datasets:
        datasets = [n.strip() for n in options.datasets.split(",") if n.strip()]
    elif context.mode != "upstream":
        datasets = infer_datasets(context.input_file)
    body = score(records, options.data_dir, context.mode, _coords(options), datasets, with_detections)
    return {k: v for k, v in body.items() if k != "scoring"} | {"records": len(records)}


def format_report(body: dict[str, Any], context: EvalContext) -> str:
    lines = [f"{'dataset':26} {'mAP':>6} {'mAP_50':>6} {'mAP_75':>6} {'images':>6} {'answered':>8} {'unreadable':>10}"]
    for name, r in body["datasets"].items():
        lines.append(f"{name:26} {r['mAP']:>6.3f} {r['mAP_50']:>6.3f} {r['mAP_75']:>6.3f} {r['images']:>6} "
                     f"{r['answered']:>8} {r['parse_failures']:>10}")  # fmt: skip
    lines.append(f"{'Average':26} {body['Average']:>6.3f}  (mean mAP over {len(body['datasets'])} dataset(s); "
                 f"{body['answered']} of {body['images']} annotated image(s) answered)")  # fmt: skip
    if body["answered"] < body["images"]:
        lines.append(f"warning: {body['images'] - body['answered']} annotated image(s) have no answer in "
                     f"{context.input_file} and score as images without detections")  # fmt: skip
    if body["datasets_not_scored"]:
        lines.append(
            f"warning: answers of {', '.join(body['datasets_not_scored'])} are not scored (not in --datasets)"
        )
    if warning := empty_answers_warning(body["empty_responses"], body["records"]):
        lines.append(warning)
    return "\n".join(lines)


def compare(a: Scored, b: Scored) -> str:
    """Per-dataset mAP of two results files (mAP is not a per-question accuracy: no paired test)."""
    ra, rb = _report(a.records, a.context), _report(b.records, b.context)
    lines = [f"{'dataset':26} {'mAP A':>7} {'mAP B':>7} {'B - A':>7}"]
    for name in sorted(set(ra["datasets"]) | set(rb["datasets"])):
        ma, mb = ra["datasets"].get(name, {}).get("mAP"), rb["datasets"].get(name, {}).get("mAP")
        diff = f"{mb - ma:>+7.3f}" if ma is not None and mb is not None else f"{'':>7}"
        lines.append(f"{name:26} {'-' if ma is None else f'{ma:.3f}':>7} {'-' if mb is None else f'{mb:.3f}':>7} "
                     f"{diff}")  # fmt: skip
    lines.append(f"{'Average':26} {ra['Average']:>7.3f} {rb['Average']:>7.3f} {rb['Average'] - ra['Average']:>+7.3f}")
    return "\n".join(lines)


def export(scored: Scored) -> dict[str, list[dict[str, Any]]]:
    """Each dataset's detections in COCO's results format (what COCO-style evaluation servers and tools read)."""
    return _report(scored.records, scored.context, with_detections=True)["detections"]


SCORING_HELP = {
    "official": "upstream's parsing, COCO categories by name, every dataset asked, unrounded mean",
    "lenient": "official, plus boxes found anywhere in answers upstream's parsing refuses",
    "upstream": "upstream's numbers (positional categories, datasets present, 3-decimal rounding)",
}
BENCHMARK = Benchmark(
    name="odinw13",
    description="ODinW-13: object detection on 13 datasets, COCO mAP",
    doc=__doc__,
    tool="run_odinw.py",
    options=Options,
    question_ids=_ids,
    rows=iter_images,
    conversation=_conversation,
    record=_record,
    settings=lambda options: {"data_dir": options.data_dir, "datasets": list(selected(options))},
    answer_settings=("datasets",),
    limit_help="the first N images only",
    pixels=PixelPolicy(image={"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}),
    presets=PRESETS,
    scoring={
        mode: Scoring(text, lambda records, context: records, _report, format_report)
        for mode, text in SCORING_HELP.items()
    },  # fmt: skip
    load=lambda path, options: load_odinw_records(path),
    eval_options=EvalOptions,
    per_question=False,
    compare=compare,
    export=export,
    export_help="the detections in COCO's results format, per dataset",
)


def main(argv: list[str] | None = None) -> int:
    return command.main(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
