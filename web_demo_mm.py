"""Gradio chat demo for Qwen-VL checkpoints: images and videos, streaming answers, sampling controls.

Run::

    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct                      # in-process transformers (GPU if any)
    python web_demo_mm.py -c /path/ckpt --cpu-only --server-port 7860
    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct --backend vllm --tensor-parallel-size 2
    python web_demo_mm.py --backend openai --api-base http://127.0.0.1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct
                                                                             # any OpenAI-compatible server
    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct --compare-checkpoint ./my-finetune   # A/B: two columns
    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct --compare-backend vllm                # A/B: hf vs vllm

The backends are :mod:`qwenvl.inference`'s (``hf``: transformers in this process; ``vllm``: vLLM's async engine
in this process; ``openai``: an OpenAI-compatible server such as ``vllm serve``); this file holds only the UI.
All resize images through qwen_vl_utils under the checkpoint's budget, so an answer does not depend on the
backend; sampling starts from the checkpoint's ``generation_config.json``. Only uploaded files are ever opened: text typed in the chat is never read as a path.
The server binds 127.0.0.1 unless ``--server-name`` says otherwise; every browser session has its own history.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import queue
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from qwenvl.cli import StrictParser
    from qwenvl.model.families import FAMILIES

    parser = StrictParser(description=__doc__)
    parser.add_argument(
        "-c", "--checkpoint-path", default="Qwen/Qwen3-VL-8B-Instruct", help="checkpoint (hub id or folder)"
    )
    parser.add_argument("--cpu-only", action="store_true", help="run on CPU")
    parser.add_argument("--flash-attn2", action="store_true", help="use flash-attention 2 (hf backend, GPU)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    parser.add_argument("--inbrowser", action="store_true", help="open a browser tab")
    parser.add_argument("--server-port", type=int, default=7860)
    parser.add_argument("--server-name", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    parser.add_argument(
        "--backend",
        default="hf",
        choices=["hf", "vllm", "openai"],
        help="hf (transformers in this process), vllm (vLLM's async engine in this process) or openai (a server)",
    )
    parser.add_argument("--api-base", default="http://127.0.0.1:8000/v1", help="openai backend: server URL")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"), help="openai backend: key")
    parser.add_argument(
        "--model", default=None, help="openai backend: the server's model name (default: the one it serves)"
    )
    parser.add_argument(
        "--family",
        default=None,
        choices=sorted(FAMILIES),
        help="openai backend: the served model's family when neither -c nor the server's model card tells it",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=None, help="vllm backend: GPUs (default 1)")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="vllm backend: share of GPU memory to use"
    )
    parser.add_argument(
        "--compare-checkpoint",
        default=None,
        help="A/B mode: a second checkpoint answering every message beside the first (e.g. base vs fine-tuned)",
    )
    parser.add_argument(
        "--compare-backend",
        default=None,
        choices=["hf", "vllm", "openai"],
        help="A/B mode: the second column's backend (default --backend); alone: two backends of one checkpoint",
    )
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted")
    parser.add_argument(
        "--max-upload-megapixels", type=float, default=64.0, help="largest decoded image accepted, in megapixels"
    )
    parser.add_argument(
        "--max-message-megapixels", type=float, default=256.0, help="all images of one message, in megapixels"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="generations running at once")
    return parser.parse_args(argv)


def check_port_free(host: str, port: int) -> None:
    """Exit with one line naming --server-port when ``host:port`` is taken (before any model is loaded)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            print(
                f"web_demo_mm.py: error: port {port} on {host} is not free ({e.strerror}); pass --server-port with "
                "a free port, or stop the server using it",
                file=sys.stderr,
            )
            raise SystemExit(2) from None


if __name__ == "__main__":  # parse before the heavy imports below: --help and usage errors answer at once
    _ARGS = parse_args()
    check_port_free(_ARGS.server_name, _ARGS.server_port)

import gradio as gr  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from qwenvl.data.encode import media_cost  # noqa: E402
from qwenvl.inference import load_backend  # noqa: E402
from qwenvl.inference.base import Backend, GenerationSettings, generation_defaults  # noqa: E402
from qwenvl.model.grounding import find_boxes  # noqa: E402


logger = logging.getLogger("web_demo_mm")

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}

# A/B mode on a narrow screen stacks the two chat columns: there each gets a quarter of the screen's height, so the input
# stays in view (a 390 px phone saw it 1250 px down); on a wide screen, side by side, 520 px each. (CSS clamp: the
# middle term is negative below 640 px of width and huge above.)
AB_CHAT_HEIGHT = "clamp(25vh, calc((100vw - 640px) * 10), 520px)"


# ----------------------------------------------------------------------------------------------- session state


@dataclass
class Column:
    """One model's side of a conversation: what the model is sent (raw text) and what the chat shows."""

    history: list[dict[str, Any]] = field(default_factory=list)
    display: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ChatSession:
    """A browser session's conversation: one column per model (two in A/B mode)."""

    columns: list[Column] = field(default_factory=list)

    def column(self, i: int) -> Column:
        while len(self.columns) <= i:
            self.columns.append(Column())
        return self.columns[i]

    def waiting_for_answer(self) -> bool:
        return bool(self.columns) and bool(self.columns[0].history) and self.columns[0].history[-1]["role"] == "user"

    def drop_last_answer(self) -> None:
        for column in self.columns:
            if column.history and column.history[-1]["role"] == "assistant":
                column.history.pop()
            while column.display and column.display[-1]["role"] == "assistant":
                column.display.pop()


@dataclass
class DemoConfig:
    max_upload_mb: float = 50.0
    concurrency: int = 1
    default_max_new_tokens: int = 512
    max_upload_megapixels: float = 64.0  # decoded size of one image (a 13000x13000 PNG of 20 KB is 169)
    max_message_megapixels: float = 256.0  # all images of one message together
    upload_concurrency: int = 2  # uploads decoded at once (inside Gradio's queue)

    def limits_text(self) -> str:
        return (
            f"Uploads: at most {self.max_upload_mb:g} MB each; images up to {self.max_upload_megapixels:g} "
            f"megapixels each and {self.max_message_megapixels:g} per message."
        )


class SessionFiles:
    """The uploads of each browser session, deleted when the session ends or is cleared; readable by this user
    only while they exist."""

    def __init__(self) -> None:
        self._files: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, session: str, path: str) -> None:
        try:
            os.chmod(path, 0o600)
            os.chmod(os.path.dirname(path), 0o700)
        except OSError:
            pass
        with self._lock:
            self._files.setdefault(session, set()).add(path)

    def delete(self, session: str) -> int:
        with self._lock:
            paths = self._files.pop(session, set())
        for path in paths:
            try:
                os.unlink(path)
                os.rmdir(os.path.dirname(path))  # Gradio keeps each upload in a folder of its own
            except OSError:
                pass
        return len(paths)


class Generations:
    """The stop events of the generations running in each browser session, one per column, so Stop (all
    columns), a column's own Stop and Clear reach a running answer directly; Clear also marks the session's
    running answer as abandoned, so it sends no update after the chat was emptied."""

    def __init__(self) -> None:
        self._stops: dict[str, list[threading.Event]] = {}
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, session: str, columns: int) -> tuple[list[threading.Event], int]:
        stops = [threading.Event() for _ in range(columns)]
        with self._lock:
            self._stops[session] = stops
            return stops, self._epochs.get(session, 0)

    def finish(self, session: str, stops: list[threading.Event]) -> None:
        with self._lock:
            if self._stops.get(session) is stops:
                del self._stops[session]

    def stop(self, session: str, column: int | None = None) -> None:
        with self._lock:
            stops = self._stops.get(session, [])
        for i, event in enumerate(stops):
            if column is None or i == column:
                event.set()

    def abandon(self, session: str) -> None:
        with self._lock:
            self._epochs[session] = self._epochs.get(session, 0) + 1
        self.stop(session)

    def current(self, session: str, epoch: int) -> bool:
        with self._lock:
            return self._epochs.get(session, 0) == epoch


# ----------------------------------------------------------------------------------------------- helpers


def image_megapixels(path: str) -> float:
    """Decoded size of an image upload from its header (no pixels are decoded)."""
    from qwen_vl_utils.image_io import open_image

    with open_image(path) as image:
        width, height = image.size
    return width * height / 1e6


def short_error(error: BaseException, path: str = "") -> str:
    """An error message for the chat: one line, with the server's upload folder left out."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if path:
        text = text.replace(repr(path), repr(Path(path).name)).replace(path, Path(path).name)
    return text[:300]


def check_upload(path: str, max_mb: float) -> str:
    """``image`` or ``video`` for an allowed upload; raises ValueError (shown in the chat) otherwise."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        kind = "image"
    elif ext in VIDEO_EXTENSIONS:
        kind = "video"
    else:
        raise ValueError(f"{Path(path).name}: unsupported file type {ext or '(none)'}; upload an image or a video")
    size = os.path.getsize(path)
    if size > max_mb * 1024 * 1024:
        raise ValueError(f"{Path(path).name}: {size / 1e6:.1f} MB is over the {max_mb:g} MB upload limit")
    return kind


def describe_upload(path: str, kind: str, backend: Backend) -> str:
    """The resized resolution and visual token count an upload will cost this backend (from the header or a
    probe; raises on unreadable files)."""
    cost = media_cost({"type": kind, kind: path}, backend.family, backend.budget)
    if kind == "image":
        from qwen_vl_utils import fetch_image

        # Decoded once here, inside the queue: a file whose header reads but whose pixels do not is refused now.
        fetch_image(backend.budget.image_item({"image": path}), image_patch_size=backend.family.patch_size)
    return cost.describe(Path(path).name)


def draw_boxes(image_path: str, boxes: list[tuple[list[float], str]], out_dir: str) -> str:
    image = Image.open(image_path).convert("RGB")
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for (x1, y1, x2, y2), label in boxes:
        rect = [x1 / 1000 * w, y1 / 1000 * h, x2 / 1000 * w, y2 / 1000 * h]
        draw.rectangle(rect, outline=(255, 0, 0), width=max(2, w // 200))
        if label:
            draw.text((rect[0] + 3, rect[1] + 3), label, fill=(255, 0, 0))
    fd, out = tempfile.mkstemp(suffix=".png", dir=out_dir)
    os.close(fd)
    image.save(out)
    return out


_MD_IMAGE = re.compile(r"!(\[[^\]]*\])")


def render_text(text: str) -> str:
    """Chat display of model text: HTML escaped, and Markdown images shown as plain links, so an answer (steered
    by a prompt injection in an uploaded document, say) can never make the browser fetch a URL by itself."""
    return _MD_IMAGE.sub(r"\1", html.escape(text, quote=False))


def split_reasoning(text: str) -> tuple[str | None, str, bool]:
    """``(reasoning, answer, reasoning_finished)`` of a raw answer. Qwen thinking models write
    ``<think>...</think>`` (or only the closing tag, when the chat template opened it); ``None`` without any."""
    open_at, close_at = text.find("<think>"), text.find("</think>")
    if close_at >= 0:
        start = open_at + len("<think>") if 0 <= open_at < close_at else 0
        return text[start:close_at].strip(), text[close_at + len("</think>") :].lstrip(), True
    if open_at >= 0:
        return text[open_at + len("<think>") :].strip(), text[:open_at], False
    return None, text, False


def render_answer(text: str) -> list[dict[str, Any]]:
    """The chat messages showing one raw answer: its reasoning as a collapsed "Reasoning" box (Gradio's thought
    messages, escaped like the answer), then the answer."""
    reasoning, answer, finished = split_reasoning(text)
    messages: list[dict[str, Any]] = []
    if reasoning is not None:
        title = "Reasoning" if finished else "Thinking..."
        words = len(reasoning.split())
        messages.append(
            {
                "role": "assistant",
                "content": render_text(reasoning) or "...",
                "metadata": {"title": title, "status": "done", "log": f"{words} words"},
            }
        )
    if answer or reasoning is None:
        messages.append({"role": "assistant", "content": render_text(answer)})
    return messages


def last_image(history: list[dict[str, Any]]) -> str | None:
    for message in reversed(history):
        if message["role"] == "user" and isinstance(message["content"], list):
            for item in reversed(message["content"]):
                if item.get("type") == "image":
                    return item["image"]
    return None


def _session_id(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "-"


# ----------------------------------------------------------------------------------------------- UI


class ChatApp:
    """The demo's UI over one backend (or two, side by side: A/B mode). Every event handler is a method taking
    the session's :class:`ChatSession`; the chat columns are drawn from it."""

    def __init__(self, backend: Backend, config: DemoConfig | None = None, compare: Backend | None = None) -> None:
        self.config = config or DemoConfig()
        self.backends: list[Backend] = [backend] + ([compare] if compare is not None else [])
        self.files = SessionFiles()
        self.generations = Generations()
        self.box_dir = tempfile.mkdtemp(prefix="qwenvl-demo-boxes-")
        base = GenerationSettings(max_new_tokens=self.config.default_max_new_tokens)
        self.defaults, self.default_sources = generation_defaults(backend.checkpoint, base)

    @property
    def ab(self) -> bool:
        return len(self.backends) > 1

    def column_name(self, i: int) -> str:
        backend = self.backends[i]
        name = f"{backend.label} ({backend.name}, {backend.family.model_type})"
        return f"{'AB'[i]}: {name}" if self.ab else name

    def outputs(self, session: ChatSession) -> tuple[Any, ...]:
        return (session, *[session.column(i).display for i in range(len(self.backends))])

    def cleared_outputs(self) -> tuple[Any, ...]:
        return self.outputs(ChatSession())

    # ------------------------------------------------------------------------------------------- handlers

    def add_user(self, message: dict[str, Any] | None, session: ChatSession, request: gr.Request = None):
        """A user message: uploads checked and described (each column's own size and token cost, next to the
        file), refusals as one line each; the input is locked until the answer is done."""
        session = session or ChatSession()
        text = (message or {}).get("text") or ""
        files = (message or {}).get("files") or []
        columns = [session.column(i) for i in range(len(self.backends))]
        items: list[dict[str, Any]] = []
        message_mp = 0.0
        for f in files:
            path = f if isinstance(f, str) else f.get("path")
            self.files.add(_session_id(request), path)
            try:
                kind = check_upload(path, self.config.max_upload_mb)
                if kind == "image":
                    mp = image_megapixels(path)
                    if mp > self.config.max_upload_megapixels:
                        raise ValueError(
                            f"{Path(path).name}: {mp:.0f} megapixels is over the "
                            f"{self.config.max_upload_megapixels:g} megapixel limit per image (--max-upload-megapixels)"
                        )
                    if message_mp + mp > self.config.max_message_megapixels:
                        raise ValueError(
                            f"{Path(path).name}: the images of this message would exceed "
                            f"{self.config.max_message_megapixels:g} megapixels (--max-message-megapixels); send fewer"
                        )
                    message_mp += mp
                notes = [describe_upload(path, kind, backend) for backend in self.backends]
            except Exception as e:  # noqa: BLE001 - every refusal is one line in the chat; the session goes on
                for column in columns:
                    column.display.append(
                        {"role": "assistant", "content": f"Upload refused: {html.escape(short_error(e, path))}"}
                    )
                continue
            items.append({"type": kind, kind: path})
            for column, note in zip(columns, notes):
                column.display.append({"role": "user", "content": {"path": path}})
                column.display.append({"role": "user", "content": f"*{html.escape(note)}*"})
        if text:
            items.append({"type": "text", "text": text})
            for column in columns:
                column.display.append({"role": "user", "content": text})
        if items:
            for column in columns:
                column.history.append({"role": "user", "content": items})
        return gr.MultimodalTextbox(value=None, interactive=False), *self.outputs(session)

    def answer(
        self,
        session: ChatSession,
        system_prompt: str,
        max_new_tokens: float,
        temperature: float,
        top_p: float,
        top_k: float,
        repetition_penalty: float,
        seed: float | None,
        request: gr.Request = None,
    ):
        """Stream every column's answer to the last user message (columns run at once, each in its thread)."""
        session = session or ChatSession()
        if not session.waiting_for_answer():
            yield self.outputs(session)
            return
        sid = _session_id(request)
        n = len(self.backends)
        system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
        gen = GenerationSettings(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            repetition_penalty=float(repetition_penalty),
            seed=int(seed) if seed is not None and seed >= 0 else None,
        )
        stops, epoch = self.generations.start(sid, n)
        events: queue.Queue[tuple[int, str | None, Exception | None]] = queue.Queue()
        columns = [session.column(i) for i in range(n)]

        def run(i: int) -> None:
            try:
                for piece in self.backends[i].stream(system + columns[i].history, gen, stops[i]):
                    events.put((i, piece, None))
                events.put((i, None, None))
            except Exception as e:  # noqa: BLE001 - shown in that column, the session goes on
                logger.exception("generation failed (%s)", self.backends[i].name)
                events.put((i, None, e))

        answers, errors = [""] * n, [None] * n
        shown_from = [len(c.display) for c in columns]
        for i in range(n):
            threading.Thread(target=run, args=(i,), daemon=True, name=f"demo-column-{i}").start()
        try:
            running = n
            while running:
                try:
                    i, piece, error = events.get(timeout=0.1)
                except queue.Empty:  # a backend that says nothing (a stalled server) cannot hold a cleared chat
                    if not self.generations.current(sid, epoch):
                        yield self.cleared_outputs()
                        return
                    continue
                if piece is None:
                    running -= 1
                    errors[i] = error
                else:
                    answers[i] += piece
                shown = render_answer(answers[i])
                if errors[i] is not None:
                    shown.append({"role": "assistant", "content": f"**Error:** {html.escape(short_error(errors[i]))}"})
                columns[i].display[shown_from[i] :] = shown
                if not self.generations.current(sid, epoch):
                    # Cleared meanwhile: the last word is an empty chat (Gradio re-sends a generator's last
                    # update when it ends, which would otherwise refill the chat after Clear).
                    yield self.cleared_outputs()
                    return
                yield self.outputs(session)
        finally:
            for stop in stops:
                stop.set()  # also when the event is cancelled: every column's generation ends
            self.generations.finish(sid, stops)
        if not self.generations.current(sid, epoch):
            yield self.cleared_outputs()
            return
        for i in range(n):
            if errors[i] is not None:
                continue
            columns[i].history.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
            image, boxes = last_image(columns[i].history), find_boxes(answers[i])
            if image and boxes:
                drawn = draw_boxes(image, boxes, self.box_dir)
                columns[i].display.append({"role": "assistant", "content": {"path": drawn}})
        yield self.outputs(session)

    def regenerate(self, session: ChatSession):
        session = session or ChatSession()
        session.drop_last_answer()
        return self.outputs(session)

    def stop(self, request: gr.Request = None) -> None:
        self.generations.stop(_session_id(request))

    def stop_column(self, column: int):
        def stop(request: gr.Request = None) -> None:
            self.generations.stop(_session_id(request), column)

        stop.__name__ = f"stop_{'ab'[column]}"
        return stop

    def clear(self, session: ChatSession, request: gr.Request = None):
        sid = _session_id(request)
        self.generations.abandon(sid)
        self.files.delete(sid)
        session = session or ChatSession()
        session.columns = []
        return (*self.outputs(session), gr.MultimodalTextbox(value=None, interactive=True), *self.idle())

    def end_session(self, request: gr.Request = None) -> None:
        sid = _session_id(request)
        self.generations.abandon(sid)
        self.files.delete(sid)

    def busy(self) -> tuple[Any, ...]:
        """Buttons while an answer runs: Stop(s) on, Regenerate off."""
        return (gr.Button(interactive=False), *[gr.Button(interactive=True)] * len(self.stop_buttons))

    def idle(self) -> tuple[Any, ...]:
        return (gr.Button(interactive=True), *[gr.Button(interactive=False)] * len(self.stop_buttons))

    # ------------------------------------------------------------------------------------------- layout

    def build(self) -> gr.Blocks:
        d, src = self.defaults, self.default_sources

        def origin(name: str) -> str:
            return f"from {src[name]}"

        first = self.backends[0]
        title = f"Qwen-VL chat: {first.label}" if not self.ab else "Qwen-VL A/B: " + " vs ".join(
            b.label for b in self.backends)  # fmt: skip
        # delete_cache: Gradio also removes what is left (e.g. sessions that never said goodbye) hourly and at exit.
        with gr.Blocks(title=title, delete_cache=(3600, 3600)) as demo:
            heading = f"### {html.escape(title)}"
            if self.ab:
                heading += (
                    "  \nEvery message goes to both, with the same uploads and settings; each keeps its history."
                )
            gr.Markdown(heading, elem_id="title")
            session = gr.State(ChatSession())
            self.stop_buttons: list[gr.Button] = []
            chatbots = []
            with gr.Row():
                for i in range(len(self.backends)):
                    with gr.Column():
                        chatbots.append(
                            gr.Chatbot(
                                elem_id="chatbot" if i == 0 else "chatbot_b",
                                label=self.column_name(i),
                                show_label=True,
                                height=AB_CHAT_HEIGHT if self.ab else 520,
                                buttons=["copy"],
                                sanitize_html=True,
                            )
                        )
                        if self.ab:
                            self.stop_buttons.append(
                                gr.Button(f"Stop {'AB'[i]}", elem_id=f"stop_{'ab'[i]}", interactive=False, size="sm")
                            )
            textbox = gr.MultimodalTextbox(
                elem_id="chat_input",
                file_types=["image", "video"],
                file_count="multiple",
                sources=["upload"],
                placeholder="Ask about an image or a video...",
                show_label=False,
            )
            with gr.Row():
                stop_btn = gr.Button("Stop", elem_id="stop_btn", interactive=False)
                regen_btn = gr.Button("Regenerate", elem_id="regen_btn")
                clear_btn = gr.Button("Clear", elem_id="clear_btn")
            self.stop_buttons.insert(0, stop_btn)
            gr.Markdown(self.config.limits_text(), elem_id="upload_limits")
            with gr.Accordion("Settings", open=False):
                details = []
                for i, backend in enumerate(self.backends):
                    budget = backend.budget.describe()
                    origin_text = "" if backend.budget_source == budget else f" (from {backend.budget_source})"
                    details.append(f"{self.column_name(i)}: media budget {budget}{origin_text}")
                gr.Markdown(html.escape("\n".join(details)).replace("\n", "  \n"), elem_id="model_details")
                system_prompt = gr.Textbox(label="System prompt", value="")
                max_new_tokens = gr.Slider(1, 32768, value=d.max_new_tokens, step=1, label="Max new tokens",
                                           info=origin("max_new_tokens"), elem_id="max_new_tokens")  # fmt: skip
                temperature = gr.Slider(0.0, 2.0, value=d.temperature, step=0.05, label="Temperature (0 = greedy)",
                                        info=origin("temperature"), elem_id="temperature")  # fmt: skip
                top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="Top-p", info=origin("top_p"),
                                  elem_id="top_p")  # fmt: skip
                top_k = gr.Slider(0, 200, value=d.top_k, step=1, label="Top-k (0 = off)", info=origin("top_k"),
                                  elem_id="top_k")  # fmt: skip
                repetition_penalty = gr.Slider(0.8, 2.0, value=d.repetition_penalty, step=0.05,
                                               label="Repetition penalty", info=origin("repetition_penalty"),
                                               elem_id="repetition_penalty")  # fmt: skip
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: a new one each time; fixed: reproducible)",
                                 elem_id="seed")  # fmt: skip
            controls = [system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed]
            view = [session, *chatbots]
            buttons = [regen_btn, *self.stop_buttons]

            # Uploads are decoded inside the queue, a few at a time: large images cannot pile up outside it.
            submit = textbox.submit(
                self.add_user, [textbox, session], [textbox, *view],
                concurrency_limit=self.config.upload_concurrency, concurrency_id="uploads",
            )  # fmt: skip
            answer = submit.then(self.busy, None, buttons, queue=False).then(
                self.answer, [session, *controls], view, api_name="chat", concurrency_id="model"
            )
            answer.then(
                lambda: (gr.MultimodalTextbox(interactive=True), *self.idle()), None, [textbox, *buttons], queue=False
            )
            regen = regen_btn.click(self.regenerate, session, view, queue=False).then(
                self.busy, None, buttons, queue=False
            )
            regen_run = regen.then(self.answer, [session, *controls], view, concurrency_id="model")
            regen_run.then(self.idle, None, buttons, queue=False)
            # Stop ends the generation itself (the answer so far is kept, in the chat and the history); the
            # generator then finishes normally and the chain above unlocks the input.
            stop_btn.click(self.stop, None, None, queue=False)
            for i, button in enumerate(self.stop_buttons[1:]):
                button.click(self.stop_column(i), None, None, queue=False)
            # Clear stops a running answer through Generations (not Gradio's cancel): the answer then ends by
            # sending an empty chat itself, so no update of it can arrive after the Clear.
            clear_btn.click(self.clear, session, [*view, textbox, *buttons], queue=False)
            demo.unload(self.end_session)
        demo.queue(default_concurrency_limit=self.config.concurrency, max_size=32)
        return demo


def build_demo(backend: Backend, config: DemoConfig | None = None, compare: Backend | None = None) -> gr.Blocks:
    """The chat UI around ``backend`` (no server is started). With ``compare``, an A/B view: every message goes to
    both backends with the same uploads and settings, and each answers in its own column, keeping its own history
    (two checkpoints, e.g. base vs fine-tuned, or two backends of one checkpoint)."""
    return ChatApp(backend, config, compare).build()


# ----------------------------------------------------------------------------------------------- main


def make_backend(args: argparse.Namespace) -> Backend:
    """The backend the command line asks for (one line naming the fix when it cannot be built)."""
    from qwenvl.cli import UserError

    try:
        if args.backend == "openai":
            return load_backend(
                "openai",
                args.checkpoint_path,
                api_base=args.api_base,
                api_key=args.api_key,
                model=args.model,
                family=args.family,
            )
        if args.backend == "vllm":
            return load_backend(
                "vllm",
                args.checkpoint_path,
                tensor_parallel_size=args.tensor_parallel_size or 1,
                gpu_memory_utilization=args.gpu_memory_utilization,
                dtype="float32" if args.cpu_only else "auto",
                enforce_eager=args.cpu_only,
            )
        attn = "flash_attention_2" if args.flash_attn2 else "auto"
        return load_backend("hf", args.checkpoint_path, attn_implementation=attn,
                            device="cpu" if args.cpu_only else "auto")  # fmt: skip
    except (ConnectionError, UserError) as e:
        hint = " (fix --api-base)" if isinstance(e, ConnectionError) else ""
        print(f"web_demo_mm.py: error: {e}{hint}", file=sys.stderr)
        raise SystemExit(2) from None


def make_compare_backend(args: argparse.Namespace) -> Backend | None:
    """The A/B mode's second backend, or None when neither --compare-checkpoint nor --compare-backend is given."""
    if args.compare_checkpoint is None and args.compare_backend is None:
        return None
    checkpoint = args.compare_checkpoint or args.checkpoint_path
    second = dict(vars(args), backend=args.compare_backend or args.backend, checkpoint_path=checkpoint)
    if args.compare_checkpoint is not None:
        second["model"] = checkpoint  # openai: the server's name for the second model
    return make_backend(argparse.Namespace(**second))


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> None:
    args = args if args is not None else parse_args(argv)
    check_port_free(args.server_name, args.server_port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = DemoConfig(
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
        max_upload_megapixels=args.max_upload_megapixels,
        max_message_megapixels=args.max_message_megapixels,
    )
    # The demo fetches only uploads, but a fine-tuned model's answer can be asked to open URLs; never private ones.
    os.environ.setdefault("QWENVL_HTTP_BLOCK_PRIVATE", "1")
    demo = build_demo(make_backend(args), config, compare=make_compare_backend(args))
    demo.launch(
        server_name=args.server_name,
        server_port=args.server_port,
        share=args.share,
        inbrowser=args.inbrowser,
        max_file_size=f"{args.max_upload_mb:g}mb",
    )


if __name__ == "__main__":
    main(args=_ARGS)
