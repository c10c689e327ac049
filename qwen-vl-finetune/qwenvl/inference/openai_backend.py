"""The ``openai`` backend: any OpenAI-compatible chat-completions server (``vllm serve``, ``transformers serve``,
a hosted endpoint).

Images are resized here by qwen_vl_utils under the same budget as the local backends and sent as PNG data URLs, so
the server's own resize keeps them as they are. Videos are sent as data URLs of the file (``video_frames="file"``:
the server samples its own frames), or as the frames qwen_vl_utils samples and resizes for SFT and the local backends
(``"sampled"``, for vLLM: PNG frames in vLLM's ``data:video/jpeg;base64,<frame>,<frame>,...`` list, which PIL
decodes by their content, so losslessly, with their sampling in the request's ``media_io_kwargs``; the server
needs ``--trust-request-mm-kwargs``, and its token ids and timestamps then equal training's). The model family comes
from ``--family``, or from the served checkpoint's config (a local folder given with ``-c``, the folder the
server names as the model's ``root``, or the hub id's config in the local cache), never from the model's name.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Literal

from qwenvl.cli import MissingPackage, Unreachable, UserError
from qwenvl.inference.base import (
    Completion,
    Emit,
    Finish,
    GenerationSettings,
    Halted,
    short_label,
    stream_in_thread,
)
from qwenvl.model.budget import MediaBudget
from qwenvl.model.families import FAMILIES, Family, get_family
from qwenvl.model.grounding import keep_grounding_tokens
from qwenvl.model.preprocessing import checkpoint_budget


VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
# A request the server failed (connection error, these statuses, any 5xx) is tried again after these pauses (s);
# other 4xx answers are the request's fault and are not retried.
RETRY_DELAYS = (0.5, 1.0, 2.0)
RETRY_STATUS = {408, 429}
VideoFrames = Literal["file", "sampled"]
# The sampling facts of qwen_vl_utils' metadata that vLLM's frame-list video loader takes (media_io_kwargs["video"]):
# Qwen3-VL's timestamps come from fps and frames_indices, Qwen2.5-VL's second_per_grid_ts from the sampled fps.
VIDEO_METADATA = ("fps", "frames_indices", "total_num_frames", "duration")


def short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]


class OpenAIBackend:
    """A model behind an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self,
        api_base: str,
        model: str | None = None,
        api_key: str = "EMPTY",
        checkpoint: str | None = None,
        family: str | None = None,
        budget: MediaBudget | None = None,
        concurrency: int = 8,
        timeout: float = 600.0,
        max_retries: int = 2,
        check: bool = True,
        connect_timeout: float = 5.0,
        stream_timeout: float = 120.0,
        video_frames: VideoFrames = "file",
    ) -> None:
        """``model``: the server's name for the model (default: the only one it serves, or ``checkpoint``).
        ``checkpoint``: a local copy of the served checkpoint (its family and saved budget are read from it).
        ``check``: ask the server for its models now (a ``ConnectionError`` naming the URL when it does not
        answer). ``max_retries``: how many times a request that failed on the server's side (a connection error,
        HTTP 408, 429 or 5xx) is tried again, after ``RETRY_DELAYS``; other failures are not retried.
        Timeouts (s): ``connect_timeout`` to open a connection; ``timeout`` for a whole non-streamed answer;
        ``stream_timeout`` for each wait of a streamed answer (the first token, then every next piece), so a server
        that accepts a request and never answers frees the request after that long. ``video_frames``: send each
        video as its file (``"file"``) or as the frames qwen_vl_utils samples under the budget (``"sampled"``: a vLLM
        server started with ``--trust-request-mm-kwargs``; see the module doc)."""
        try:
            from openai import OpenAI
        except ImportError as e:
            raise MissingPackage("the openai backend needs the openai package: pip install openai") from e
        self.api_base = api_base
        # Retries are ours (``_create``), not the client's: its policy (5 tries doubling up to 8 s, each of the
        # concurrent requests on its own) kept a failing server busy for many seconds before one error came back.
        import httpx

        self.client = OpenAI(
            base_url=api_base,
            api_key=api_key or "EMPTY",
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            max_retries=0,
        )
        self.stream_client = self.client.with_options(timeout=httpx.Timeout(stream_timeout, connect=connect_timeout))
        self.max_retries = max(0, max_retries)
        self.concurrency = max(1, concurrency)
        if video_frames not in ("file", "sampled"):
            raise ValueError(f"video_frames must be 'file' or 'sampled', got {video_frames!r}")
        self.video_frames = video_frames
        served = self.served_models() if check else {}
        if model is None:
            if len(served) == 1:
                model = next(iter(served))
            elif checkpoint is not None:
                model = checkpoint
            else:
                raise UserError(f"{api_base} serves {sorted(served) or 'no models'}; pass --model with one of them")
        elif served and model not in served:
            raise UserError(f"{api_base} does not serve {model!r}; it serves {sorted(served)} (fix --model)")
        self.model = model
        root = served.get(model)
        local = next((p for p in (checkpoint, root) if p and Path(p).is_dir()), None)
        self.checkpoint = local or root or model
        self.label = short_label(model)
        self.family = self._family(family, local, model)
        if budget is None:
            self.budget, self.budget_source = checkpoint_budget(local)
        else:
            self.budget, self.budget_source = budget, "given"

    # ------------------------------------------------------------------------------------------------ server

    def served_models(self, timeout: float = 10.0) -> dict[str, str | None]:
        """``{model id: root}`` of what the server serves (``root``: the checkpoint path vLLM reports, if any)."""
        import openai

        url = f"{self.api_base.rstrip('/')}/models"
        try:
            raw = self.client.with_options(timeout=timeout, max_retries=0).models.with_raw_response.list()
        except openai.APIStatusError as e:
            raise ServerError(f"{url} answered HTTP {e.status_code}: {_server_message(e)}") from None
        except Exception as e:  # noqa: BLE001 - any other failure to list models means the backend cannot work
            raise Unreachable(
                f"cannot reach the OpenAI-compatible server at {self.api_base} ({short_error(e)}); start it "
                "(e.g. vllm serve MODEL) or fix --base-url (the demo also reads it as --api-base)"
            ) from None
        try:
            models = {m.id: getattr(m, "root", None) for m in raw.parse().data}
        except (ValueError, AttributeError, TypeError):
            http = raw.http_response
            raise ServerError(
                f"{url} answered HTTP {http.status_code} ({http.headers.get('content-type', 'no content type')}), not "
                f"a model list: {_first_bytes(http.content)}; is --base-url the OpenAI-compatible API (ending in /v1)?"
            ) from None
        return models

    def _family(self, name: str | None, local: str | None, model: str) -> Family:
        from qwenvl.model.loader import read_family

        if name is not None:
            return get_family(name)
        if local is not None:
            return read_family(local)
        try:
            return read_family(model)  # a hub id: its config (from the local cache when offline)
        except UserError:
            raise UserError(
                f"cannot tell the model family of {model!r} served at {self.api_base}: pass --family "
                f"({', '.join(FAMILIES)}) or a local copy of the checkpoint"
            ) from None

    # ------------------------------------------------------------------------------------------------ requests

    def encode(self, conversation: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The request's messages (images resized under the budget and sent as PNG data URLs; videos as
        ``video_frames`` says) and the fields they need in the request's body (``media_io_kwargs`` of sampled
        frames, else none)."""
        from qwen_vl_utils import fetch_image

        out = []
        sampling: dict[str, Any] | None = None
        for message in self.budget.apply(conversation):
            content = message["content"]
            if isinstance(content, str):
                out.append({"role": message["role"], "content": content})
                continue
            parts: list[dict[str, Any]] = []
            for item in content:
                if item.get("type") == "image":
                    image = fetch_image(item, image_patch_size=self.family.patch_size)
                    url = "data:image/png;base64," + _png_base64(image)
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                elif item.get("type") == "video" and self.video_frames == "sampled":
                    url, video = self._sampled_video(item)
                    if sampling is not None and video != sampling:
                        raise UserError(
                            f"two videos of one conversation are sampled differently ({_sampling_text(sampling)}; "
                            f"{_sampling_text(video)}) and a vLLM request carries one sampling (media_io_kwargs) for "
                            "all its videos: put one video in each conversation"
                        )
                    sampling = video
                    parts.append({"type": "video_url", "video_url": {"url": url}})
                elif item.get("type") == "video":
                    parts.append({"type": "video_url", "video_url": {"url": _data_url(item["video"])}})
                else:
                    parts.append({"type": "text", "text": item.get("text", "")})
            out.append({"role": message["role"], "content": parts})
        # num_frames -1: every frame sent (vLLM keeps the first 32 by default)
        extra = {"media_io_kwargs": {"video": {"num_frames": -1, **sampling}}} if sampling is not None else {}
        return out, extra

    def _sampled_video(self, item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A video item's frames as qwen_vl_utils samples and resizes them (the frames SFT and inference use), as a
        ``data:video/jpeg`` list of PNG frames, and their sampling in vLLM's ``media_io_kwargs`` names."""
        import numpy as np
        from PIL import Image

        from qwen_vl_utils import fetch_video

        frames, metadata = fetch_video(item, self.family.patch_size, return_video_metadata=True)
        # float32 TCHW with integer values 0-255 (qwen_vl_utils rounds after the resize): uint8 keeps every pixel
        pixels = frames.permute(0, 2, 3, 1).numpy().astype(np.uint8)
        url = "data:video/jpeg;base64," + ",".join(_png_base64(Image.fromarray(frame)) for frame in pixels)
        sampling = {key: metadata[key] for key in VIDEO_METADATA if metadata.get(key) is not None}
        sampling["frames_indices"] = [int(i) for i in sampling["frames_indices"]]
        sampling["total_num_frames"] = int(sampling["total_num_frames"])
        return url, sampling

    def _request(self, gen: GenerationSettings, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request's settings; ``body``: fields of :meth:`encode` for the request's body."""
        extra: dict[str, Any] = dict(body or {})
        if gen.top_k:
            extra["top_k"] = gen.top_k
        if gen.repetition_penalty != 1.0:
            extra["repetition_penalty"] = gen.repetition_penalty
        if self.family.box_markup == "box_tokens":
            # Qwen2-VL writes boxes with special tokens, which servers drop by default (vLLM, SGLang): ask for them.
            extra["skip_special_tokens"] = False
        return dict(
            model=self.model,
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            presence_penalty=gen.presence_penalty,
            seed=gen.seed,
            extra_body=extra or None,
        )

    def _text(self, text: str) -> str:
        """The answer's text: with special tokens asked for (box markup), all but the grounding ones removed."""
        return keep_grounding_tokens(text) if self.family.box_markup == "box_tokens" else text

    def _create(self, stop: threading.Event | None = None, **request: Any) -> Any:
        client = self.stream_client if request.get("stream") else self.client
        return chat_completion(client, self.api_base, request, self.max_retries, stop)

    def generate(
        self, conversations: list[list[dict[str, Any]]], gen: GenerationSettings | None = None
    ) -> list[Completion]:
        """Answers to a batch of conversations, ``concurrency`` requests at a time. The first request that fails for
        good ends the batch: requests not yet sent are dropped, those in flight are not retried, and its error is
        raised."""
        gen = gen or GenerationSettings()
        failed = threading.Event()

        def one(conversation: list[dict[str, Any]]) -> Completion:
            if failed.is_set():
                raise _Dropped()
            try:
                messages, extra = self.encode(conversation)
                response = self._create(failed, messages=messages, **self._request(gen, extra))
            except BaseException:
                failed.set()
                raise
            choice = response.choices[0]
            return Completion(self._text(choice.message.content or ""), choice.finish_reason == "length")

        with ThreadPoolExecutor(min(self.concurrency, max(1, len(conversations)))) as pool:
            futures = [pool.submit(one, c) for c in conversations]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            if failed.is_set():
                for future in futures:
                    future.cancel()
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        first = next((e for e in errors if not isinstance(e, _Dropped)), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]

    def stream(
        self,
        conversation: list[dict[str, Any]],
        gen: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as the server streams it; setting ``stop`` closes the connection."""
        gen = gen or GenerationSettings()
        messages, extra = self.encode(conversation)

        def produce(emit: Emit, halted: Halted) -> Finish:
            import httpx
            import openai

            response = self._create(stop, messages=messages, stream=True, **self._request(gen, extra))
            finish = None
            try:
                for chunk in response:
                    if halted():
                        return "stopped"
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta and choice.delta.content and (text := self._text(choice.delta.content)):
                        emit(text)
                    finish = choice.finish_reason or finish
            except openai.APIStatusError as e:  # the server sent an error event mid-stream
                raise ServerError(f"{self.api_base} failed while streaming: {short_error(e)}") from None
            except (openai.APIError, httpx.HTTPError) as e:  # the connection dropped after the server answered
                raise ServerError(
                    f"{self.api_base} dropped the connection while streaming the answer ({short_error(e)})"
                ) from None
            finally:
                response.close()
            if halted():
                return "stopped"
            if finish is None:
                return "cut_off"  # neither a finish reason nor [DONE]: the answer may be incomplete
            return "length" if finish == "length" else "stop"

        return (yield from stream_in_thread(produce, stop, name="openai-stream"))


def chat_completion(
    client: Any, api_base: str, request: dict[str, Any], max_retries: int = 2, stop: threading.Event | None = None
) -> Any:
    """``client.chat.completions.create(**request)`` (``client``: an ``openai.OpenAI`` made with ``max_retries=0``),
    tried again after ``RETRY_DELAYS`` while the server fails it (connection error, HTTP 408, 429, 5xx), at most
    ``max_retries`` times and not once ``stop`` is set. The last failure, and any other (an HTTP 400), is raised as
    one line naming the URL, the status and the server's message: :class:`ServerError`, or ``ConnectionError`` when
    the server cannot be reached. A non-streamed answer that is not a chat completion (not JSON, no choices) is a
    :class:`ServerError` naming what came back."""
    import openai

    url = f"{api_base.rstrip('/')}/chat/completions"
    attempt = 0
    while True:
        attempt += 1
        try:
            if request.get("stream"):
                return client.chat.completions.create(**request)
            return _completion(client.chat.completions.with_raw_response.create(**request), url)
        except openai.APIConnectionError as e:  # timeouts too
            retryable = True
            error: Exception = ConnectionError(f"cannot reach {url}: {short_error(e)}; is the server running?")
        except openai.APIStatusError as e:
            retryable = e.status_code in RETRY_STATUS or e.status_code >= 500
            error = ServerError(f"{url} answered HTTP {e.status_code}: {_server_message(e)}")
        if not retryable or attempt > max_retries or (stop is not None and stop.is_set()):
            if attempt > 1:
                error.args = (f"{error.args[0]} (tried {attempt} times)",)
            raise error from None
        time.sleep(RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)])


class ServerError(UserError):
    """An OpenAI-compatible server refused or failed a request; the message names the URL, the HTTP status and what
    the server said (one line)."""


class _Dropped(Exception):
    """A request not sent because another one of its batch had failed."""


def _server_message(error: Any) -> str:
    """What the server said in an error response: the ``message`` of an OpenAI-style ``{"error": {...}}`` body (or
    FastAPI's ``detail``), else the body's first bytes."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        text = body.get("message") or body.get("detail") or json.dumps(body)
    elif isinstance(body, str) and body.strip():
        text = body
    else:
        response = getattr(error, "response", None)
        text = _first_bytes(response.content) if response is not None else short_error(error)
    return " ".join(str(text).split())[:300] or "(an empty body)"


def _first_bytes(data: bytes, n: int = 120) -> str:
    text = data[:n].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(data) > n else "") if data else "an empty body"


def _completion(raw: Any, url: str) -> Any:
    """The chat completion in a raw response, or a :class:`ServerError` naming the URL and what came back."""
    http = raw.http_response
    what = f"{url} answered HTTP {http.status_code} ({http.headers.get('content-type', 'no content type')})"
    try:
        response = raw.parse()
    except ValueError:
        response = None
    if not getattr(response, "choices", None):
        raise ServerError(f"{what}, not a chat completion in JSON: {_first_bytes(http.content)}; is --base-url the "
                          "OpenAI-compatible API (ending in /v1)?")  # fmt: skip
    return response


def _sampling_text(sampling: dict[str, Any]) -> str:
    return f"{len(sampling['frames_indices'])} of {sampling['total_num_frames']} frames at {sampling['fps']:g} fps"


def _png_base64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _data_url(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".") or "bin"
    mime = ("video/" if f".{ext}" in VIDEO_EXTENSIONS else "image/") + ("jpeg" if ext == "jpg" else ext)
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()
