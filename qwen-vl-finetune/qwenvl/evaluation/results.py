"""Results files of ``infer``: the resumable JSONL (torn-line repair), the manifest beside it (one segment per run
that wrote into the file), the output lock, and joining a run's shard files (``merge``)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError


# ----------------------------------------------------------------------------------------------- results file


def results_to_score(path: Path) -> list[dict[str, Any]]:
    """The lines of the results file ``eval`` was given: a missing file or one without a complete line is a
    :class:`qwenvl.cli.UserError` saying which."""
    from qwenvl.cli import UserError

    if not Path(path).exists():
        raise UserError(f"{path}: no such file (give the --output-file of an infer run as --input-file)")
    lines = read_results(Path(path))
    if not lines:
        raise UserError(f"{path}: no results to score")
    return lines


def read_results(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The complete lines of a results file. A torn last line (a crash mid-write) is dropped, and with ``repair``
    cut from the file, so appending continues cleanly."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines, good_end = [], 0
    for chunk in raw.split(b"\n"):
        end = good_end + len(chunk) + 1
        if not chunk.strip():
            good_end = min(end, len(raw))
            continue
        try:
            lines.append(json.loads(chunk))
        except json.JSONDecodeError:
            if end < len(raw):  # a bad line in the middle is not a torn write: refuse to guess
                raise UserError(f"{path}: line {len(lines) + 1} is not valid JSON; fix or remove it") from None
            break
        good_end = min(end, len(raw))
    if repair and good_end < len(raw):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return lines


def append_results(path: Path, records: list[dict[str, Any]]) -> None:
    """Append whole lines in one write, then fsync: a crash leaves at most one torn last line."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "qwen-vl-utils", "qwenvl", "datasets", "vllm"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def read_manifest(output: Path) -> dict[str, Any] | None:
    path = manifest_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_manifest(output: Path, settings: dict[str, Any], segment: bool = False) -> Path:
    """Write ``<output>.manifest.json``: this run's settings at the top level and, with ``segment``, appended to the
    ``segments`` list that keeps one entry per run that wrote into the file (a resumed ``infer``)."""
    path = manifest_path(output)
    entry = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv, **settings, "versions": versions()}
    manifest = dict(entry)
    if segment:
        old = read_manifest(output) or {}
        segments = old.get("segments") or ([{k: v for k, v in old.items() if k != "segments"}] if old else [])
        manifest["segments"] = [*segments, entry]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# Settings that change answers: a resumed infer must not mix answers made under different ones in one file
# (a benchmark adds its own, such as its prompt).
ANSWER_SETTINGS = ("model_path", "model_config_sha256", "served_model", "pixel_budgets", "decoding", "backend",
                   "dtype")  # fmt: skip


# The values of a run's pixel budget (the manifest's ``pixel_budgets`` also says where they came from).
BUDGET_VALUES = ("max_pixels", "min_pixels", "video_max_pixels", "video_min_pixels", "video_fps", "video_max_frames",
                 "video_min_frames", "video_total_pixels")  # fmt: skip


def settings_changes(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...] = ANSWER_SETTINGS) -> list[str]:
    """``key: old -> new`` for each answer-changing setting that differs."""
    changes = []
    for key in keys:
        before, after = old.get(key), new.get(key)
        if key == "pixel_budgets":  # compare the budgets in effect, not where they came from
            before = {k: v for k, v in (before or {}).items() if k in BUDGET_VALUES}
            after = {k: v for k, v in (after or {}).items() if k in BUDGET_VALUES}
        if key == "served_model" and before is None and old.get("backend") == "openai":
            continue  # written before the served model was asked for: unknown, not another model
        if key in old and before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


class OutputLock:
    """An exclusive lock on ``<output>.lock`` for the life of an ``infer`` (two writers would duplicate ids).

    The lock is taken on the resolved path, so a second writer that reaches the same file through a symlink (or
    another relative path) is stopped too. The lock file is removed on exit while still held; a process that opened
    it just before sees, once it holds the lock, that the path no longer names its file and takes a new one."""

    def __init__(self, output: Path, given: Path | None = None) -> None:
        """``given``: the name the user gave for ``output`` (a symlink, say), for messages."""
        self.output = given or output
        real = Path(os.path.realpath(output))
        self.path = real.with_name(real.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                real = self.path.with_name(self.path.name[: -len(".lock")])
                also = f" (that is {real})" if real != Path(os.path.abspath(self.output)) else ""
                raise UserError(
                    f"{self.output}{also} is being written by another infer (pid {holder}); wait for it to finish, "
                    "or write to another --output-file"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed it between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while held, so no one else holds a lock on it
            except FileNotFoundError:
                pass
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def config_hash(model_path: str) -> str | None:
    config = Path(model_path) / "config.json"
    if config.is_file():
        return hashlib.sha256(config.read_bytes()).hexdigest()
    try:
        from huggingface_hub import hf_hub_download

        return hashlib.sha256(Path(hf_hub_download(model_path, "config.json")).read_bytes()).hexdigest()
    except Exception:  # noqa: BLE001 - offline or not a hub id: the manifest says unknown
        return None


# ----------------------------------------------------------------------------------------------- shards


def without_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = True
            continue
        if item.startswith(flag + "="):
            continue
        out.append(item)
    return out


def all_shards_done(output: Path, num: int) -> bool:
    from qwenvl.evaluation import shards

    for index in range(num):
        path = shards.shard_path(output, num, index)
        wanted = shards.read_manifest_ids(manifest_path(path))
        if wanted is None or not path.exists():
            return False
        if set(wanted) - {r["id"] for r in read_results(path)}:
            return False
    return True


def merge_outputs(output: Path, num: int) -> int:
    """Join the shards of ``output`` into it (checked: every shard holds exactly its ids, none twice)."""
    from qwenvl.evaluation import shards

    records = shards.merge(output, num, read_results, lambda p: shards.read_manifest_ids(manifest_path(p)))
    tmp = output.with_name(output.name + ".merging")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, output)
    segments = [read_manifest(shards.shard_path(output, num, i)) or {} for i in range(num)]
    settings = {
        k: v for k, v in segments[0].items() if k not in ("segments", "shard", "created", "command", "versions")
    }
    write_manifest(output, {**settings, "mode": "merge", "merged_shards": num, "shard_manifests": segments})
    print(f"merged {num} shard(s), {len(records)} answer(s) -> {output}")
    return 0
