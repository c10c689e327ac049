"""Collators: padded batches, and padding-free packed rows whose samples stay isolated.

Packed rows rely on transformers' packed-sequence detection: with ``attention_mask=None`` and 4-row
``position_ids`` whose row 0 restarts at 0 for every sample, sdpa/eager build a block-diagonal causal mask and
flash-attention gets per-sample ``cu_seqlens`` (``find_packed_sequence_indices``). This only happens when the
model runs without a KV cache, so the collators put ``use_cache=False`` in the batch.

Both collators drop ``None`` samples (samples the bad-media or over-length policy skipped) and raise if a whole
batch was skipped.

In distributed training every rank must run the same modules in the same order each step, or ZeRO-3's parameter
all-gathers (and DDP's gradient reductions) of one rank wait for collectives the other never issues: a rank with a
text-only batch would skip the vision tower while its peer runs it. With ``dummy`` set, a batch without images
(or videos) gets a 1-token dummy image (or video) that no real token can see and no label supervises, so the
model runs its own image and video paths on every rank, every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypedDict

import torch

from qwenvl.data.encode import IGNORE_INDEX, EncodedSample
from qwenvl.model.families import Family
from qwenvl.model.rope import mrope_position_ids


VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


class Batch(TypedDict, total=False):
    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor | None  # (B, L), None when packed
    position_ids: torch.Tensor  # (4, B, L)
    mm_token_type_ids: torch.Tensor  # (B, L)
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor
    use_cache: bool
    media_cache: list[int]  # [hits, misses] of the batch's media, with a media cache (the trainer pops it)


def flatten_samples(items: Sequence[EncodedSample | Sequence[EncodedSample] | None]) -> list[EncodedSample]:
    """Samples of a batch whose items are samples, packs (lists of samples) or ``None`` (skipped)."""
    samples: list[EncodedSample] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, dict):
            samples.append(item)
        else:
            samples.extend(s for s in item if s is not None)
    if not samples:
        raise RuntimeError(
            "every sample of this batch was skipped (bad media or over-length policy 'skip'); see the quarantine "
            "file in the output dir, fix or remove those records"
        )
    return samples


@dataclass
class DummyMedia:
    """Builds 1-token dummy image / video samples: ``<|vision_start|><pad><|vision_end|>``, labels -100, zero pixels
    of one merged patch group (grid ``1 x merge x merge``)."""

    family: Family
    vision_start_id: int
    vision_end_id: int
    image_token_id: int
    video_token_id: int
    in_features: int

    @classmethod
    def from_processor(cls, processor: Any, family: Family) -> DummyMedia:
        tok = processor.tokenizer
        ip = processor.image_processor
        return cls(
            family=family,
            vision_start_id=tok.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_id=tok.convert_tokens_to_ids("<|vision_end|>"),
            image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
            in_features=3 * ip.temporal_patch_size * ip.patch_size**2,
        )

    def sample(self, kind: str) -> EncodedSample:
        merge = self.family.spatial_merge_size
        pad, type_id = (self.image_token_id, 1) if kind == "image" else (self.video_token_id, 2)
        types = torch.tensor([0, type_id, 0])
        grid = torch.tensor([[1, merge, merge]])
        sample: EncodedSample = {
            "sample_id": f"<dummy {kind}>",
            "input_ids": torch.tensor([self.vision_start_id, pad, self.vision_end_id]),
            "labels": torch.full((3,), IGNORE_INDEX),
            "mm_token_type_ids": types,
        }
        pixels = torch.zeros(merge * merge, self.in_features)
        if kind == "image":
            sample["pixel_values"], sample["image_grid_thw"] = pixels, grid
            sample["position_ids"] = mrope_position_ids(self.family, types, image_grid_thw=grid)
        else:
            sample["pixel_values_videos"], sample["video_grid_thw"] = pixels, grid
            sample["position_ids"] = mrope_position_ids(self.family, types, video_grid_thw=grid)
            if self.family.needs_second_per_grid_ts:
                sample["second_per_grid_ts"] = torch.tensor([1.0])
        return sample

    def missing(self, samples: list[EncodedSample]) -> list[EncodedSample]:
        """Dummy samples for the modalities none of ``samples`` has."""
        out = []
        if not any("image_grid_thw" in s for s in samples):
            out.append(self.sample("image"))
        if not any("video_grid_thw" in s for s in samples):
            out.append(self.sample("video"))
        return out


def _cat_vision(samples: list[EncodedSample], batch: Batch) -> None:
    for key in VISION_KEYS:
        parts = [s[key] for s in samples if key in s]
        if parts:
            batch[key] = torch.cat(parts, dim=0)


def _media_cache_counts(samples: list[EncodedSample], batch: Batch) -> None:
    counts = [s["media_cache"] for s in samples if "media_cache" in s]
    if counts:
        batch["media_cache"] = [sum(c[0] for c in counts), sum(c[1] for c in counts)]


@dataclass
class PaddedCollator:
    """Right-pads samples to the longest in the batch (optionally to a multiple of ``pad_to_multiple_of``).

    >>> # input_ids [[5, 6, 7], [8, 9]] -> [[5, 6, 7], [8, 9, pad]], labels padded with -100
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    dummy: DummyMedia | None = None
    with_ids: bool = False  # add "sample_ids" (the trainer pops them for its data report)

    def __call__(self, items: Sequence[Any]) -> Batch:
        samples = flatten_samples(items)
        dummies = self.dummy.missing(samples) if self.dummy else []
        extra = sum(len(d["input_ids"]) for d in dummies)
        length = max(max(len(s["input_ids"]) for s in samples), len(samples[0]["input_ids"]) + extra)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(samples)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        types = torch.zeros((n, length), dtype=samples[0]["mm_token_type_ids"].dtype)
        # Padding continues each row's positions, so row 0 never restarts inside a row (which would read as packing).
        position_ids = torch.arange(length).view(1, 1, length).repeat(4, n, 1)
        for i, s in enumerate(samples):
            L = len(s["input_ids"])
            input_ids[i, :L] = s["input_ids"]
            labels[i, :L] = s["labels"]
            attention_mask[i, :L] = 1
            types[i, :L] = s["mm_token_type_ids"]
            position_ids[:, i, :L] = s["position_ids"]
            if L < length:
                position_ids[1:, i, L:] = position_ids[1:, i, L - 1 : L] + 1 + torch.arange(length - L)
        # Dummy media go after the first row's tokens, masked out (attention 0, labels -100); no real image or
        # video is in this batch, so feature order still matches token order.
        start = len(samples[0]["input_ids"])
        for d in dummies:
            width = len(d["input_ids"])
            input_ids[0, start : start + width] = d["input_ids"]
            types[0, start : start + width] = d["mm_token_type_ids"]
            start += width
        # The first label is never predicted (the loss shifts by one) but Trainer counts it in num_items_in_batch.
        labels[:, 0] = IGNORE_INDEX
        batch: Batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "mm_token_type_ids": types,
            "use_cache": False,
        }
        _cat_vision(samples + dummies, batch)
        _media_cache_counts(samples, batch)
        if self.with_ids:
            batch["sample_ids"] = [s.get("sample_id", "") for s in samples]
        return batch


@dataclass
class PackedCollator:
    """Concatenates every sample of the batch (or of its packs) into one row, without padding.

    Row 0 of ``position_ids`` restarts at 0 for each sample, which keeps attention inside samples; the first
    label of each sample is -100 so no sample is trained to predict the start of the next. Dummy media (see
    module doc) are appended as samples of their own, isolated like any other.
    """

    dummy: DummyMedia | None = None
    with_ids: bool = False  # add "sample_ids" (the trainer pops them for its data report)

    def __call__(self, items: Sequence[Any]) -> Batch:
        samples = flatten_samples(items)
        ids = [s.get("sample_id", "") for s in samples]
        if self.dummy:
            samples = samples + self.dummy.missing(samples)
        labels = []
        for s in samples:
            lab = s["labels"].clone()
            lab[0] = IGNORE_INDEX
            labels.append(lab)
        batch: Batch = {
            "input_ids": torch.cat([s["input_ids"] for s in samples]).unsqueeze(0),
            "labels": torch.cat(labels).unsqueeze(0),
            "attention_mask": None,
            "position_ids": torch.cat([s["position_ids"] for s in samples], dim=1).unsqueeze(1),
            "mm_token_type_ids": torch.cat([s["mm_token_type_ids"] for s in samples]).unsqueeze(0),
            "use_cache": False,
        }
        _cat_vision(samples, batch)
        _media_cache_counts(samples, batch)
        if self.with_ids:
            batch["sample_ids"] = ids
        return batch


def sample_lengths(batch: Batch) -> list[int]:
    """Lengths of the samples in a batch (packed: from the restarts of position row 0)."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].sum(-1).tolist()
    row0 = batch["position_ids"][0, 0]
    starts = (row0 == 0).nonzero().flatten().tolist() + [len(row0)]
    return [b - a for a, b in zip(starts, starts[1:])]
