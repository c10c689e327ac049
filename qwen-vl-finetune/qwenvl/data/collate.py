"""Collators: padded batches, and padding-free packed rows whose samples stay isolated.

Packed rows rely on transformers' packed-sequence detection: with ``attention_mask=None`` and 4-row
``position_ids`` whose row 0 restarts at 0 for every sample, sdpa/eager build a block-diagonal causal mask and
flash-attention gets per-sample ``cu_seqlens`` (``find_packed_sequence_indices``). This only happens when the
model runs without a KV cache, so the collators put ``use_cache=False`` in the batch.

Both collators drop ``None`` samples (samples the bad-media or over-length policy skipped) and raise if a whole
batch was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypedDict

import torch

from qwenvl.data.encode import IGNORE_INDEX, EncodedSample


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


def _cat_vision(samples: list[EncodedSample], batch: Batch) -> None:
    for key in VISION_KEYS:
        parts = [s[key] for s in samples if key in s]
        if parts:
            batch[key] = torch.cat(parts, dim=0)


@dataclass
class PaddedCollator:
    """Right-pads samples to the longest in the batch (optionally to a multiple of ``pad_to_multiple_of``).

    >>> # input_ids [[5, 6, 7], [8, 9]] -> [[5, 6, 7], [8, 9, pad]], labels padded with -100
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: Sequence[Any]) -> Batch:
        samples = flatten_samples(items)
        length = max(len(s["input_ids"]) for s in samples)
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
        _cat_vision(samples, batch)
        return batch


@dataclass
class PackedCollator:
    """Concatenates every sample of the batch (or of its packs) into one row, without padding.

    Row 0 of ``position_ids`` restarts at 0 for each sample, which keeps attention inside samples; the first
    label of each sample is -100 so no sample is trained to predict the start of the next.
    """

    def __call__(self, items: Sequence[Any]) -> Batch:
        samples = flatten_samples(items)
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
        return batch


def sample_lengths(batch: Batch) -> list[int]:
    """Lengths of the samples in a batch (packed: from the restarts of position row 0)."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].sum(-1).tolist()
    row0 = batch["position_ids"][0, 0]
    starts = (row0 == 0).nonzero().flatten().tolist() + [len(row0)]
    return [b - a for a, b in zip(starts, starts[1:])]
