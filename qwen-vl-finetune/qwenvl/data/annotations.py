"""Annotation files to checked conversations.

Two record formats are accepted, in ``.json`` (a list) or ``.jsonl`` (one record per line) files:

* upstream's: ``{"image": str | [str], "video": str | [str], "conversations": [{"from": "human" | "gpt",
  "value": "<image>\\nWhat is this?"}, ...]}`` where each ``<image>`` / ``<video>`` tag in a human turn takes the
  next image / video;
* OpenAI-style: ``{"messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg"},
  {"type": "text", "text": "..."}]}, {"role": "assistant", "content": "..."}]}``; string contents may also use
  ``<image>`` / ``<video>`` tags with top-level ``images`` / ``videos`` lists.

Every record becomes a :class:`Record`: an id that names its file and line, and messages in the typed-content form
the chat template renders, with media paths resolved against the dataset's media root. Violations (tag count vs
media count, missing media, roles out of order, media in an answer) raise :class:`AnnotationError` naming the
record and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from qwenvl.cli import UserError


PLACEHOLDER_RE = re.compile(r"(<image>|<video>)")
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class AnnotationError(UserError):
    """A record cannot be used; the message names the record (file:line) and how to fix it."""


@dataclass
class Record:
    """One training conversation with resolved media.

    Attributes:
        id: ``"<file>:<line>"`` (jsonl) or ``"<file>[<index>]"`` (json), or the record's own ``id`` after that.
        messages: typed-content messages, media items as ``{"type": "image", "image": abs_path}``.
        dataset: the registry name the record came from.
    """

    id: str
    messages: list[dict[str, Any]]
    dataset: str = ""
    pack: int | None = None  # pack number in an upstream pre-packed file (its records train in one row)

    @cached_property
    def key(self) -> str:
        """A hash of the messages and, for each local media file, its path, size and mtime, taken once (when first
        asked, at load time): the identity of the record for the length cache and the quarantine, so an edited
        or moved record, or a replaced media file, is a new record."""
        stamps = []
        for item in self.media():
            source = item.get(item["type"])
            try:
                st = os.stat(source) if isinstance(source, str) else None
                stamps.append([source, st.st_size, st.st_mtime_ns] if st else [repr(source)])
            except OSError:
                stamps.append([source, None, None])
        blob = json.dumps([self.messages, stamps], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def media(self) -> list[dict[str, Any]]:
        """The image and video items, in conversation order."""
        return [
            item
            for m in self.messages
            if isinstance(m["content"], list)
            for item in m["content"]
            if item.get("type") in ("image", "video")
        ]


def read_annotation_file(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | AnnotationError]]:
    """Yield ``(location, record)`` from a ``.json`` list or ``.jsonl`` file; location is ``file:line`` or
    ``file[index]``. A ``.jsonl`` line that is not UTF-8 or not JSON yields an :class:`AnnotationError` naming
    the line instead of a record, so the caller decides (report, skip or stop) and the other lines still count.
    A ``.json`` file is one document: such a fault there raises, naming the line."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}; check annotation_path in the dataset registry")
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for line_no, raw_line in enumerate(f, 1):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield (
                        f"{path}:{line_no}",
                        AnnotationError(
                            f"{path}:{line_no}: not UTF-8 (byte 0x{raw_line[e.start]:02x} at column {e.start + 1}); "
                            "re-save the file as UTF-8 or fix the line"
                        ),
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{line_no}", AnnotationError(f"{path}:{line_no}: not valid JSON ({e})")
                    continue
                yield f"{path}:{line_no}", record
        return
    data_bytes = path.read_bytes()
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data_bytes[: e.start].count(b"\n") + 1
        raise AnnotationError(
            f"{path}:{line_no}: not UTF-8 (byte 0x{data_bytes[e.start]:02x}); re-save as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e}); use a JSON list or a .jsonl file") from e
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path}[{index}]", record


def iter_records(path: str | Path, packed: bool = False) -> Iterator[tuple[str, Any, int | None]]:
    """``(location, record or AnnotationError, pack number)`` of a file. Upstream's packed files (written by its
    ``tools/pack_data.py``: a JSON list whose items are lists of records) are read too: each inner list is one
    pack, numbered, with locations ``file[i][j]``; ``packed=False`` reads them as plain records."""
    pack_no = 0
    for where, item in read_annotation_file(path):
        if isinstance(item, list):
            if not item:
                yield where, AnnotationError(f"{where}: an empty pack"), None
                continue
            for j, record in enumerate(item):
                yield f"{where}[{j}]", record, pack_no if packed else None
            pack_no += 1
        else:
            yield where, item, None


def check_text(value: str, where: str, what: str) -> None:
    """Refuse text that cannot be encoded (a lone surrogate from a ``\\ud800`` escape) with the record's place."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise AnnotationError(
            f"{where}: {what} contains an invalid character (lone surrogate {value[e.start]!r} at offset "
            f"{e.start}); fix the escape in the annotation"
        ) from None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _resolve(path: Any, media_root: str, where: str, kind: str, check_exists: bool) -> str:
    if not isinstance(path, str) or not path:
        raise AnnotationError(f"{where}: {kind} path must be a non-empty string, got {path!r}")
    if path.startswith(("http://", "https://", "data:")):
        return path
    if path.startswith("file://"):
        path = path[len("file://") :]
    full = path if os.path.isabs(path) else os.path.join(media_root, path)
    full = os.path.normpath(full)
    if check_exists and not os.path.exists(full):
        raise AnnotationError(
            f"{where}: {kind} file not found: {full}; fix the path, or the media root ({media_root!r}): media_root "
            "(upstream: data_path) in the --dataset_registry YAML, or --media_root DIR for a file given directly"
        )
    return full


def _split_placeholders(
    text: str, images: list[str], videos: list[str], where: str, counters: dict[str, int]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for piece in PLACEHOLDER_RE.split(text):
        if piece in ("<image>", "<video>"):
            kind = piece[1:-1]
            pool = images if kind == "image" else videos
            if counters[kind] >= len(pool):
                raise AnnotationError(
                    f"{where}: more <{kind}> tags than the {len(pool)} {kind}(s) listed; "
                    f"add the missing {kind} paths or remove the extra tags"
                )
            items.append({"type": kind, kind: pool[counters[kind]]})
            counters[kind] += 1
        elif piece.strip():
            check_text(piece, where, "a text")
            items.append({"type": "text", "text": piece.strip()})
    return items


def _normalise_content(
    content: Any, role: str, images: list[str], videos: list[str], media_root: str, where: str,
    counters: dict[str, int], check_exists: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    if isinstance(content, str):
        if role == "user" or role == "system":
            return _split_placeholders(content, images, videos, where, counters)
        if PLACEHOLDER_RE.search(content):
            raise AnnotationError(
                f"{where}: an assistant turn contains an <image>/<video> tag; media go in user turns"
            )
        check_text(content, where, "an answer")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise AnnotationError(f"{where}: message content must be a string or a list, got {type(content).__name__}")
    items = []
    for item in content:
        if not isinstance(item, dict):
            raise AnnotationError(f"{where}: content items must be objects, got {item!r}")
        kind = item.get("type") or next((k for k in ("image", "video", "text") if k in item), None)
        if kind == "image_url":
            kind = "image"
        if kind in ("image", "video"):
            if role == "assistant":
                raise AnnotationError(f"{where}: an assistant turn contains a {kind}; media go in user turns")
            source = item.get(kind, item.get("image_url") if kind == "image" else None)
            if isinstance(source, dict):
                source = source.get("url")
            extra = {k: v for k, v in item.items() if k not in ("type", kind, "image_url")}
            items.append({"type": kind, kind: _resolve(source, media_root, where, kind, check_exists), **extra})
        elif kind == "text":
            check_text(str(item.get("text", "")), where, "a text")
            items.append({"type": "text", "text": str(item.get("text", ""))})
        else:
            raise AnnotationError(f"{where}: unknown content item {item!r}; use type text, image or video")
    return items


def normalise_record(
    raw: dict[str, Any], where: str, media_root: str = "", dataset: str = "", check_exists: bool = True
) -> Record:
    """Turn one raw record (either format) into a checked :class:`Record`."""
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    if "conversations" in raw:
        turns = raw["conversations"]
        if not isinstance(turns, list):
            raise AnnotationError(f"{where}: 'conversations' must be a list of turns")
        pairs = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise AnnotationError(f"{where}: turn {i} needs 'from' and 'value' keys, got {turn!r}")
            if not isinstance(turn["value"], str):
                raise AnnotationError(f"{where}: turn {i} 'value' must be a string, got {turn['value']!r}")
            pairs.append((turn["from"], turn["value"]))
        images, videos = _as_list(raw.get("image")), _as_list(raw.get("video"))
    elif "messages" in raw:
        turns = raw["messages"]
        if not isinstance(turns, list):
            raise AnnotationError(f"{where}: 'messages' must be a list")
        pairs = []
        for i, m in enumerate(turns):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise AnnotationError(f"{where}: message {i} needs 'role' and 'content' keys, got {m!r}")
            pairs.append((m["role"], m["content"]))
        images, videos = _as_list(raw.get("images")), _as_list(raw.get("videos"))
    else:
        raise AnnotationError(f"{where}: record has neither 'conversations' nor 'messages'; keys are {sorted(raw)}")

    images = [_resolve(p, media_root, where, "image", check_exists) for p in images]
    videos = [_resolve(p, media_root, where, "video", check_exists) for p in videos]
    counters = {"image": 0, "video": 0}
    messages = []
    for i, (speaker, content) in enumerate(pairs):
        role = ROLE_OF.get(speaker)
        if role is None:
            raise AnnotationError(f"{where}: turn {i} has unknown role {speaker!r}; use human/gpt or user/assistant")
        if role == "system" and i != 0:
            raise AnnotationError(f"{where}: a system message may only come first (found at turn {i})")
        items = _normalise_content(content, role, images, videos, media_root, where, counters, check_exists)
        messages.append({"role": role, "content": items})

    for kind, pool in (("image", images), ("video", videos)):
        if counters[kind] != len(pool):
            raise AnnotationError(
                f"{where}: {len(pool)} {kind}(s) listed but {counters[kind]} <{kind}> tag(s) in the text; "
                f"add one <{kind}> tag per {kind} where it belongs in a user turn"
            )
    dialogue = [m["role"] for m in messages if m["role"] != "system"]
    if not dialogue:
        raise AnnotationError(f"{where}: the conversation is empty")
    for i, role in enumerate(dialogue):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise AnnotationError(
                f"{where}: roles must alternate user/assistant starting with user; turn {i} is {role}, "
                f"expected {expected}"
            )
    if dialogue[-1] != "assistant":
        raise AnnotationError(f"{where}: the last turn is from the user; a training sample must end with an answer")
    record_id = f"{where} ({raw['id']})" if "id" in raw else where
    return Record(id=record_id, messages=messages, dataset=dataset)
