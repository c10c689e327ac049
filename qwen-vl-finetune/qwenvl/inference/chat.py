"""A chat front end's bookkeeping over the backends, with no UI in it (the demo, ``web_demo_mm.py``, is the user).

- :class:`Generations`: the stop events of each session's running (or queued) answer, so Stop, a column's own Stop
  and Clear reach it, including a Stop pressed while the turn still waits in the queue.
- :func:`run_columns`: one answer from each backend to its conversation (A/B mode: two), streamed at once in
  worker threads, as throttled snapshots; a stopped column ends at once even when its server never answered.
- Uploads: :func:`check_upload` (type, size, decoded megapixels, one-line refusals naming the limit) and
  :func:`describe_upload` (the resized size and visual tokens a backend will spend), and :class:`SessionFiles`,
  the temporary files each session holds (uploads with reference counts, because Gradio stores the same bytes and
  name of two sessions at one path; box drawings), deleted when no session holds them any more.
- :func:`short_error`: an error as one line for a chat, with no server path in it.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from qwenvl.inference.base import Backend, Finish, GenerationSettings


logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}

# An absolute path in an error message (quoted or not): shown by its file name only.
_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s'\"/:]+/)+([^\s'\"/:]+)")


def short_error(error: BaseException | str) -> str:
    """An error message for a chat: its first line, any absolute path shortened to its file name, at most 300
    characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _PATH.sub(r"\1", text)[:300]


# ----------------------------------------------------------------------------------------------- uploads


def image_megapixels(path: str) -> float:
    """Decoded size of an image upload from its header (no pixels are decoded)."""
    from qwen_vl_utils.image_io import open_image

    with open_image(path) as image:
        width, height = image.size
    return width * height / 1e6


def pil_limit_megapixels() -> float:
    """The largest image PIL decodes at all (twice ``PIL.Image.MAX_IMAGE_PIXELS``; above it, an error), in
    megapixels."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS / 1e6 if Image.MAX_IMAGE_PIXELS else float("inf")


@dataclass
class UploadLimits:
    max_mb: float = 50.0
    max_megapixels: float = 64.0  # one image, decoded (a 13000x13000 PNG of 20 KB is 169)
    max_message_megapixels: float = 256.0  # all images of one message together


def check_upload(path: str, limits: UploadLimits, message_megapixels: float = 0.0) -> tuple[str, float]:
    """``(kind, megapixels)`` of an allowed upload (``image`` or ``video``; megapixels 0 for a video), given the
    megapixels of the message's images so far; raises ValueError naming the file and the limit otherwise."""
    from qwen_vl_utils.image_io import ImageTooLargeError

    name = Path(path).name
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        kind = "image"
    elif ext in VIDEO_EXTENSIONS:
        kind = "video"
    else:
        raise ValueError(f"{name}: unsupported file type {ext or '(none)'}; upload an image or a video")
    if not os.path.isfile(path):
        raise ValueError(f"{name}: the upload is gone from the server; upload it again")
    size = os.path.getsize(path)
    if size > limits.max_mb * 1024 * 1024:
        raise ValueError(f"{name}: {size / 1e6:.1f} MB is over the {limits.max_mb:g} MB upload limit")
    if kind == "video":
        return kind, 0.0
    try:
        mp = image_megapixels(path)
    except ImageTooLargeError:
        raise ValueError(
            f"{name}: too large to decode safely (over the image decoder's limit of {pil_limit_megapixels():.0f} "
            f"megapixels; this demo takes up to {limits.max_megapixels:g} megapixels per image)"
        ) from None
    if mp > limits.max_megapixels:
        raise ValueError(
            f"{name}: {mp:.0f} megapixels is over the {limits.max_megapixels:g} megapixel limit per image "
            "(--max-upload-megapixels)"
        )
    if message_megapixels + mp > limits.max_message_megapixels:
        raise ValueError(
            f"{name}: the images of this message would exceed {limits.max_message_megapixels:g} megapixels "
            "(--max-message-megapixels); send fewer"
        )
    return kind, mp


def describe_upload(path: str, kind: str, backend: Backend) -> str:
    """The resized resolution and visual token count an upload will cost this backend (from the header or a
    probe; raises on unreadable files)."""
    from qwen_vl_utils import fetch_image
    from qwenvl.data.encode import media_cost

    cost = media_cost({"type": kind, kind: path}, backend.family, backend.budget)
    if kind == "image":
        # Decoded once here, inside the queue: a file whose header reads but whose pixels do not is refused now.
        fetch_image(backend.budget.image_item({"image": path}), image_patch_size=backend.family.patch_size)
    return cost.describe(Path(path).name)


class SessionFiles:
    """The temporary files each session holds: uploads (readable by the server user only) and drawings.

    Two sessions that upload the same bytes under the same name get the same path from Gradio, so each path is
    counted once per session holding it and deleted only when the last one releases it (Clear, the tab closed)."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, session: str, path: str) -> None:
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass
        with self._lock:
            self._held.setdefault(session, set()).add(path)

    def holders(self, path: str) -> int:
        with self._lock:
            return sum(path in paths for paths in self._held.values())

    def release(self, session: str) -> int:
        """Delete the files of ``session`` that no other session holds (and their folder, when empty); returns
        how many were deleted."""
        with self._lock:
            paths = self._held.pop(session, set())
            still_held = set().union(*self._held.values()) if self._held else set()
        deleted = 0
        for path in paths - still_held:
            try:
                os.unlink(path)
                deleted += 1
            except OSError:
                continue
            try:
                os.rmdir(os.path.dirname(path))  # Gradio keeps each upload in a folder of its own
            except OSError:
                pass
        return deleted


# ----------------------------------------------------------------------------------------------- answers


class Generations:
    """The stop events of each session's answer, one per column, so Stop (all columns), a column's own Stop and
    Clear reach a running answer directly. A Stop that comes while the session's turn waits in the queue is kept
    for that turn, which then ends before it starts. Clear also marks the session's answer as abandoned, so it
    sends no update after the chat was emptied."""

    def __init__(self) -> None:
        self._stops: dict[str, list[threading.Event]] = {}
        self._epochs: dict[str, int] = {}
        self._queued: dict[str, int] = {}  # the last turn queued in each session
        self._started: dict[str, int] = {}  # the last turn started
        self._stop_before_start: dict[str, int] = {}  # a turn stopped while it waited
        self._lock = threading.Lock()

    def queue(self, session: str) -> None:
        """A turn of ``session`` is queued (called when the user sends a message or regenerates)."""
        with self._lock:
            self._queued[session] = self._queued.get(session, 0) + 1

    def start(self, session: str, columns: int) -> tuple[list[threading.Event], int]:
        """The stop events of the turn starting now (already set when it was stopped in the queue) and the
        session's epoch (see :meth:`current`)."""
        stops = [threading.Event() for _ in range(columns)]
        with self._lock:
            turn = self._queued.get(session, 0)
            self._started[session] = turn
            if self._stop_before_start.pop(session, None) == turn:
                for event in stops:
                    event.set()
            self._stops[session] = stops
            return stops, self._epochs.get(session, 0)

    def finish(self, session: str, stops: list[threading.Event]) -> None:
        with self._lock:
            if self._stops.get(session) is stops:
                del self._stops[session]

    def stop(self, session: str, column: int | None = None) -> None:
        with self._lock:
            stops = self._stops.get(session)
            queued = self._queued.get(session, 0)
            if stops is None and column is None and queued > self._started.get(session, 0):
                self._stop_before_start[session] = queued
            stops = stops or []
        for i, event in enumerate(stops):
            if column is None or i == column:
                event.set()

    def abandon(self, session: str) -> None:
        with self._lock:
            self._epochs[session] = self._epochs.get(session, 0) + 1
        self.stop(session)

    def forget(self, session: str) -> None:
        """Drop the bookkeeping of a session that ended (after :meth:`abandon`). Its epoch stays: an answer still
        running must keep seeing that it was abandoned (and hold no new files)."""
        with self._lock:
            for table in (self._queued, self._started, self._stop_before_start):
                table.pop(session, None)

    def current(self, session: str, epoch: int) -> bool:
        with self._lock:
            return self._epochs.get(session, 0) == epoch


@dataclass
class ColumnAnswer:
    """One column's answer so far: its raw text, how it ended (``None`` while it runs) and its error, if any."""

    text: str = ""
    finish: Finish | None = None
    error: BaseException | None = None
    done: bool = False


def render_interval(chars: int) -> float:
    """Seconds between two snapshots of a streaming answer of ``chars`` characters: 0.05 s, growing with the
    answer (0.45 s at 20,000 characters), since a browser re-renders the whole message each time."""
    return 0.05 + chars / 50_000


def run_columns(
    backends: list[Backend],
    conversations: list[list[dict[str, Any]]],
    gen: GenerationSettings,
    stops: list[threading.Event],
    cancelled: Callable[[], bool] = lambda: False,
    interval: Callable[[int], float] = render_interval,
) -> Iterator[list[ColumnAnswer]]:
    """Stream ``backends[i]``'s answer to ``conversations[i]`` for every column at once (each in its thread) and
    yield snapshots of all answers: when something changed, at most once per ``interval(total characters)``, and
    always once at the end. Setting ``stops[i]`` ends column ``i`` at once (``finish == "stopped"``), even while
    its backend waits on a server that does not answer (that request is left to its timeout). ``cancelled()``
    true ends the whole turn: every column is stopped and the iterator returns without a last snapshot."""
    answers = [ColumnAnswer() for _ in backends]
    events: queue.Queue[tuple[int, str | None, Finish | None, BaseException | None]] = queue.Queue()

    def run(i: int) -> None:
        stream = backends[i].stream(conversations[i], gen, stops[i])
        try:
            while True:
                try:
                    piece = next(stream)
                except StopIteration as end:
                    events.put((i, None, end.value, None))
                    return
                events.put((i, piece, None, None))
        except Exception as e:  # noqa: BLE001 - shown in that column, the session goes on
            logger.exception("generation failed (%s)", getattr(backends[i], "name", "?"))
            events.put((i, None, None, e))

    for i in range(len(backends)):
        if stops[i].is_set():  # stopped while it waited in the queue
            answers[i].finish, answers[i].done = "stopped", True
        else:
            threading.Thread(target=run, args=(i,), daemon=True, name=f"chat-column-{i}").start()
    last_sent, changed = 0.0, False
    try:
        while not all(a.done for a in answers):
            if cancelled():
                return
            try:
                i, piece, finish, error = events.get(timeout=0.05)
            except queue.Empty:
                i = None
            if i is not None and not answers[i].done:
                if piece is not None:
                    answers[i].text += piece
                else:
                    answers[i].finish, answers[i].error, answers[i].done = finish, error, True
                changed = True
            for k, stop in enumerate(stops):  # a column stopped while its backend says nothing
                if stop.is_set() and not answers[k].done:
                    answers[k].finish, answers[k].done, changed = "stopped", True, True
            now = time.monotonic()
            if changed and now - last_sent >= interval(sum(len(a.text) for a in answers)):
                last_sent, changed = now, False
                yield answers
    finally:
        for stop in stops:
            stop.set()  # also when the caller stops reading: every column's generation ends
    if not cancelled():
        yield answers
