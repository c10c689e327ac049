"""Implementation of ``python -m qwenvl.data.verify_packing`` (see that module for what it checks)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qwenvl.data.collate import VISION_KEYS, PackedCollator, sample_lengths
from qwenvl.data.encode import IGNORE_INDEX, EncodedSample, SampleEncoder
from qwenvl.data.packing import plan_packs
from qwenvl.data.registry import load_records
from qwenvl.model.budget import MediaBudget


# |loss packed - loss alone| allowed per dtype: kernels may sum in another order once rows are concatenated.
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}


@dataclass
class SampleCheck:
    sample_id: str
    pack: int
    tokens: int
    images: int
    videos: int
    loss_alone: float
    loss_packed: float
    max_logit_diff: float

    @property
    def loss_diff(self) -> float:
        if math.isnan(self.loss_alone) and math.isnan(self.loss_packed):
            return 0.0  # no supervised token in this sample: nothing to compare but the logits
        return abs(self.loss_packed - self.loss_alone)


def sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean next-token cross entropy of one sample's ``(L, V)`` logits against its ``(L,)`` labels."""
    if (labels[1:] == IGNORE_INDEX).all():
        return float("nan")
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX).item()


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _forward(model: Any, batch: dict[str, Any], device: str) -> torch.Tensor:
    inputs = _to({k: v for k, v in batch.items() if k != "labels"}, device)
    with torch.no_grad():
        return model(**inputs).logits[0].float().cpu()


def alone_inputs(sample: EncodedSample) -> dict[str, Any]:
    """One sample as inference feeds it: an attention mask and no position ids (the model computes M-RoPE)."""
    ids = sample["input_ids"].unsqueeze(0)
    inputs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": sample["mm_token_type_ids"].unsqueeze(0),
        "use_cache": False,
    }
    inputs.update({k: sample[k] for k in VISION_KEYS if k in sample})
    return inputs


def vision_spans(types: torch.Tensor) -> list[dict[str, Any]]:
    """Runs of image (1) and video (2) tokens in ``mm_token_type_ids``, as ``{kind, start, end}`` (end exclusive)."""
    spans: list[dict[str, Any]] = []
    values = types.tolist()
    i = 0
    while i < len(values):
        if values[i] == 0:
            i += 1
            continue
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        spans.append({"kind": "image" if values[i] == 1 else "video", "start": i, "end": j})
        i = j
    return spans


def pack_layout(samples: list[EncodedSample], batch: dict[str, Any], cu: list[int], merge_size: int) -> dict[str, Any]:
    """The layout of one packed row: where each sample sits (``cu``: its start offsets, then the row length), its
    vision token spans (with the grid of the image or video they belong to; a Qwen3-VL video is several spans,
    timestamps between them) and the position ids."""
    layout = []
    for s, start in zip(samples, cu):
        grids = {
            "image": s["image_grid_thw"].tolist() if "image_grid_thw" in s else [],
            "video": s["video_grid_thw"].tolist() if "video_grid_thw" in s else [],
        }
        media = {"image": 0, "video": 0}  # which image / video the next span belongs to
        left = {"image": 0, "video": 0}  # its tokens not yet seen
        spans = vision_spans(s["mm_token_type_ids"])
        for span in spans:
            kind = span["kind"]
            if left[kind] == 0 and media[kind] < len(grids[kind]):
                t, h, w = grids[kind][media[kind]]
                left[kind] = t * h * w // merge_size**2
                media[kind] += 1
            span.update(index=media[kind] - 1, grid_thw=grids[kind][media[kind] - 1] if media[kind] else None)
            left[kind] = max(0, left[kind] - (span["end"] - span["start"]))
            span["start"] += start
            span["end"] += start
        layout.append(
            {"sample_id": s["sample_id"], "start": start, "end": start + len(s["input_ids"]), "vision": spans}
        )
    return {"cu_seqlens": cu, "samples": layout, "position_ids": batch["position_ids"][:, 0].tolist()}


def verify(args: argparse.Namespace) -> int:
    from qwenvl.model.loader import load_model, load_processor, read_family, resolve_dtype

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[dtype]
    family = read_family(args.model_name_or_path)
    processor = load_processor(args.model_name_or_path)
    model = load_model(args.model_name_or_path, dtype=dtype, attn_implementation=args.attn_implementation)
    model.to(device).eval()
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None:
            config.use_cache = False  # as in training: packed rows are only isolated without a KV cache
    budget = MediaBudget.from_attrs(args)
    tokens_per_second = getattr(getattr(model.config, "vision_config", None), "tokens_per_second", 2)
    encoder = SampleEncoder(processor, family, budget, tokens_per_second)
    merge_size = getattr(processor.image_processor, "merge_size", 2)

    records = load_records(args.dataset_use, args.dataset_registry, seed=args.seed, media_root=args.media_root)
    if args.pick == "random" and len(records) > args.samples:
        chosen = sorted(random.Random(args.seed).sample(range(len(records)), args.samples))  # across the whole mix
        records = [records[i] for i in chosen]
    records = records[: args.samples]
    if not records:
        print(f"--dataset_use {args.dataset_use}: no records", file=sys.stderr)
        return 2
    samples = [encoder(r.messages, r.id) for r in records]
    lengths = [len(s["input_ids"]) for s in samples]
    if max(lengths) > args.max_packed_tokens:
        print(
            f"a sample has {max(lengths)} tokens, more than --max_packed_tokens {args.max_packed_tokens}; "
            "raise it (training would not pack such a sample either)",
            file=sys.stderr,
        )
        return 2
    packs = plan_packs(lengths, args.max_packed_tokens)
    attn = model.config._attn_implementation
    print(
        f"verify-packing: {type(model).__name__}, attention {attn}, {str(dtype).removeprefix('torch.')}, {device}; "
        f"{len(samples)} samples in {len(packs)} pack(s) of <= {args.max_packed_tokens} tokens, "
        f"tolerance {tolerance:g}"
    )

    checks: list[SampleCheck] = []
    layouts = []
    control: float | None = None
    for p, pack in enumerate(packs):
        members = [samples[i] for i in pack]
        batch = PackedCollator()([members])
        if args.use_cache:
            batch["use_cache"] = True
        logits = _forward(model, batch, device)
        cu = [0, *itertools.accumulate(sample_lengths(batch))]  # where each sample starts in the row
        layouts.append(pack_layout(members, batch, cu, merge_size))
        for s, start in zip(members, cu):
            n = len(s["input_ids"])
            alone = _forward(model, alone_inputs(s), device)
            checks.append(
                SampleCheck(
                    sample_id=s["sample_id"],
                    pack=p,
                    tokens=n,
                    images=len(s["image_grid_thw"]) if "image_grid_thw" in s else 0,
                    videos=len(s["video_grid_thw"]) if "video_grid_thw" in s else 0,
                    loss_alone=sample_loss(alone, s["labels"]),
                    loss_packed=sample_loss(logits[start : start + n], s["labels"]),
                    max_logit_diff=(logits[start : start + n] - alone).abs().max().item(),
                )
            )
        if p == 0 and len(members) > 1 and not args.no_control:
            broken = dict(batch)
            broken["position_ids"] = batch["position_ids"].clone()
            broken["position_ids"][0, 0] = torch.arange(batch["position_ids"].shape[-1])
            leaked = _forward(model, broken, device)
            diffs = [
                abs(sample_loss(leaked[a:b], s["labels"]) - sample_loss(logits[a:b], s["labels"]))
                for s, a, b in zip(members, cu, cu[1:])
            ]
            control = max((d for d in diffs if not math.isnan(d)), default=0.0)

    hook = getattr(model, "_qwenvl_packed_linear_attention", None)
    if hook is not None:
        how = {"kernels": "handed to flash-linear-attention / causal-conv1d", "per_sample": "each sample run alone"}
        print(f"linear-attention layers: {len(hook.layers)}, packed-sample boundaries {how.get(hook.mode, 'unused')}")
    width = max(len("sample"), *(len(c.sample_id) for c in checks))
    print(
        f"{'sample':<{width}} {'tokens':>7} {'img':>4} {'vid':>4} {'pack':>5} {'loss alone':>11} {'loss packed':>12} "
        f"{'|dloss|':>9} {'max|dlogit|':>12}"
    )
    for c in checks:
        flag = "  <-- MISMATCH" if c.loss_diff > tolerance else ""
        print(
            f"{c.sample_id:<{width}} {c.tokens:>7} {c.images:>4} {c.videos:>4} {c.pack:>5} {c.loss_alone:>11.5f} "
            f"{c.loss_packed:>12.5f} {c.loss_diff:>9.2e} {c.max_logit_diff:>12.2e}{flag}"
        )
    if control is not None:
        print(
            f"control: the first pack with row 0 of position_ids not restarting changes a loss by up to {control:.2e} "
            f"({'the check sees a leak' if control > tolerance else 'too small to see: the samples may be too short'})"
        )
    if args.dump:
        dump = {
            "model": args.model_name_or_path,
            "attention": attn,
            "packs": layouts,
            "checks": [vars(c) for c in checks],
        }
        Path(args.dump).write_text(json.dumps(dump, indent=1) + "\n")
        print(f"pack layouts written to {args.dump}")
    bad = [c for c in checks if c.loss_diff > tolerance]
    if bad:
        print(
            f"FAILED: {len(bad)} of {len(checks)} samples get another loss when packed "
            f"({', '.join(c.sample_id for c in bad[:5])}{', ...' if len(bad) > 5 else ''}). Packed training would change what they learn: use "
            "--attn_implementation sdpa or flash_attention_2, keep use_cache off, or train with --data_packing False.",
            file=sys.stderr,
        )
        return 1
    print(f"OK: all {len(checks)} samples match their unpacked loss within {tolerance:g}")
    return 0
