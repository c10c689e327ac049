"""In-process transformers inference shared by MMMU, the demo and the quick-start job.

Media go through qwen_vl_utils with the checkpoint's saved preprocessing settings (``qwenvl_preprocessing.json``,
when present), so a fine-tuned model sees images exactly as in training, and the processor does not resize again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from qwenvl.model.families import Family
from qwenvl.model.preprocessing import PreprocessingSettings, load_preprocessing


logger = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """Decoding settings; ``temperature == 0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def apply_budgets(conversation: list[dict[str, Any]], settings: PreprocessingSettings | None) -> list[dict[str, Any]]:
    """A copy of ``conversation`` whose media items carry the saved budgets (an item's own keys win)."""
    if settings is None:
        return conversation
    out = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            items = []
            for item in content:
                if item.get("type") in ("image", "image_url") or "image" in item:
                    item = {**settings.image_item(), **item}
                elif item.get("type") == "video" or "video" in item:
                    video_keys = settings.video_item()
                    if "nframes" in item:
                        video_keys.pop("fps")
                    item = {**video_keys, **item}
                items.append(item)
            message = {**message, "content": items}
        out.append(message)
    return out


def prepare_inputs(
    processor: Any,
    family: Family,
    conversations: list[list[dict[str, Any]]],
    settings: PreprocessingSettings | None = None,
) -> Any:
    """Left-padded model inputs for a batch of conversations, each ending with a user turn."""
    from qwen_vl_utils import process_vision_info

    conversations = [apply_budgets(c, settings) for c in conversations]
    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    images, videos, video_kwargs = process_vision_info(
        conversations, return_video_kwargs=True, return_video_metadata=True, image_patch_size=family.patch_size
    )
    kwargs: dict[str, Any] = {"do_resize": False}
    if images:
        kwargs["images"] = images
    if videos:
        frames, metadata = zip(*videos)
        kwargs.update(videos=list(frames), video_metadata=list(metadata), **video_kwargs)
    return processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)


class DeltaStreamer:
    """A ``generate`` streamer that yields the new text after every token (``TextIteratorStreamer`` holds text
    back until a space or newline, so a word-less answer would arrive in one piece).

    Only the tokens since the last complete character are decoded each step, so a long answer costs linear time.
    """

    def __init__(self, tokenizer: Any) -> None:
        import queue

        self.tokenizer = tokenizer
        self.pending: list[int] = []  # tokens not yet ending in a complete character
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.pending.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if text.endswith("\ufffd") and len(self.pending) < 8:  # an incomplete UTF-8 sequence: wait for more
            return
        self.pending = []
        if text:
            self.queue.put(text)

    def end(self) -> None:
        if self.pending:
            text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
            if text:
                self.queue.put(text)
        self.queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (item := self.queue.get()) is not None:
            yield item


class HFGenerator:
    """A model + processor pair that answers conversations (batched) or streams one answer."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        attn_implementation: str = "auto",
        device_map: str | None = None,
        settings: PreprocessingSettings | None = None,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        from qwenvl.model.loader import load_model, load_processor, read_family

        self.model_path = model_path
        self.family = read_family(model_path)
        self.model = model if model is not None else load_model(model_path, dtype, attn_implementation, device_map)
        self.model.eval()
        self.processor = processor if processor is not None else load_processor(model_path)
        self.settings = settings if settings is not None else load_preprocessing(model_path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, conversations: list[list[dict[str, Any]]]) -> Any:
        return prepare_inputs(self.processor, self.family, conversations, self.settings).to(self.device)

    @torch.no_grad()
    def generate(self, conversations: list[list[dict[str, Any]]], gen: GenerationSettings | None = None) -> list[str]:
        """Answers to a batch of conversations (special tokens removed)."""
        gen = gen or GenerationSettings()
        if gen.seed is not None:
            torch.manual_seed(gen.seed)
        inputs = self.inputs(conversations)
        out = self.model.generate(**inputs, **gen.generate_kwargs())
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)

    def stream(
        self,
        conversation: list[dict[str, Any]],
        gen: GenerationSettings | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated; setting ``stop`` ends generation early."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        gen = gen or GenerationSettings()
        inputs = self.inputs([conversation])
        streamer = DeltaStreamer(self.processor.tokenizer)
        # Ends generation when the caller sets ``stop`` or stops reading; the caller's event is never set here
        # (it may be shared, e.g. by the demo's A/B columns).
        halt = threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # noqa: D102
                return halt.is_set() or (stop is not None and stop.is_set())

        kwargs = dict(
            **inputs, **gen.generate_kwargs(), streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()])
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    if gen.seed is not None:
                        torch.manual_seed(gen.seed)
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            halt.set()
            thread.join()
        if errors:
            raise errors[0]
