"""Gradio chat demo for Qwen-VL checkpoints: images and videos, streaming answers, sampling controls.

Run::

    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct                      # in-process transformers (GPU if any)
    python web_demo_mm.py -c /path/ckpt --cpu-only --server-port 7860
    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct --backend vllm --tensor-parallel-size 2
    python web_demo_mm.py --backend openai --api-base http://127.0.0.1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct
                                                                             # any OpenAI-compatible server
    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct --compare-checkpoint ./my-finetune   # A/B: two columns
    python web_demo_mm.py -c Qwen/Qwen3-VL-8B-Instruct --compare-backend vllm                # A/B: hf vs vllm

Backends: ``hf`` (transformers in this process, tokens streamed from a generation thread), ``vllm`` (vLLM's
async engine in this process, real incremental streaming; imported only when chosen) and ``openai`` (an
OpenAI-compatible server such as ``vllm serve`` or ``transformers serve``; uploads are sent as data URIs).
All resize images through qwen_vl_utils with the checkpoint's saved preprocessing settings, so an answer does
not depend on the backend. Only uploaded files are ever opened: text typed in the chat is never read as a path.
The server binds 127.0.0.1 unless ``--server-name`` says otherwise; every browser session has its own history.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import os
import queue
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from qwenvl.cli import StrictParser

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
    parser.add_argument("--model", default=None, help="openai backend: model name (default: --checkpoint-path)")
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

from qwen_vl_utils import fetch_image  # noqa: E402
from qwenvl.inference.hf import GenerationSettings, apply_budgets  # noqa: E402
from qwenvl.model.families import Family  # noqa: E402
from qwenvl.model.grounding import find_boxes  # noqa: E402
from qwenvl.model.preprocessing import PreprocessingSettings, load_preprocessing  # noqa: E402


logger = logging.getLogger("web_demo_mm")

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}


# ----------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    name: str
    family: Family
    settings: PreprocessingSettings | None

    def stream(self, messages: list[dict[str, Any]], gen: GenerationSettings, stop: threading.Event) -> Iterator[str]:
        """Yield the answer's text incrementally (each item is the new text)."""
        ...


class HFBackend:
    """transformers in this process; text is streamed token by token from a generation thread."""

    name = "hf"

    def __init__(self, checkpoint: str, cpu_only: bool = False, flash_attn2: bool = False) -> None:
        from qwenvl.inference.hf import HFGenerator

        device_map = "cpu" if cpu_only else ("auto" if _cuda() else "cpu")
        attn = "flash_attention_2" if flash_attn2 else ("sdpa" if cpu_only or not _cuda() else "auto")
        self.generator = HFGenerator(checkpoint, dtype="auto", attn_implementation=attn, device_map=device_map)
        self.checkpoint = checkpoint
        self.family = self.generator.family
        self.settings = self.generator.settings
        self.processor = self.generator.processor

    def stream(self, messages: list[dict[str, Any]], gen: GenerationSettings, stop: threading.Event) -> Iterator[str]:
        yield from self.generator.stream(messages, gen, stop=stop)


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions server; images are resized here and sent as data URIs."""

    name = "openai"

    def __init__(self, api_base: str, api_key: str, model: str, checkpoint: str | None = None) -> None:
        try:
            from openai import OpenAI
        except ImportError as e:
            raise ImportError(
                "--backend openai needs the openai package: pip install -r requirements_web_demo.txt"
            ) from e
        from qwenvl.model.families import get_family

        self.client = OpenAI(base_url=api_base, api_key=api_key or "EMPTY")
        self.api_base = api_base
        self.model = self.checkpoint = model
        self.settings = load_preprocessing(checkpoint) if checkpoint and os.path.isdir(checkpoint) else None
        family_name = self.settings.model_type if self.settings else _guess_family(model, checkpoint)
        self.family = get_family(family_name)

    def check_server(self, timeout: float = 10.0) -> None:
        """Raise ``ConnectionError`` naming the URL when the server does not answer (checked at start)."""
        try:
            self.client.with_options(timeout=timeout, max_retries=0).models.list()
        except Exception as e:  # noqa: BLE001 - any failure to list models means the demo cannot work
            raise ConnectionError(
                f"cannot reach the OpenAI-compatible server at {self.api_base} ({short_error(e)}); start it "
                "(e.g. vllm serve MODEL) or fix --api-base"
            ) from None

    def stream(self, messages: list[dict[str, Any]], gen: GenerationSettings, stop: threading.Event) -> Iterator[str]:
        try:
            yield from self._stream(messages, gen, stop)
        except ConnectionError:
            raise
        except Exception as e:
            import openai

            if isinstance(e, openai.APIConnectionError):
                raise ConnectionError(f"cannot reach {self.api_base}: {short_error(e)}") from e
            if isinstance(e, openai.APIStatusError):
                raise RuntimeError(f"{self.api_base} answered HTTP {e.status_code}: {short_error(e)}") from e
            raise

    def _stream(self, messages: list[dict[str, Any]], gen: GenerationSettings, stop: threading.Event) -> Iterator[str]:
        payload = [_to_openai_message(m, self.family) for m in apply_budgets(messages, self.settings)]
        extra: dict[str, Any] = {}
        if gen.top_k:
            extra["top_k"] = gen.top_k
        if gen.repetition_penalty != 1.0:
            extra["repetition_penalty"] = gen.repetition_penalty
        response = self.client.chat.completions.create(
            model=self.model,
            messages=payload,
            stream=True,
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            seed=gen.seed,
            extra_body=extra or None,
        )
        try:
            for chunk in response:
                if stop.is_set():
                    break
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            response.close()


class VLLMBackend:
    """vLLM in this process (its async engine), streaming each new piece of text as it is generated."""

    name = "vllm"

    def __init__(self, checkpoint: str, tensor_parallel_size: int | None = None, gpu_memory_utilization: float = 0.9,
                 cpu_only: bool = False) -> None:  # fmt: skip
        from qwenvl.inference.vllm_backend import VLLMGenerator

        self.generator = VLLMGenerator(
            checkpoint,
            tensor_parallel_size=tensor_parallel_size or 1,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype="float32" if cpu_only else "auto",
            enforce_eager=cpu_only,
        )
        self.checkpoint = checkpoint
        self.family = self.generator.family
        self.settings = self.generator.settings

    def stream(self, messages: list[dict[str, Any]], gen: GenerationSettings, stop: threading.Event) -> Iterator[str]:
        yield from self.generator.stream(messages, gen, stop)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _guess_family(model: str, checkpoint: str | None) -> str:
    if checkpoint and os.path.isdir(checkpoint):
        from qwenvl.model.loader import read_family

        return read_family(checkpoint).model_type
    return "qwen3_vl" if "qwen3" in model.lower() else "qwen2_5_vl"


def _data_uri(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".") or "bin"
    mime = ("video/" if f".{ext}" in VIDEO_EXTENSIONS else "image/") + ("jpeg" if ext == "jpg" else ext)
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _to_openai_message(message: dict[str, Any], family: Family) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    parts: list[dict[str, Any]] = []
    for item in content:
        if item.get("type") == "image":
            image = fetch_image(item, image_patch_size=family.patch_size)  # the same resize as the hf backend
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            parts.append(
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
                }
            )
        elif item.get("type") == "video":
            parts.append({"type": "video_url", "video_url": {"url": _data_uri(item["video"])}})
        else:
            parts.append({"type": "text", "text": item.get("text", "")})
    return {"role": message["role"], "content": parts}


# ----------------------------------------------------------------------------------------------- helpers


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
    """The resized resolution and visual token count an upload will cost (raises on unreadable files)."""
    factor = backend.family.image_factor
    if kind == "image":
        ele = apply_budgets([{"role": "user", "content": [{"type": "image", "image": path}]}], backend.settings)
        image = fetch_image(ele[0]["content"][0], image_patch_size=backend.family.patch_size)
        w, h = image.size
        return f"{Path(path).name}: {w}x{h}, {(w // factor) * (h // factor)} visual tokens"
    from qwen_vl_utils.video_io import plan_video

    # A probe, not a decode: the frames are decoded once, when the model needs them.
    ele = apply_budgets([{"role": "user", "content": [{"type": "video", "video": path}]}], backend.settings)
    plan = plan_video(path, ele[0]["content"][0], backend.family.patch_size)
    tokens = plan.nframes // backend.family.temporal_patch_size * (plan.height // factor) * (plan.width // factor)
    return f"{Path(path).name}: {plan.nframes} frames of {plan.width}x{plan.height}, {tokens} visual tokens"


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


def render_answer(text: str) -> str:
    """Chat display of a raw answer: HTML escaped, and Markdown images shown as plain links, so an answer (steered
    by a prompt injection in an uploaded document, say) can never make the browser fetch a URL by itself. The
    model's raw text stays in the session history."""
    return _MD_IMAGE.sub(r"\1", html.escape(text, quote=False))


def last_image(history: list[dict[str, Any]]) -> str | None:
    for message in reversed(history):
        if message["role"] == "user" and isinstance(message["content"], list):
            for item in reversed(message["content"]):
                if item.get("type") == "image":
                    return item["image"]
    return None


# ----------------------------------------------------------------------------------------------- UI


def build_demo(backend: Backend, config: DemoConfig | None = None, compare: Backend | None = None) -> gr.Blocks:
    """The chat UI around ``backend`` (no server is started). With ``compare``, an A/B view: every message goes to
    both backends with the same preprocessed uploads and settings, and each answers in its own column, keeping
    its own history (two checkpoints, e.g. base vs fine-tuned, or two backends of one checkpoint)."""
    config = config or DemoConfig()
    session_files = SessionFiles()
    box_dir = tempfile.mkdtemp(prefix="qwenvl-demo-boxes-")
    lanes: list[Backend] = [backend] + ([compare] if compare is not None else [])
    n = len(lanes)

    def split(state: tuple[Any, ...]) -> tuple[list[list], list[list], tuple[Any, ...]]:
        """Event inputs are ``n`` histories, ``n`` chats, then the rest: copies of the first two, and the rest."""
        return [list(h or []) for h in state[:n]], [list(c or []) for c in state[n : 2 * n]], state[2 * n :]

    def add_user(message: dict[str, Any], *state: Any, request: gr.Request = None):
        """Inputs: the textbox, then ``n`` histories, ``n`` chats and the upload info."""
        histories, chats, (info,) = split(state)
        text = (message or {}).get("text") or ""
        files = (message or {}).get("files") or []
        items: list[dict[str, Any]] = []
        notes: list[str] = []
        message_mp = 0.0
        session = getattr(request, "session_hash", None) or "-"
        for f in files:
            path = f if isinstance(f, str) else f.get("path")
            session_files.add(session, path)
            try:
                kind = check_upload(path, config.max_upload_mb)
                if kind == "image":
                    mp = image_megapixels(path)
                    if mp > config.max_upload_megapixels:
                        raise ValueError(
                            f"{Path(path).name}: {mp:.0f} megapixels is over the {config.max_upload_megapixels:g} "
                            "megapixel limit per image (--max-upload-megapixels)"
                        )
                    if message_mp + mp > config.max_message_megapixels:
                        raise ValueError(
                            f"{Path(path).name}: the images of this message would exceed "
                            f"{config.max_message_megapixels:g} megapixels (--max-message-megapixels); send fewer"
                        )
                    message_mp += mp
                # Each column's own budgets and patch size (they differ between families and fine-tunes).
                costs = [describe_upload(path, kind, lane) for lane in lanes]
                notes.append(costs[0] if n == 1 else " | ".join(f"{'AB'[i]}: {c}" for i, c in enumerate(costs)))
            except Exception as e:  # noqa: BLE001 - every refusal is one line in the chat; the session goes on
                for chat in chats:
                    chat.append(
                        {"role": "assistant", "content": f"Upload refused: {html.escape(short_error(e, path))}"}
                    )
                continue
            items.append({"type": kind, kind: path})
            for chat in chats:
                chat.append({"role": "user", "content": {"path": path}})
        if text:
            items.append({"type": "text", "text": text})
            for chat in chats:
                chat.append({"role": "user", "content": text})
        if items:
            for history in histories:
                history.append({"role": "user", "content": items})
        info = "\n".join(f"- {note}" for note in notes) if notes else info
        return gr.MultimodalTextbox(value=None, interactive=False), *histories, *chats, info

    def bot(*state: Any):
        """Inputs: ``n`` histories, ``n`` chats, then the settings; streams every lane's answer as it comes."""
        histories, chats, settings = split(state)
        system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty = settings
        if not histories[0] or histories[0][-1]["role"] != "user":
            yield *histories, *chats
            return
        system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
        gen = GenerationSettings(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            repetition_penalty=float(repetition_penalty),
        )
        stop = threading.Event()  # shared: backends only read it, so one finished column never stops the other
        events: queue.Queue[tuple[int, str | None, Exception | None]] = queue.Queue()

        def run(lane: int) -> None:
            try:
                for piece in lanes[lane].stream(system + histories[lane], gen, stop):
                    events.put((lane, piece, None))
                events.put((lane, None, None))
            except Exception as e:  # noqa: BLE001 - shown in that lane's chat, the session goes on
                logger.exception("generation failed (%s)", lanes[lane].name)
                events.put((lane, None, e))

        answers = [""] * n
        failed: list[Exception | None] = [None] * n
        for chat in chats:
            chat.append({"role": "assistant", "content": ""})
        for lane in range(n):
            threading.Thread(target=run, args=(lane,), daemon=True, name=f"demo-lane-{lane}").start()
        try:
            running = n
            while running:
                lane, piece, error = events.get()
                if piece is None:
                    running -= 1
                    failed[lane] = error
                    if error is None:
                        continue
                    piece = ""
                answers[lane] += piece
                shown = render_answer(answers[lane])
                if error is not None:
                    shown += f"\n\n**Error:** {html.escape(short_error(error))}"
                chats[lane][-1] = {"role": "assistant", "content": shown}
                yield *histories, *chats
        finally:
            stop.set()  # also when Stop / Clear cancel this generator: every column's generation ends
        for lane in range(n):
            if failed[lane] is not None:
                continue
            histories[lane] = histories[lane] + [
                {"role": "assistant", "content": [{"type": "text", "text": answers[lane]}]}
            ]
            image, boxes = last_image(histories[lane]), find_boxes(answers[lane])
            if image and boxes:
                chats[lane].append({"role": "assistant", "content": {"path": draw_boxes(image, boxes, box_dir)}})
        yield *histories, *chats

    def drop_last_answer(*state: Any):
        histories, chats, _ = split(state)
        for history in histories:
            if history and history[-1]["role"] == "assistant":
                history.pop()
        for chat in chats:
            while chat and chat[-1]["role"] == "assistant":
                chat.pop()
        return *histories, *chats, gr.Button(interactive=False)

    def reset(request: gr.Request = None):
        session_files.delete(getattr(request, "session_hash", None) or "-")
        return *([[]] * (2 * n)), "", gr.MultimodalTextbox(value=None, interactive=True), gr.Button(interactive=True)

    def end_session(request: gr.Request = None) -> None:
        session_files.delete(getattr(request, "session_hash", None) or "-")

    # delete_cache: Gradio also removes what is left (e.g. sessions that never said goodbye) hourly and at exit.
    with gr.Blocks(title="Qwen-VL chat", delete_cache=(3600, 3600)) as demo:
        if compare is None:
            gr.Markdown(f"## Qwen-VL chat ({backend.name} backend, {backend.family.model_type})")
        else:
            gr.Markdown(
                f"## Qwen-VL A/B: {html.escape(_label(backend))} vs {html.escape(_label(compare))}\n"
                "Every message goes to both, with the same uploads and settings; each keeps its own history."
            )
        histories = [gr.State([]) for _ in lanes]
        with gr.Row():
            chatbots = [
                gr.Chatbot(
                    elem_id="chatbot" if i == 0 else "chatbot_b",
                    label=None if n == 1 else f"{'AB'[i]}: {_label(lane)}",
                    height=520,
                    reasoning_tags=[("<think>", "</think>")],
                    buttons=["copy"],
                    sanitize_html=True,
                )
                for i, lane in enumerate(lanes)
            ]
        textbox = gr.MultimodalTextbox(
            elem_id="chat_input",
            file_types=["image", "video"],
            file_count="multiple",
            sources=["upload"],
            placeholder="Ask about an image or a video...",
            show_label=False,
        )
        with gr.Row():
            stop_btn = gr.Button("Stop", elem_id="stop_btn")
            regen_btn = gr.Button("Regenerate", elem_id="regen_btn")
            clear_btn = gr.Button("Clear", elem_id="clear_btn")
        upload_info = gr.Markdown("", elem_id="upload_info")
        gr.Markdown(config.limits_text(), elem_id="upload_limits")
        with gr.Accordion("Settings", open=False):
            system_prompt = gr.Textbox(label="System prompt", value="")
            max_new_tokens = gr.Slider(1, 8192, value=config.default_max_new_tokens, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)")
            repetition_penalty = gr.Slider(0.8, 2.0, value=1.0, step=0.05, label="Repetition penalty")
        controls = [system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty]

        state = [*histories, *chatbots]
        # Uploads are decoded inside the queue, a few at a time: large images cannot pile up outside it.
        submit = textbox.submit(
            add_user,
            [textbox, *state, upload_info],
            [textbox, *state, upload_info],
            concurrency_limit=config.upload_concurrency,
            concurrency_id="uploads",
        )
        answer = submit.then(lambda: gr.Button(interactive=False), None, regen_btn, queue=False).then(
            bot, [*state, *controls], state, api_name="chat", concurrency_id="model"
        )
        answer.then(
            lambda: (gr.MultimodalTextbox(interactive=True), gr.Button(interactive=True)),
            None,
            [textbox, regen_btn],
            queue=False,
        )

        regen = regen_btn.click(drop_last_answer, state, [*state, regen_btn], queue=False)
        regen_run = regen.then(bot, [*state, *controls], state, concurrency_id="model")
        regen_run.then(lambda: gr.Button(interactive=True), None, regen_btn, queue=False)

        stop_btn.click(
            lambda: (gr.MultimodalTextbox(interactive=True), gr.Button(interactive=True)),
            None,
            [textbox, regen_btn],
            cancels=[answer, regen_run],
            queue=False,
        )
        # Clear cancels a running generation; a second, late clear catches an update already in flight.
        cleared = [*state, upload_info, textbox, regen_btn]
        clear = clear_btn.click(reset, None, cleared, cancels=[answer, regen_run], queue=False)
        clear.then(_late_pause, None, None, queue=False).then(reset, None, cleared, queue=False)
        demo.unload(end_session)
    demo.queue(default_concurrency_limit=config.concurrency, max_size=32)
    return demo


def _label(backend: Backend) -> str:
    return f"{getattr(backend, 'checkpoint', None) or backend.family.model_type} ({backend.name})"


def _late_pause() -> None:
    threading.Event().wait(0.5)


# ----------------------------------------------------------------------------------------------- main


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "openai":
        backend = OpenAIBackend(args.api_base, args.api_key, args.model or args.checkpoint_path, args.checkpoint_path)
        try:
            backend.check_server()
        except ConnectionError as e:
            print(f"web_demo_mm.py: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        return backend
    if args.backend == "vllm":
        return VLLMBackend(args.checkpoint_path, args.tensor_parallel_size, args.gpu_memory_utilization, args.cpu_only)
    return HFBackend(args.checkpoint_path, cpu_only=args.cpu_only, flash_attn2=args.flash_attn2)


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
