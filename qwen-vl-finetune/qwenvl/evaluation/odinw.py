"""ODinW-13 object detection: inference and COCO mAP (``evaluation/ODinW-13/run_odinw.py`` is the entry point).

Run::

    python evaluation/ODinW-13/run_odinw.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir odinw \\
        --output-file out/odinw.jsonl [--datasets Aquarium,pothole] [--preset instruct|think]
    python evaluation/ODinW-13/run_odinw.py eval --input-file out/odinw.jsonl --data-dir odinw --output-file out/map.json

Data (``--data-dir``): the 13 ODinW datasets in MMDetection's ``data/odinw/`` layout (each dataset's
``valid/annotations_without_background.json`` and images; see ``DATASETS``), or upstream's flat
``odinw13_config.py`` (``datasets`` and ``dataset_prefixes``; read as data, never executed). Every image of a
dataset is asked once, with all its classes: "Locate every instance that belongs to the following categories:
'c1, c2'. Report bbox coordinates in JSON format." (768..12800 tokens of 32x32 pixels per image, as upstream).

Boxes come out of the answer through the one grounding parser (``qwenvl.model.grounding``: JSON or Python
repr, fenced or not, text around it), and are mapped back to the original image: Qwen3-VL and Qwen2-VL write 0-1000
relative coordinates, Qwen2.5-VL pixels of the resized image (``--coords auto`` picks by the family recorded at
inference; ``relative`` / ``absolute`` force one; upstream assumes ``absolute`` unless ``is_rel=1`` is set, which
is wrong for Qwen3-VL). An answer with text but no readable box is a parse failure, counted per dataset.

Scoring: COCO bbox AP with pycocotools (iou .50:.95, maxDets 100/300/1000 as MMDetection and GLIP), every box
scored 1.0 in the order the model wrote it (VLM boxes have no confidence; the maintainers' convention):

* ``official`` (default): classes mapped to COCO categories by name (as MMDetection's ``CocoMetric``), unknown or
  mis-cased labels matched case-insensitively, every dataset asked counted (one without any prediction scores 0),
  the mean of the unrounded mAPs;
* ``upstream``: upstream's positional category mapping (class i -> the i-th category id) and 3-decimal rounding
  before the average.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from qwenvl.evaluation.core import (
    Task,
    add_infer_arguments,
    add_merge_command,
    empty_answers,
    empty_answers_warning,
    read_results,
    run_infer,
    run_main,
    strip_reasoning,
    upstream_presets,
    write_manifest,
)


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
        raise ValueError(f"{where}: line {node.lineno}: only literals and dict(...) are read from the config; "
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
        raise ValueError(f"{path}: needs `datasets = [...]` and `dataset_prefixes = [...]` (upstream's flat config)")
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


def selected(args: argparse.Namespace) -> dict[str, tuple[str, str, str, list[str]]]:
    table = dataset_table(args.data_dir)
    if not args.datasets:
        return table
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"--datasets: unknown {unknown}; known: {', '.join(table)}")
    return {n: table[n] for n in names}


def annotation_path(data_dir: str, entry: tuple[str, str, str, list[str]], name: str) -> Path:
    path = Path(data_dir) / entry[0] / entry[1]
    if not path.is_file():
        raise ValueError(f"{name}: {path} does not exist (MMDetection's data/odinw layout below --data-dir)")
    return path


def iter_images(args: argparse.Namespace, ids: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every image of the selected datasets (annotation-file order), as ``{id, dataset, img_id, path, ...}``."""
    for name, entry in selected(args).items():
        ann = json.loads(annotation_path(args.data_dir, entry, name).read_text())
        for image in ann["images"]:
            qid = f"{name}/{image['id']}"
            if ids is not None and qid not in ids:
                continue
            path = Path(args.data_dir) / entry[0] / entry[2] / image["file_name"]
            if not path.is_file():
                raise ValueError(f"{qid}: image {path} does not exist")
            yield {"id": qid, "dataset": name, "img_id": image["id"], "path": str(path),
                   "width": image.get("width"), "height": image.get("height"), "classes": entry[3]}  # fmt: skip


def prompt_text(classes: list[str]) -> str:
    return (
        f"Locate every instance that belongs to the following categories: '{', '.join(classes)}'. "
        "Report bbox coordinates in JSON format."
    )


def _conversation(args: argparse.Namespace, row: dict[str, Any]) -> list[dict[str, Any]]:
    image = {"type": "image", "image": row["path"], "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    return [{"role": "user", "content": [image, {"type": "text", "text": prompt_text(row["classes"])}]}]


class _Records:
    def __init__(self) -> None:
        self.family: Any = None

    def __call__(self, args: argparse.Namespace, row: dict[str, Any], conversation: Any, text: Any) -> dict:
        from qwen_vl_utils.image_io import open_image
        from qwen_vl_utils.resize import image_target_size

        if self.family is None:
            from qwenvl.model.families import get_family
            from qwenvl.model.loader import read_family

            self.family = get_family(args.family) if args.family else read_family(args.model_path or args.model)
        with open_image(row["path"]) as image:
            width, height = image.size
        rh, rw = image_target_size(height, width, conversation[0]["content"][0], self.family.patch_size)
        return {"id": row["id"], "dataset": row["dataset"], "img_id": row["img_id"], "family": self.family.model_type,
                "width": width, "height": height, "resized_width": rw, "resized_height": rh,
                "response": strip_reasoning(text), "raw_response": str(text)}  # fmt: skip


def _ids(args: argparse.Namespace) -> list[str]:
    ids = [r["id"] for r in iter_images(args)]
    return ids[: args.limit] if args.limit else ids


TASK = Task(
    name="odinw13",
    module="qwenvl.evaluation.odinw",
    question_ids=_ids,
    rows=iter_images,
    conversation=_conversation,
    record=_Records(),
    settings=lambda args: {
        "data_dir": args.data_dir,
        "datasets": list(selected(args)),
        "pixels": [MIN_PIXELS, MAX_PIXELS],
    },  # fmt: skip
    presets=PRESETS,
    answer_settings=("datasets",),
)


# ----------------------------------------------------------------------------------------------- scoring


def parse_boxes(text: str) -> tuple[list[tuple[list[float], str]], bool]:
    """The answer's ``(bbox_2d, label)`` pairs, and whether it was readable (an empty list or no text is readable:
    no objects)."""
    from qwenvl.model.grounding import find_boxes

    boxes = find_boxes(text)
    stripped = text.replace("```json", "").replace("```", "").strip()
    readable = bool(boxes) or stripped in ("", "[]", "{}") or stripped.lower().startswith("none")
    return boxes, readable


def to_original(box: list[float], record: dict[str, Any], coords: str) -> list[float]:
    """``x1, y1, x2, y2`` in the original image's pixels."""
    w, h = record["width"], record["height"]
    if coords == "auto":
        from qwenvl.model.families import FAMILIES

        family = FAMILIES.get(record.get("family", ""))
        coords = "absolute" if family is not None and family.box_coords == "resized_pixels" else "relative"
    if coords == "relative":
        sx, sy = w / 1000, h / 1000
    else:
        sx, sy = w / record["resized_width"], h / record["resized_height"]
    x1, y1, x2, y2 = box
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def evaluate_dataset(
    name: str, ann_path: Path, classes: list[str], records: list[dict[str, Any]], coords: str, mode: str
) -> dict[str, Any]:
    """COCO bbox metrics of one dataset's records (see the module doc)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_path))
    cat_ids = sorted(coco.getCatIds())
    by_name = {c["name"].lower(): c["id"] for c in coco.loadCats(cat_ids)}
    lower_classes = [c.lower() for c in classes]
    detections, failures, unknown = [], 0, 0
    for record in records:
        boxes, readable = parse_boxes(record["response"])
        failures += not readable
        for box, label in boxes:
            if label.lower() not in lower_classes:
                unknown += 1
                continue
            if mode == "official":
                category = by_name.get(label.lower())
                if category is None:
                    unknown += 1
                    continue
            else:  # upstream: the class's position in the list picks the category id
                position = lower_classes.index(label.lower())
                if position >= len(cat_ids):
                    unknown += 1
                    continue
                category = cat_ids[position]
            x1, y1, x2, y2 = to_original(box, record, coords)
            detections.append({"image_id": record["img_id"], "category_id": category,
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0})  # fmt: skip
    metrics = {"images": len(records), "detections": len(detections), "parse_failures": failures,
               "unknown_labels": unknown}  # fmt: skip
    names = ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"]
    if not detections:
        return {**metrics, **dict.fromkeys(names, 0.0)}
    with contextlib.redirect_stdout(io.StringIO()):
        results = coco.loadRes(detections)
        ev = COCOeval(coco, results, "bbox")
        ev.params.imgIds = [r["img_id"] for r in records]
        ev.params.maxDets = [100, 300, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(x) for x in ev.stats[:6]]
    if mode == "upstream":
        stats = [round(x, 3) for x in stats]
    return {**metrics, **dict(zip(names, stats))}


def evaluate(args: argparse.Namespace) -> int:
    records = read_results(Path(args.input_file))
    if not records:
        raise ValueError(f"{args.input_file}: no results to score")
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_dataset.setdefault(r["dataset"], []).append(r)
    table = dataset_table(args.data_dir)
    unknown = [d for d in by_dataset if d not in table]
    if unknown:
        raise ValueError(f"{args.input_file}: datasets {unknown} are not in --data-dir {args.data_dir}'s table")
    report = {}
    for name in sorted(by_dataset):
        entry = table[name]
        report[name] = evaluate_dataset(name, annotation_path(args.data_dir, entry, name), entry[3], by_dataset[name],
                                        args.coords, args.scoring)  # fmt: skip
    average = sum(r["mAP"] for r in report.values()) / len(report)
    missing = [d for d in table if d not in by_dataset]
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    empty = empty_answers(records)
    body = {"scoring": args.scoring, "coords": args.coords, "datasets": report, "Average": average,
            "datasets_missing_from_input": missing, "empty_responses": empty}  # fmt: skip
    output.write_text(json.dumps(body, indent=1) + "\n")
    write_manifest(
        output, {"mode": "eval", "input_file": args.input_file, "scoring": args.scoring, "coords": args.coords}
    )
    print(f"{'dataset':26} {'mAP':>6} {'mAP_50':>6} {'mAP_75':>6} {'images':>6} {'parse failures':>14}")
    for name, r in report.items():
        print(f"{name:26} {r['mAP']:>6.3f} {r['mAP_50']:>6.3f} {r['mAP_75']:>6.3f} {r['images']:>6} "
              f"{r['parse_failures']:>14}")  # fmt: skip
    print(f"{'Average':26} {average:>6.3f}  (mean mAP over {len(report)} dataset(s))")
    if missing:
        print(f"warning: {len(missing)} dataset(s) of the table are not in the input: {', '.join(missing)}")
    if warning := empty_answers_warning(empty, len(records)):
        print(warning)
    print(f"-> {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from qwenvl.cli import StrictParser

    parser = StrictParser(prog="run_odinw.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="detect on ODinW-13 and write results.jsonl (resumable)")
    add_infer_arguments(p, PRESETS)
    p.add_argument("--data-dir", required=True, help="the data/odinw folder (or one with odinw13_config.py)")
    p.add_argument("--datasets", default=None, help="comma-separated prefixes (default: all 13)")
    p.add_argument("--limit", type=int, default=None, help="the first N images only")
    p.set_defaults(func=lambda args: run_infer(args, TASK))
    e = sub.add_parser("eval", help="COCO mAP of results.jsonl")
    e.add_argument("--input-file", required=True)
    e.add_argument("--data-dir", required=True)
    e.add_argument("--output-file", required=True)
    e.add_argument("--scoring", default="official", choices=["official", "upstream"])
    e.add_argument("--coords", default="auto", choices=["auto", "relative", "absolute"],
                   help="auto: 0-1000 relative for Qwen3-VL / Qwen2-VL, resized-image pixels for Qwen2.5-VL")  # fmt: skip
    e.set_defaults(func=evaluate)
    add_merge_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
