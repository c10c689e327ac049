"""Preference pairs and RL prompts: records, their encoding with the SFT encoder, and the pair collator.

A preference record is a prompt in either format ``qwenvl train`` reads (images, videos, multi-turn; the last turn
is the user's) plus a ``chosen`` and a ``rejected`` answer (a string, or a turn ``{"from": "gpt", "value": ...}`` /
``{"role": "assistant", "content": ...}``)::

    {"image": "cat.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}],
     "chosen": "A cat.", "rejected": "A dog."}

A prompt record (GRPO) is an SFT record whose last turn is the reference answer that the rewards compare with
(``{"conversations": [..., {"from": "gpt", "value": "B"}]}``); ``"solution"`` may give it instead.

Both answers of a pair share one encoding of the prompt: media are fetched and resized once by qwen_vl_utils under
the training budget, the processor runs once on the prompt text (``pixel_values``, grids, the expanded media
tokens), and each answer is appended as text tokens. The token ids are exactly those the processor gives the whole
rendered conversation (the prompt ends with the ``<|im_start|>assistant\\n`` header, a boundary the tokenizer never
merges across; tested), so DPO trains on the SFT rendering of each answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from qwenvl.cli import UserError
from qwenvl.data.annotations import AnnotationError, Record, iter_records, normalise_record
from qwenvl.data.collate import DummyMedia, PackedCollator, PaddedCollator
from qwenvl.data.encode import IGNORE_INDEX, EncodedSample, SampleEncoder
from qwenvl.model.rope import mrope_position_ids


logger = logging.getLogger(__name__)

PROMPT_KEYS = ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw", "pixel_values_videos",
               "video_grid_thw", "second_per_grid_ts")  # fmt: skip


def _answer_text(value: Any, where: str, name: str) -> str:
    if isinstance(value, dict):
        value = value.get("value", value.get("content"))
    if isinstance(value, list):  # typed content: text items only
        if any(not isinstance(i, dict) or i.get("type", "text") != "text" for i in value):
            raise AnnotationError(f"{where}: {name!r} may hold text only (media belong in the prompt)")
        value = "".join(i.get("text", "") for i in value)
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(f"{where}: {name!r} must be a non-empty answer string, got {value!r}")
    return value


@dataclass
class PromptRecord:
    """A prompt (messages ending with a user turn) and, for pairs, two answers; for RL prompts, a reference."""

    id: str
    prompt: list[dict[str, Any]]
    chosen: str = ""
    rejected: str = ""
    solution: str = ""
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other fields of the raw record (for user rewards)

    @property
    def key(self) -> str:
        return Record(self.id, self.prompt + [{"role": "assistant", "content": self.chosen or self.solution}]).key


def normalise_pair(raw: Any, where: str, media_root: str = "", dataset: str = "") -> PromptRecord:
    """One raw preference record to a checked :class:`PromptRecord` (the prompt checked as ``qwenvl train`` checks
    a record)."""
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in raw]
    if missing:
        raise AnnotationError(
            f"{where}: a preference record needs 'chosen' and 'rejected' answers; missing {missing} (keys: {sorted(raw)})"
        )
    chosen, rejected = _answer_text(raw["chosen"], where, "chosen"), _answer_text(raw["rejected"], where, "rejected")
    if chosen == rejected:
        raise AnnotationError(f"{where}: 'chosen' and 'rejected' are the same answer; a pair must differ")
    record = _with_answer(raw, chosen, where, media_root, dataset)
    return PromptRecord(record.id, record.messages[:-1], chosen=chosen, rejected=rejected, dataset=dataset)


def normalise_prompt(raw: Any, where: str, media_root: str = "", dataset: str = "") -> PromptRecord:
    """One raw RL prompt record: an SFT record whose last (assistant) turn, or ``solution``, is the reference."""
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    if "solution" in raw:
        solution = raw["solution"] if isinstance(raw["solution"], str) else str(raw["solution"])
        record = _with_answer(raw, solution, where, media_root, dataset)
    else:
        record = normalise_record(raw, where, media_root, dataset)
        last = record.messages[-1]["content"]
        solution = "".join(i.get("text", "") for i in last) if isinstance(last, list) else str(last)
    extra = {k: v for k, v in raw.items() if k not in ("conversations", "messages", "image", "images", "video",
                                                       "videos", "solution")}  # fmt: skip
    return PromptRecord(record.id, record.messages[:-1], solution=solution, dataset=dataset, extra=extra)


def _with_answer(raw: dict[str, Any], answer: str, where: str, media_root: str, dataset: str) -> Record:
    """The record checked as an SFT record with ``answer`` as its last turn (a trailing answer in the raw record
    is replaced)."""
    raw = dict(raw)
    if "conversations" in raw:
        turns = list(raw["conversations"]) if isinstance(raw["conversations"], list) else raw["conversations"]
        if (
            isinstance(turns, list)
            and turns
            and isinstance(turns[-1], dict)
            and turns[-1].get("from") in ("gpt", "assistant")
        ):
            turns = turns[:-1]
        raw["conversations"] = turns + [{"from": "gpt", "value": answer}] if isinstance(turns, list) else turns
    elif "messages" in raw:
        turns = list(raw["messages"]) if isinstance(raw["messages"], list) else raw["messages"]
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and turns[-1].get("role") == "assistant":
            turns = turns[:-1]
        raw["messages"] = turns + [{"role": "assistant", "content": answer}] if isinstance(turns, list) else turns
    return normalise_record(raw, where, media_root, dataset)


def load_prompt_records(
    dataset_use: str, registry_path: str | None = None, seed: int = 42, bad_records: str = "error",
    media_root: str | None = None, kind: str = "pair", invalid: list[tuple[str, str]] | None = None,
) -> list[PromptRecord]:  # fmt: skip
    """Every record of ``dataset_use`` (registry names or files, ``name%N`` sampling as for ``qwenvl train``)."""
    from qwenvl.data.registry import load_registry, parse_dataset_use, resolve_spec, sample_indices

    normalise = normalise_pair if kind == "pair" else normalise_prompt
    registry = load_registry(registry_path)
    records: list[PromptRecord] = []
    errors: list[tuple[str, str]] = []
    for name, rate in parse_dataset_use(dataset_use):
        spec = resolve_spec(name, registry, media_root)
        found = []
        for where, raw, _ in iter_records(spec.annotation_path, packed=False):
            try:
                if isinstance(raw, AnnotationError):
                    raise raw
                found.append(normalise(raw, where, spec.media_root, spec.name))
            except AnnotationError as e:
                errors.append((where, str(e)))
        records += [found[i] for i in sample_indices(len(found), rate, seed, name)]
    if errors and bad_records != "skip":
        shown = "\n  ".join(reason for _, reason in errors[:20])
        raise AnnotationError(
            f"{len(errors)} invalid record(s):\n  {shown}\nFix them, or pass --bad_records skip to train on the rest."
        )
    for _, reason in errors:
        logger.warning("skipping invalid record %s", reason)
    if invalid is not None:
        invalid.extend(errors)
    if not records:
        raise UserError(f"no usable records in --dataset_use {dataset_use!r}")
    return records


class PromptEncoder:
    """Encodes a prompt once (media through the SFT encoder's loader and the processor) and appends answers."""

    def __init__(self, encoder: SampleEncoder) -> None:
        self.encoder = encoder
        self.tokenizer = encoder.processor.tokenizer
        self.header = self.tokenizer.decode(encoder.assistant_header)

    def prompt(self, messages: list[dict[str, Any]], sample_id: str = "", answer_hint: str = "x") -> dict[str, Any]:
        """Model inputs of the prompt (ending with the assistant header), and the rendered text of the answer
        ``answer_hint`` after it (what the chat template adds around an answer, e.g. an empty think block)."""
        enc = self.encoder
        enc.check_text(messages, sample_id)
        full = enc.processor.apply_chat_template(
            messages + [{"role": "assistant", "content": [{"type": "text", "text": answer_hint}]}],
            tokenize=False, add_generation_prompt=False,
        )  # fmt: skip
        cut = full.rfind(self.header)
        if cut < 0:
            raise ValueError(f"{sample_id}: the chat template does not open the answer with {self.header!r}")
        prefix = full[: cut + len(self.header)]
        images, videos, metadata = enc.load_media(messages, sample_id)
        kwargs: dict[str, Any] = {"return_tensors": "pt", "do_resize": False}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs.update(videos=videos, do_sample_frames=False, video_metadata=metadata)
        out = enc.processor(text=[prefix], **kwargs)
        prompt = {"input_ids": out["input_ids"][0], "mm_token_type_ids": out["mm_token_type_ids"][0]}
        for key in PROMPT_KEYS[2:]:
            if key in out and out[key] is not None:
                prompt[key] = out[key]
        return prompt

    def generation_prompt(self, messages: list[dict[str, Any]], sample_id: str = "") -> dict[str, Any]:
        """Model inputs to generate an answer from, rendered as inference renders them (``add_generation_prompt``:
        a thinking template opens ``<think>``), with the SFT encoder's media; ``opened`` is the text the template
        put after the assistant header."""
        enc = self.encoder
        enc.check_text(messages, sample_id)
        text = enc.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, videos, metadata = enc.load_media(messages, sample_id)
        kwargs: dict[str, Any] = {"return_tensors": "pt", "do_resize": False}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs.update(videos=videos, do_sample_frames=False, video_metadata=metadata)
        out = enc.processor(text=[text], **kwargs)
        prompt = {"input_ids": out["input_ids"][0], "mm_token_type_ids": out["mm_token_type_ids"][0]}
        for key in PROMPT_KEYS[2:]:
            if key in out and out[key] is not None:
                prompt[key] = out[key]
        prompt["opened"] = text[text.rfind(self.header) + len(self.header) :]
        return prompt

    def answer_ids(self, messages: list[dict[str, Any]], answer: str) -> torch.Tensor:
        """Token ids of ``answer`` as the chat template renders the last turn, through its ``<|im_end|>``."""
        full = self.encoder.processor.apply_chat_template(
            messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            tokenize=False, add_generation_prompt=False,
        )  # fmt: skip
        cut = full.rfind(self.header)
        text = full[cut + len(self.header) :]
        end = text.rfind("<|im_end|>")
        text = text[: end + len("<|im_end|>")] if end >= 0 else text
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)

    def join(self, prompt: dict[str, Any], answer: torch.Tensor, sample_id: str) -> EncodedSample:
        """``prompt + answer`` as an :class:`EncodedSample` with labels on the answer only (the prompt's media
        tensors are shared, not copied)."""
        n = len(prompt["input_ids"])
        sample: EncodedSample = {
            "sample_id": sample_id,
            "input_ids": torch.cat([prompt["input_ids"], answer]),
            "labels": torch.cat([torch.full((n,), IGNORE_INDEX), answer]),
            "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"], answer.new_zeros(len(answer)).to(
                prompt["mm_token_type_ids"].dtype)]),
        }  # fmt: skip
        for key in PROMPT_KEYS[2:]:
            if key in prompt:
                sample[key] = prompt[key]
        sample["position_ids"] = mrope_position_ids(
            self.encoder.family, sample["mm_token_type_ids"], sample.get("image_grid_thw"),
            sample.get("video_grid_thw"), sample.get("second_per_grid_ts"), self.encoder.tokens_per_second,
        )  # fmt: skip
        return sample

    def pair(self, record: PromptRecord) -> dict[str, Any]:
        """``{"key", "id", "chosen": EncodedSample, "rejected": EncodedSample}`` sharing one prompt encoding."""
        prompt = self.prompt(record.prompt, record.id, record.chosen)
        chosen = self.join(prompt, self.answer_ids(record.prompt, record.chosen), record.id)
        rejected = self.join(prompt, self.answer_ids(record.prompt, record.rejected), record.id)
        return {"key": record.key, "id": record.id, "chosen": chosen, "rejected": rejected}


class _RecordDataset(torch.utils.data.Dataset):
    """Records encoded on access; one that :meth:`encode` skips (``None``: quarantined, with the reason logged) is
    replaced by the next good one, as in SFT."""

    what = "record"

    def __init__(self, records: list[PromptRecord], encoder: PromptEncoder, max_length: int, bad_media: str = "error",
                 quarantine: Any = None) -> None:  # fmt: skip
        self.records = records
        self.encoder = encoder
        self.max_length = max_length
        self.bad_media = bad_media
        self.quarantine = quarantine

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, index: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def _skip(self, record: PromptRecord, path: str, reason: str, kind: str) -> None:
        logger.warning("skipping %s (%s): %s", record.id, kind, reason)
        if self.quarantine is not None:
            self.quarantine.add(record.key, record.id, path, reason, kind)

    def _media_failed(self, record: PromptRecord, error: Any) -> None:
        """A record whose media fail to load: raised, or skipped with ``bad_media=skip``."""
        if self.bad_media != "skip":
            raise error
        self._skip(record, error.path, error.reason, "bad_media")

    def __getitem__(self, index: int) -> dict[str, Any]:
        for step in range(len(self.records)):
            item = self.encode((index + step) % len(self.records))
            if item is not None:
                return item
        raise RuntimeError(f"every {self.what} was skipped; see quarantine.jsonl in the output dir")


class PairDataset(_RecordDataset):
    """Encoded pairs; a pair whose media fail to load or that is longer than ``max_length`` is quarantined (with
    ``bad_media`` / ``overlong`` = skip) and replaced by the next good one, as in SFT; otherwise it raises."""

    what = "preference pair"

    def __init__(self, records: list[PromptRecord], encoder: PromptEncoder, max_length: int, bad_media: str = "error",
                 overlong: str = "error", quarantine: Any = None) -> None:  # fmt: skip
        super().__init__(records, encoder, max_length, bad_media, quarantine)
        self.overlong = overlong

    def encode(self, index: int) -> dict[str, Any] | None:
        from qwenvl.data.encode import MediaLoadError

        record = self.records[index]
        try:
            pair = self.encoder.pair(record)
        except MediaLoadError as e:
            self._media_failed(record, e)
            return None
        longest = max(len(pair["chosen"]["input_ids"]), len(pair["rejected"]["input_ids"]))
        if longest > self.max_length:
            reason = f"{longest} tokens, more than --model_max_length {self.max_length}"
            if self.overlong == "error":
                raise UserError(f"{record.id}: {reason}; raise the limit or pass --overlong skip")
            self._skip(record, "", reason, "overlong")
            return None
        return pair


def collate_sequences(
    samples: list[EncodedSample], pad_token_id: int, packed: bool = False, dummy: DummyMedia | None = None
) -> dict[str, Any]:
    """Samples padded (or packed into one row whose samples stay isolated), plus ``segments`` ``(N, L)``: each
    token's sample (-1 for padding), what per-sequence log-probabilities sum over."""
    if packed:
        batch: dict[str, Any] = dict(PackedCollator(dummy=dummy)(samples))
        segments = torch.full_like(batch["input_ids"], -1)
        start = 0
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            segments[0, start : start + n] = i
            start += n
    else:
        batch = dict(PaddedCollator(pad_token_id=pad_token_id, dummy=dummy)(samples))
        index = torch.arange(len(samples)).unsqueeze(1).expand_as(batch["input_ids"])
        segments = torch.where(batch["attention_mask"].bool(), index, torch.full_like(index, -1))
    batch["segments"] = segments
    return batch


@dataclass
class PairCollator:
    """A batch of pairs: the chosen samples, then the rejected ones (row ``i`` and row ``B + i`` are a pair),
    padded or packed (see :func:`collate_sequences`)."""

    pad_token_id: int
    packed: bool = False
    dummy: DummyMedia | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        samples = [p["chosen"] for p in items] + [p["rejected"] for p in items]
        batch = collate_sequences(samples, self.pad_token_id, self.packed, self.dummy)
        batch["pair_keys"] = [p["key"] for p in items]
        batch["sample_ids"] = [p["id"] for p in items]
        return batch


class PromptDataset(_RecordDataset):
    """RL prompts encoded for generation (``add_generation_prompt``, as inference renders them), media loaded
    once per prompt with the training budget; a prompt whose media fail to load is quarantined and replaced with
    ``bad_media=skip``."""

    what = "prompt"

    def encode(self, index: int) -> dict[str, Any] | None:
        from qwenvl.data.encode import MediaLoadError

        record = self.records[index]
        try:
            prompt = self.encoder.generation_prompt(record.prompt, record.id)
        except MediaLoadError as e:
            self._media_failed(record, e)
            return None
        if len(prompt["input_ids"]) >= self.max_length:
            raise UserError(f"{record.id}: the prompt alone has {len(prompt['input_ids'])} tokens, --model_max_length "
                            f"is {self.max_length}; raise it or lower the pixel budgets")  # fmt: skip
        return {"record": record, "prompt": prompt, "key": record.key, "id": record.id}


def collate_prompts(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompts stay a list (each is generated from on its own); the trainer builds the training batch."""
    return {"prompts": list(items), "sample_ids": [i["id"] for i in items]}
