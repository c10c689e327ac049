"""VLMEvalKit's benchmark TSV files (what upstream's MMMU, MathVision and RealWorldQA scripts read), read safely.

The quirks: base64 images in an ``image`` cell (PNG or JPEG, any mode); an ``image`` cell of at most 64
characters names another row's ``index`` whose image it shares; several images as a list literal (with a
list-valued ``image_path``); options in letter columns ``A``.. with empty / ``nan`` cells for absent ones. List
literals are parsed with ``ast.literal_eval``, never ``eval``; every problem names the file, line and index.
"""

from __future__ import annotations

import ast
import csv
import sys
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError


class TSVError(UserError):
    """The TSV cannot be used; the message names the file, the line and the row's index."""


def read_rows(path: str | Path, required: tuple[str, ...] = ("index", "question")) -> list[dict[str, str]]:
    """The rows of a TSV as dicts of strings, each with its line number under ``_line``."""
    path = Path(path)
    if not path.is_file():
        raise TSVError(f"{path}: no such file")
    csv.field_size_limit(sys.maxsize)  # base64 image cells are megabytes long
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    missing = [c for c in required if not rows or c not in rows[0]]
    if missing:
        raise TSVError(f"{path}: not the expected VLMEvalKit TSV (no column {', '.join(missing)})")
    for line, row in enumerate(rows, start=2):
        row["_line"] = str(line)
    return rows


def where(path: str | Path, row: dict[str, str]) -> str:
    return f"{path}:{row.get('_line', '?')} (index {row.get('index', '?')})"


def present(value: Any) -> bool:
    """A cell with content (not empty, not pandas' ``nan``)."""
    return value is not None and str(value).strip() != "" and str(value).strip().lower() != "nan"


def cell_list(value: str, what: str, at: str) -> list[str]:
    """A cell that may hold a list literal (``"['a', 'b']"``): its items, or the cell alone."""
    text = (value or "").strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise TSVError(f"{at}: {what} looks like a list but is not a valid list literal") from None
        if not isinstance(parsed, list):
            raise TSVError(f"{at}: {what} must be a list literal")
        return [str(v) for v in parsed]
    return [text] if text else []


def decode_image(data: str, at: str) -> Any:
    import base64
    import io

    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=False)))
        image.load()
    except Exception as e:  # noqa: BLE001 - any undecodable cell is named
        raise TSVError(f"{at}: the image cell is not a base64 image ({type(e).__name__}: {e})") from None
    return image


def row_images(row: dict[str, str], by_index: dict[str, dict[str, str]], at: str) -> list[Any]:
    """The row's decoded images (a reference to another row's index followed)."""
    cell = row.get("image", "") or ""
    if cell and len(cell) <= 64:
        target = by_index.get(cell.strip())
        if target is None or len(target.get("image", "") or "") <= 64:
            raise TSVError(f"{at}: the image cell refers to index {cell!r}, which has no image")
        cell = target["image"]
    return [decode_image(c, at) for c in cell_list(cell, "image", at)]


def letter_options(row: dict[str, str], letters: str = "ABCDEFGHIJ") -> dict[str, str]:
    """``{letter: text}`` of the option columns with content."""
    return {c: row[c] for c in letters if c in row and present(row[c])}
