"""The ``hf`` backend: transformers in this process (batched ``generate``, token-by-token ``stream``).

Media go through qwen_vl_utils under the checkpoint's budget (its ``qwenvl_preprocessing.json`` when present), so
a fine-tuned model sees images exactly as in training, and the processor does not resize again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

import torch

from qwenvl.data.encode import encode_prompts
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
from qwenvl.model.grounding import GROUNDING_TOKENS
from qwenvl.model.preprocessing import checkpoint_budget


logger = logging.getLogger(__name__)


class TextDecoder:
    """Token ids to answer text: special tokens removed, except the grounding tokens of a family whose boxes are
    written as tokens (``box_markup == "box_tokens"``), which the answer needs to be drawn."""

    def __init__(self, tokenizer: Any, keep_grounding: bool = False) -> None:
        self.tokenizer = tokenizer
        self.drop: set[int] | None = None
        if keep_grounding:
            special = set(tokenizer.all_special_ids)
            special |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
            keep = {tokenizer.convert_tokens_to_ids(t) for t in GROUNDING_TOKENS}
            self.drop = special - keep

    def __call__(self, ids: list[int]) -> str:
        if self.drop is None:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode([i for i in ids if i not in self.drop], skip_special_tokens=False)


class DeltaStreamer:
    """A ``generate`` streamer that emits the new text after every token (``TextIteratorStreamer`` holds text
    back until a space or newline, so a word-less answer would arrive in one piece).

    Only the tokens since the last complete character are decoded each step, so a long answer costs linear time.
    """

    def __init__(self, tokenizer: Any, emit: Emit, decode: Callable[[list[int]], str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.decode = decode or TextDecoder(tokenizer)
        self.emit = emit
        self.pending: list[int] = []  # tokens not yet ending in a complete character
        self.prompt_seen = False
        self.generated = 0  # tokens generated so far
        self.last_token: int | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()
        self.generated += len(tokens)
        self.last_token = tokens[-1] if tokens else self.last_token
        self.pending.extend(tokens)
        text = self.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:  # an incomplete UTF-8 sequence: wait for more
            return
        self.pending = []
        self.emit(text)

    def end(self) -> None:
        if self.pending:
            self.emit(self.decode(self.pending))
            self.pending = []


def presence_penalty_processor(penalty: float, prompt_length: int) -> Any:
    """A logits processor subtracting ``penalty`` once from every token id generated so far (OpenAI's and vLLM's
    presence penalty; the prompt's tokens are not penalised). transformers has none of its own."""
    from transformers import LogitsProcessor

    class PresencePenalty(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            generated = input_ids[:, prompt_length:]
            if generated.shape[1] == 0:
                return scores
            seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
            return scores - penalty * seen.to(scores.dtype)

    return PresencePenalty()


class HFBackend:
    """A checkpoint's model and processor in this process."""

    name = "hf"

    def __init__(
        self,
        checkpoint: str,
        dtype: str = "auto",
        attn_implementation: str = "auto",
        device: str = "auto",
        budget: MediaBudget | None = None,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        """``device``: ``auto`` (the GPUs when CUDA is available, else the CPU), ``cpu`` or ``cuda``.
        ``budget``: the media budget (default: the checkpoint's, see ``checkpoint_budget``)."""
        from qwenvl.model.loader import load_model, load_processor, read_family

        self.checkpoint = checkpoint
        self.label = short_label(checkpoint)
        self.family = read_family(checkpoint)
        if model is None:
            device_map = "auto" if device != "cpu" and torch.cuda.is_available() else "cpu"
            model = load_model(checkpoint, dtype, attn_implementation, device_map)
        self.model = model.eval()
        self.processor = processor if processor is not None else load_processor(checkpoint)
        self.decode = TextDecoder(self.processor.tokenizer, keep_grounding=self.family.box_markup == "box_tokens")
        if budget is None:
            self.budget, self.budget_source = checkpoint_budget(checkpoint)
        else:
            self.budget, self.budget_source = budget, "given"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, conversations: list[list[dict[str, Any]]]) -> Any:
        return encode_prompts(self.processor, self.family, conversations, self.budget).to(self.device)

    @torch.no_grad()
    def generate(
        self, conversations: list[list[dict[str, Any]]], gen: GenerationSettings | None = None
    ) -> list[Completion]:
        """Answers to a batch of conversations (special tokens removed)."""
        gen = gen or GenerationSettings()
        if gen.seed is not None:
            torch.manual_seed(gen.seed)
        inputs = self.inputs(conversations)
        out = self.model.generate(**inputs, **self._generate_kwargs(gen, inputs["input_ids"].shape[1]))
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = [self.decode(row.tolist()) for row in new]
        ends = self._end_ids()
        truncated = [not any(int(t) in ends for t in row) for row in new]
        return [Completion(t, cut) for t, cut in zip(texts, truncated)]

    def _end_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def _generate_kwargs(self, gen: GenerationSettings, prompt_length: int) -> dict[str, Any]:
        kwargs = gen.generate_kwargs()
        if gen.presence_penalty:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(
                [presence_penalty_processor(gen.presence_penalty, prompt_length)]
            )
        return kwargs

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

        def produce(emit: Emit, halted: Halted) -> Finish:
            class _Halt(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                    return halted()

            streamer = DeltaStreamer(self.processor.tokenizer, emit, self.decode)
            with torch.no_grad():
                if gen.seed is not None:
                    torch.manual_seed(gen.seed)
                self.model.generate(
                    **inputs,
                    **self._generate_kwargs(gen, inputs["input_ids"].shape[1]),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Halt()]),
                )
            if halted():
                return "stopped"
            if streamer.last_token in self._end_ids() or streamer.generated < gen.max_new_tokens:
                return "stop"
            return "length"

        return (yield from stream_in_thread(produce, stop, name="hf-generate"))
