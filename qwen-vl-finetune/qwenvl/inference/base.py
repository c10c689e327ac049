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
from typing import Any, Callable, Iterator, Protocol

from qwenvl.model.budget import MediaBudget
from qwenvl.model.families import Family


THINK_END = "</think>"


def strip_reasoning(text: str) -> str:
    """The answer of a generated text: what follows the last ``</think>``, stripped. Thinking models write
    ``<think>reasoning</think>answer``, or only ``reasoning</think>answer`` when the chat template opened the block
    in the prompt (Qwen3.5 by default); text without ``</think>`` is all answer."""
    return text.split(THINK_END)[-1].strip()


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
        """Yield the answer's new text as it is generated; ``stop`` (only read, never set) ends it early."""
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


def stream_in_thread(
    produce: Callable[[Emit, Halted], None], stop: threading.Event | None = None, name: str = "generation"
) -> Iterator[str]:
    """Run ``produce(emit, halted)`` in a worker thread and yield every non-empty text it emits, as it comes.

    ``halted()`` turns true when the caller's ``stop`` is set or the caller stops reading (closes the generator);
    the producer checks it between pieces and ends its generation. An exception in the producer is re-raised in
    the caller's thread. The caller's ``stop`` is never set here (it may be shared, e.g. by the demo's A/B columns).
    """
    pieces: queue.Queue[Any] = queue.Queue()
    halt = threading.Event()

    def halted() -> bool:
        return halt.is_set() or (stop is not None and stop.is_set())

    def emit(text: str) -> None:
        if text:
            pieces.put(text)

    def run() -> None:
        try:
            produce(emit, halted)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            pieces.put(_Failure(e))
        finally:
            pieces.put(_DONE)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    try:
        while (item := pieces.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        halt.set()
        thread.join()
