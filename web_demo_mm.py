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
in this process; ``openai``: an OpenAI-compatible server such as ``vllm serve``); this file holds the Gradio
wiring and its handlers. What is not UI lives below it: the chat's bookkeeping (stops, the columns' threads, upload
checks and session files) in :mod:`qwenvl.inference.chat`, safe Markdown in :mod:`qwenvl.inference.markup`, the
reasoning split in :mod:`qwenvl.inference.base`, boxes in :mod:`qwenvl.model.grounding`. The backend flags and
their construction are the evaluations' (:class:`qwenvl.inference.config.BackendConfig`).
All resize images through qwen_vl_utils under the checkpoint's budget, so an answer does not depend on the
backend; sampling starts from the checkpoint's ``generation_config.json``. Only uploaded files are ever opened: text typed in the chat is never read as a path.
The server binds 127.0.0.1 unless ``--server-name`` says otherwise; every browser session has its own history.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


DEMO_DEFAULTS = {"model_path": "Qwen/Qwen3-VL-8B-Instruct", "base_url": "http://127.0.0.1:8000/v1", "concurrency": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The backend's flags (:class:`qwenvl.inference.config.BackendConfig`, shared with the evaluations, with the
    demo's historical names as aliases) and the server's and uploads' own."""
    from qwenvl.cli import StrictParser
    from qwenvl.inference.config import BackendConfig

    parser = StrictParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    BackendConfig.add_arguments(parser, defaults=DEMO_DEFAULTS)
    BackendConfig.add_compare_arguments(parser)
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    parser.add_argument("--inbrowser", action="store_true", help="open a browser tab")
    parser.add_argument("--server-port", type=int, default=7860)
    parser.add_argument("--server-name", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted")
    parser.add_argument(
        "--max-upload-megapixels", type=float, default=64.0, help="largest decoded image accepted, in megapixels"
    )
    parser.add_argument(
        "--max-message-megapixels", type=float, default=256.0, help="all images of one message, in megapixels"
    )
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

from qwenvl.cli import run_tool  # noqa: E402
from qwenvl.inference import load_backend  # noqa: E402
from qwenvl.inference.base import Backend, GenerationSettings, generation_defaults, split_reasoning  # noqa: E402
from qwenvl.inference.chat import (  # noqa: E402
    ColumnAnswer,
    Generations,
    SessionFiles,
    UploadLimits,
    check_upload,
    describe_upload,
    run_columns,
    short_error,
)
from qwenvl.inference.config import BackendConfig  # noqa: E402
from qwenvl.inference.markup import display_chunks, safe_markdown  # noqa: E402
from qwenvl.model.grounding import answer_boxes, draw_boxes  # noqa: E402


logger = logging.getLogger("web_demo_mm")

# A/B mode on a narrow screen stacks the two chat columns: there each gets a quarter of the screen's height, so the input
# stays in view (a 390 px phone saw it 1250 px down); on a wide screen, side by side, 520 px each. (CSS clamp: the
# middle term is negative below 640 px of width and huge above.)
AB_CHAT_HEIGHT = "clamp(25vh, calc((100vw - 640px) * 10), 520px)"

# What the chat says under an answer that did not end by itself.
ENDINGS = {
    "stopped": "*(stopped)*",
    "length": "*(cut off: the answer reached Max new tokens)*",
    "cut_off": "*(cut off: the server ended the stream before the answer was complete)*",
}


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

    def has_question(self) -> bool:
        return bool(self.columns) and any(m["role"] == "user" for m in self.columns[0].history)

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

    def limits(self) -> UploadLimits:
        return UploadLimits(self.max_upload_mb, self.max_upload_megapixels, self.max_message_megapixels)

    def limits_text(self) -> str:
        return (
            f"Uploads: at most {self.max_upload_mb:g} MB each; images up to {self.max_upload_megapixels:g} "
            f"megapixels each and {self.max_message_megapixels:g} per message."
        )


def render_answer(answer: ColumnAnswer, opened: bool = False) -> list[dict[str, Any]]:
    """The chat messages showing one answer: its reasoning as a collapsed "Reasoning" box (Gradio's thought
    messages), the answer, then how it ended when it did not end by itself (stopped, cut off, an error). ``opened``:
    the chat template opened the reasoning block in the prompt."""
    reasoning, text, finished = split_reasoning(answer.text, opened)
    messages: list[dict[str, Any]] = []
    if reasoning is not None:
        title = "Reasoning" if finished else "Thinking..."
        messages.append(
            {
                "role": "assistant",
                "content": safe_markdown(reasoning) or "...",
                "metadata": {"title": title, "status": "done", "log": f"{len(reasoning.split())} words"},
            }
        )
    if text or (reasoning is None and not answer.done):
        # A long answer is shown as consecutive messages, of which only the last changes while it streams.
        messages.extend({"role": "assistant", "content": safe_markdown(piece)} for piece in display_chunks(text))
    if answer.error is not None:
        messages.append({"role": "assistant", "content": f"**Error:** {safe_markdown(short_error(answer.error))}"})
    elif answer.finish in ENDINGS:
        if answer.finish == "stopped" and not answer.text:
            messages.append({"role": "assistant", "content": "*(stopped before the model answered)*"})
        elif messages and "metadata" not in messages[-1]:
            messages[-1]["content"] += "\n\n" + ENDINGS[answer.finish]  # in the answer's bubble, after it
        else:
            messages.append({"role": "assistant", "content": ENDINGS[answer.finish]})
    elif answer.done and not messages:
        messages.append({"role": "assistant", "content": "*(an empty answer)*"})
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

    def box_drawing(self, session: str, answer: str, backend: Backend, image: str) -> str | None:
        """A copy of ``image`` with the answer's boxes drawn (the backend's family convention), held by the
        session; written inside Gradio's cache, so Gradio serves it as it is and deleting it removes it."""
        from gradio.utils import get_upload_folder
        from PIL import Image

        with Image.open(image) as opened:
            size = opened.size
        boxes = answer_boxes(answer, backend.family, size, backend.budget)
        if not boxes:
            return None
        os.makedirs(get_upload_folder(), exist_ok=True)  # (made by Gradio's first upload; not before)
        folder = tempfile.mkdtemp(prefix="qwenvl-boxes-", dir=get_upload_folder())
        drawn = draw_boxes(image, boxes, os.path.join(folder, f"{Path(image).stem}-boxes.png"))
        self.files.add(session, drawn)
        return drawn

    # ------------------------------------------------------------------------------------------- handlers

    def add_user(self, message: dict[str, Any] | None, session: ChatSession, request: gr.Request = None):
        """A user message: uploads checked and described (each column's own size and token cost, next to the
        file), refusals as one line each after the question; the input is locked until the answer is done."""
        session = session or ChatSession()
        sid = _session_id(request)
        text = (message or {}).get("text") or ""
        files = (message or {}).get("files") or []
        columns = [session.column(i) for i in range(len(self.backends))]
        items: list[dict[str, Any]] = []
        refusals: list[str] = []
        message_mp = 0.0
        for f in files:
            path = f if isinstance(f, str) else f.get("path")
            self.files.add(sid, path)
            try:
                kind, mp = check_upload(path, self.config.limits(), message_mp)
                notes = [describe_upload(path, kind, backend) for backend in self.backends]
            except Exception as e:  # noqa: BLE001 - every refusal is one line in the chat; the session goes on
                refusals.append(f"Upload refused: {safe_markdown(short_error(e))}")
                continue
            message_mp += mp
            items.append({"type": kind, kind: path})
            for column, note in zip(columns, notes):
                column.display.append({"role": "user", "content": {"path": path}})
                column.display.append({"role": "user", "content": f"*{safe_markdown(note)}*"})
        if text:
            items.append({"type": "text", "text": text})
            for column in columns:
                column.display.append({"role": "user", "content": safe_markdown(text)})
        for column in columns:
            column.display.extend({"role": "assistant", "content": refusal} for refusal in refusals)
        if items:
            for column in columns:
                column.history.append({"role": "user", "content": items})
            self.generations.queue(sid)
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
        columns = [session.column(i) for i in range(n)]
        opened = [backend.family.thinks_by_default for backend in self.backends]
        shown_from = [len(c.display) for c in columns]
        answers: list[ColumnAnswer] = []
        try:
            for answers in run_columns(
                self.backends,
                [system + c.history for c in columns],
                gen,
                stops,
                cancelled=lambda: not self.generations.current(sid, epoch),
            ):
                for i, answer in enumerate(answers):
                    columns[i].display[shown_from[i] :] = render_answer(answer, opened[i])
                yield self.outputs(session)
        finally:
            self.generations.finish(sid, stops)
        if not self.generations.current(sid, epoch):
            # Cleared meanwhile: the last word is an empty chat (Gradio re-sends a generator's last update when it
            # ends, which would otherwise refill the chat after Clear).
            yield self.cleared_outputs()
            return
        for i, answer in enumerate(answers):
            if answer.text:  # a partial answer (stopped, cut off) is kept in the history as it is shown
                columns[i].history.append({"role": "assistant", "content": [{"type": "text", "text": answer.text}]})
            image = last_image(columns[i].history)
            if image and answer.text and answer.error is None:
                try:
                    drawn = self.box_drawing(sid, answer.text, self.backends[i], image)
                except Exception as e:  # noqa: BLE001 - the answer stands without its drawing
                    logger.warning("cannot draw the boxes: %s", short_error(e))
                    drawn = None
                if drawn:
                    columns[i].display.append({"role": "assistant", "content": {"path": drawn}})
        yield self.outputs(session)

    def regenerate(self, session: ChatSession, request: gr.Request = None):
        session = session or ChatSession()
        session.drop_last_answer()
        if session.waiting_for_answer():
            self.generations.queue(_session_id(request))
        return self.outputs(session)

    def stop(self, request: gr.Request = None):
        """Stop the session's answer, running or still queued; the button goes off once the stop is noted."""
        self.generations.stop(_session_id(request))
        return gr.Button(interactive=False)

    def stop_column(self, column: int):
        def stop(request: gr.Request = None):
            self.generations.stop(_session_id(request), column)
            return gr.Button(interactive=False)

        stop.__name__ = f"stop_{'ab'[column]}"
        return stop

    def clear(self, session: ChatSession, request: gr.Request = None):
        sid = _session_id(request)
        self.generations.abandon(sid)
        self.files.release(sid)
        session = session or ChatSession()
        session.columns = []
        return (*self.outputs(session), gr.MultimodalTextbox(value=None, interactive=True), *self.idle(session))

    def end_session(self, request: gr.Request = None) -> None:
        sid = _session_id(request)
        self.generations.abandon(sid)
        self.files.release(sid)
        self.generations.forget(sid)

    def busy(self) -> tuple[Any, ...]:
        """Buttons while an answer runs or waits: Stop(s) on, Regenerate off."""
        return (gr.Button(interactive=False), *[gr.Button(interactive=True)] * len(self.stop_buttons))

    def idle(self, session: ChatSession | None) -> tuple[Any, ...]:
        """Buttons between answers: Stop(s) off, Regenerate on when there is a question to answer again."""
        regen = bool(session) and session.has_question()
        return (gr.Button(interactive=regen), *[gr.Button(interactive=False)] * len(self.stop_buttons))

    def unlock(self, session: ChatSession) -> tuple[Any, ...]:
        """After an answer: the input open again, the buttons idle."""
        return (gr.MultimodalTextbox(interactive=True), *self.idle(session))

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
                regen_btn = gr.Button("Regenerate", elem_id="regen_btn", interactive=False)
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
            answer.then(self.unlock, session, [textbox, *buttons], queue=False)
            regen = regen_btn.click(self.regenerate, session, view, queue=False).then(
                self.busy, None, buttons, queue=False
            )
            regen_run = regen.then(self.answer, [session, *controls], view, concurrency_id="model")
            regen_run.then(self.idle, session, buttons, queue=False)
            # Stop ends the generation itself, at once even when the server has not answered yet, or the turn
            # before it starts when it still waits in the queue (the answer so far is kept, marked, in the chat and
            # the history); the generator then finishes normally and the chain above unlocks the input.
            stop_btn.click(self.stop, None, stop_btn, queue=False)
            for i, button in enumerate(self.stop_buttons[1:]):
                button.click(self.stop_column(i), None, button, queue=False)
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


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Start the demo (one ``error:`` line, exit 2, for a user's mistake such as an unreachable server)."""
    return run_tool(lambda: _serve(args if args is not None else parse_args(argv)))


def _serve(args: argparse.Namespace) -> None:
    check_port_free(args.server_name, args.server_port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    config = DemoConfig(
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
        max_upload_megapixels=args.max_upload_megapixels,
        max_message_megapixels=args.max_message_megapixels,
    )
    # The demo fetches only uploads, but a fine-tuned model's answer can be asked to open URLs; never private ones.
    os.environ.setdefault("QWENVL_HTTP_BLOCK_PRIVATE", "1")
    first = BackendConfig.from_args(args)
    second = first.compared(args.compare_checkpoint, args.compare_backend)
    demo = build_demo(load_backend(first), config, compare=load_backend(second) if second else None)
    # Gradio's own start-up lines end with "set `share=True` in `launch()`", which a user of this command cannot do:
    # say where the demo runs, and the flag, ourselves.
    demo.launch(
        server_name=args.server_name,
        server_port=args.server_port,
        share=args.share,
        inbrowser=args.inbrowser,
        max_file_size=f"{args.max_upload_mb:g}mb",
        quiet=True,
        prevent_thread_lock=True,
    )
    print(f"Running on local URL:  {demo.local_url}", flush=True)
    if args.share:
        print(f"Running on public URL: {demo.share_url}", flush=True)
    else:
        print("(--share creates a public link)", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    sys.exit(main(args=_ARGS))
