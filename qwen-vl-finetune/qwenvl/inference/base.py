"""What every inference backend shares: decoding settings (with the checkpoint's own defaults), the backend
protocol, and the one streaming helper that runs a generation in a worker thread.

A backend is loaded from a checkpoint (``hf``, ``vllm``) or a server (``openai``), answers batches of
conversations (``generate``) and streams one answer (``stream``) until it ends or the caller's ``stop`` event is
set. Media are resized by qwen_vl_utils under the backend's ``budget`` (:func:`qwenvl.model.preprocessing.
checkpoint_budget`), so an answer does not depend on the backend.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Literal, NamedTuple, Protocol

from qwenvl.model.budget import MediaBudget
from qwenvl.model.families import Family


THINK_START = "<think>"
THINK_END = "</think>"


class Reasoning(NamedTuple):
    """A generated text split at its reasoning: ``reasoning`` (``None`` when there is none), ``answer``, and
    ``finished`` (the reasoning block was closed)."""

    reasoning: str | None
    answer: str
    finished: bool


def split_reasoning(text: str, opened: bool = False) -> Reasoning:
    """The one reasoning split, for the demo (as an answer streams) and the evaluations (:func:`strip_reasoning`).

    Thinking models write ``<think>reasoning</think>answer``, or only ``reasoning</think>answer`` when the chat
    template opened the block in the prompt (``opened``: the family's ``thinks_by_default``, Qwen3.5). The answer is
    what follows the LAST ``</think>``. Without any ``</think>``: in a block the prompt opened, or after a
    ``<think>`` the text started, everything is reasoning still going on; otherwise all is answer."""
    if THINK_END in text:
        head, _, answer = text.rpartition(THINK_END)
        start = head.find(THINK_START)
        if start >= 0 and not head[:start].strip():
            head = head[start + len(THINK_START) :]
        return Reasoning(head.strip(), answer.lstrip(), True)
    stripped = text.lstrip()
    if stripped.startswith(THINK_START):
        return Reasoning(stripped[len(THINK_START) :].strip(), "", False)
    if opened:
        return Reasoning(text.strip(), "", False)
    return Reasoning(None, text, False)


def strip_reasoning(text: str, opened: bool = False) -> str:
    """The answer of a generated text (:func:`split_reasoning`), stripped: what follows the last ``</think>``; text
    without ``</think>`` is all answer unless it is reasoning still going on (a ``<think>`` it starts with, or
    ``opened``: a block the prompt opened)."""
    return split_reasoning(text, opened).answer.strip()


@dataclass
class GenerationSettings:
    """Decoding settings; ``temperature == 0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI / vLLM semantics: subtracted once from every token already generated
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (the presence penalty is a logits processor, see the hf
        backend)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


class Completion(str):
    """An answer's text (a ``str``), with ``truncated``: generation stopped at ``max_new_tokens`` before the model
    ended its answer."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False) -> Completion:
        out = super().__new__(cls, text)
        out.truncated = truncated
        return out


# generation_config.json key -> GenerationSettings field
_GENERATION_CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_new_tokens",
}


def read_generation_config(checkpoint: str | None) -> dict[str, Any]:
    """The checkpoint's ``generation_config.json`` (a local folder, or a hub id already in the local cache), or
    ``{}`` when it has none."""
    if not checkpoint:
        return {}
    path = Path(checkpoint) / "generation_config.json"
    if not path.is_file() and not Path(checkpoint).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(checkpoint, "generation_config.json")
        except Exception:  # noqa: BLE001 - not a hub id, or no cache: no defaults
            cached = None
        path = Path(cached) if isinstance(cached, str) else path
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def generation_defaults(
    checkpoint: str | None, base: GenerationSettings | None = None
) -> tuple[GenerationSettings, dict[str, str]]:
    """Decoding defaults for ``checkpoint``: its ``generation_config.json`` over ``base``, and where each field's
    value came from (``generation_config.json`` or ``default``). A config with ``do_sample: false`` means greedy
    (temperature 0) whatever temperature it also names, as transformers reads it."""
    settings = GenerationSettings(**vars(base)) if base is not None else GenerationSettings()
    sources = {f.name: "default" for f in fields(GenerationSettings)}
    config = read_generation_config(checkpoint)
    for key, name in _GENERATION_CONFIG_KEYS.items():
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(settings, name, type(getattr(settings, name))(value))
            sources[name] = "generation_config.json"
    if config.get("do_sample") is False:
        settings.temperature = 0.0
        sources["temperature"] = "generation_config.json (do_sample false: greedy)"
    elif config.get("do_sample") is True and "temperature" not in config:
        settings.temperature = 1.0  # transformers' default temperature when sampling
        sources["temperature"] = "generation_config.json (do_sample true)"
    return settings, sources


class Backend(Protocol):
    """A loaded model (in this process or behind a server) that answers chat conversations."""

    name: str  # hf, vllm, openai
    family: Family
    budget: MediaBudget
    budget_source: str  # where the budget came from (saved settings, qwen_vl_utils defaults, flags)
    checkpoint: str | None  # the checkpoint path or hub id (openai: the checkpoint it serves, when known)
    label: str  # a short name for people: the checkpoint's folder name or the served model's name

    def generate(self, conversations: list[list[dict[str, Any]]], gen: GenerationSettings) -> list[Completion]:
        """Answers to a batch of conversations, each ending with a user turn."""
        ...

    def stream(
        self, conversation: list[dict[str, Any]], gen: GenerationSettings, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """Yield the answer's new text as it is generated; ``stop`` (only read, never set) ends it early. The
        generator may return a :data:`Finish` saying how the answer ended."""
        ...


def short_label(name: str | None) -> str:
    """A checkpoint named for people: the last two path parts of a folder (never the server's full path), or the
    hub id as given."""
    if not name:
        return "model"
    path = Path(name)
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return "/".join(path.expanduser().resolve().parts[-2:])
    return name


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()

Emit = Callable[[str], None]
Halted = Callable[[], bool]
# How a streamed answer ended (a stream's return value; ``None``: the backend does not tell): ``stop`` the model
# ended it, ``length`` it reached ``max_new_tokens``, ``stopped`` the caller's stop, ``cut_off`` the server ended the
# stream without saying the answer was complete.
Finish = Literal["stop", "length", "stopped", "cut_off"]
# How long a stopped stream waits for its producer to notice before abandoning it (a request hung on a server).
ABANDON_AFTER_S = 0.5


def stream_in_thread(
    produce: Callable[[Emit, Halted], Finish | None], stop: threading.Event | None = None, name: str = "generation"
) -> Generator[str, None, Finish | None]:
    """Run ``produce(emit, halted)`` in a worker thread and yield every non-empty text it emits, as it comes; the
    generator returns how the answer ended (``produce``'s return value; ``stopped`` once ``stop`` is set).

    ``halted()`` turns true when the caller's ``stop`` is set or the caller stops reading (closes the generator);
    the producer checks it between pieces and ends its generation. Once ``stop`` is set the generator returns at
    once, even while the producer waits on something that does not answer (a hung server): the producer is given
    ``ABANDON_AFTER_S`` to end and is otherwise left to its own timeout. An exception in the producer is re-raised
    in the caller's thread. The caller's ``stop`` is never set here (it may be shared, e.g. by the demo's A/B
    columns).
    """
    pieces: queue.Queue[Any] = queue.Queue()
    halt = threading.Event()
    finish: list[Finish | None] = [None]

    def halted() -> bool:
        return halt.is_set() or (stop is not None and stop.is_set())

    def emit(text: str) -> None:
        if text:
            pieces.put(text)

    def run() -> None:
        try:
            finish[0] = produce(emit, halted)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            pieces.put(_Failure(e))
        finally:
            pieces.put(_DONE)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    abandoned = False
    try:
        while True:
            try:
                item = pieces.get(timeout=0.05 if stop is not None else None)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    abandoned = True
                    return "stopped"
                continue
            if item is _DONE:
                return "stopped" if stop is not None and stop.is_set() else finish[0]
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        halt.set()
        thread.join(timeout=ABANDON_AFTER_S if abandoned else None)
