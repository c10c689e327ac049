"""Training throughput, padded vs packed batches: the same samples with skewed lengths, the same model, one run.

Each mode trains for the same samples (one epoch over a generated dataset whose text lengths follow a long-tailed
distribution, each sample with a small image) with AdamW; the figure is real (non-padding) tokens per second of
forward + backward + optimizer step. Target: packed >= 1.5x padded.

CPU (default): the tiny Qwen3-VL test checkpoint. ``--gpu``: a Qwen3-VL-2B-shaped random model in bf16 on CUDA
(text hidden 2048, 28 layers, vision depth 24), reporting tokens/s and MFU too.

Run::

    .venv/bin/python benchmarks/bench_train.py [--samples 96] [--batch-size 8] [--gpu] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
WORDS = "the red green blue circle square picture shows a shape on white background with some noise and text".split()


def make_records(root: Path, n: int, seed: int = 0) -> list:
    from PIL import Image

    from qwenvl.data.annotations import normalise_record

    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        # Long-tailed answer lengths: most short, a few long (like real SFT mixes).
        words = min(int(rng.lognormvariate(3.2, 1.0)) + 3, 700)
        Image.new("RGB", (64, 64), (rng.randrange(256), 100, 150)).save(root / "img" / f"{i}.png")
        raw = {
            "image": f"{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe it."},
                {"from": "gpt", "value": " ".join(rng.choice(WORDS) for _ in range(words))},
            ],
        }
        records.append(normalise_record(raw, f"bench[{i}]", str(root / "img")))
    return records


def gpu_model(family: str):
    """A Qwen3-VL-2B-shaped random model (bf16, CUDA)."""
    from qwenvl.model.families import get_family, transformers_attr
    from qwenvl.model.tiny import build_config, build_processor, build_tokenizer

    fam = get_family(family)
    tok = build_tokenizer()
    processor = build_processor(fam, tok)
    config = build_config(fam, tok)
    t = config.text_config
    t.hidden_size, t.intermediate_size, t.num_hidden_layers = 2048, 6144, 28
    t.num_attention_heads, t.num_key_value_heads, t.head_dim = 16, 8, 128
    t.rope_parameters["mrope_section"] = [24, 20, 20]
    v = config.vision_config
    v.hidden_size, v.intermediate_size, v.depth, v.num_heads, v.out_hidden_size = 1024, 4096, 24, 16, 2048
    v.deepstack_visual_indexes = [5, 11, 17]
    v.num_position_embeddings = 2304
    model = transformers_attr(fam.model_class)._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
    return model.cuda(), processor


def run_mode(model, samples: list, collate, batches: list[list[int]], device: str) -> dict:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    tokens = real = 0
    start = None
    for step, batch_idx in enumerate(batches):
        batch = collate([samples[i] for i in batch_idx])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch.pop("labels")
        if step == 1:  # the first step warms up allocators and kernels
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        out = model(**batch)
        logits = out.logits[..., :-1, :].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[..., 1:].reshape(-1), ignore_index=-100
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 1:
            tokens += batch["input_ids"].numel()
            mask = batch.get("attention_mask")
            real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"steps": len(batches) - 1, "seconds": elapsed, "real_tokens": real, "computed_tokens": tokens,
            "real_tokens_per_s": real / elapsed, "padding_efficiency": real / tokens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from qwenvl.data.collate import PackedCollator, PaddedCollator
    from qwenvl.data.encode import MediaBudget, SampleEncoder
    from qwenvl.data.packing import packing_efficiency, plan_packs
    from qwenvl.model.families import get_family
    from qwenvl.model.tiny import build_tiny

    torch.manual_seed(0)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu:
        model, processor = gpu_model("qwen3_vl")
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        model, processor = build_tiny("qwen3_vl")
    encoder = SampleEncoder(processor, get_family("qwen3_vl"), MediaBudget(max_pixels=64 * 64, min_pixels=32 * 32))
    with tempfile.TemporaryDirectory() as tmp:
        samples = [encoder(r.messages, r.id) for r in make_records(Path(tmp), args.samples)]
    lengths = [len(s["input_ids"]) for s in samples]
    order = list(range(len(samples)))
    random.Random(1).shuffle(order)
    padded_batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    capacity = max(max(lengths), int(sum(lengths) / len(padded_batches)) + 1)
    packs = plan_packs(lengths, capacity)
    results = {
        "padded": run_mode(model, samples, PaddedCollator(processor.tokenizer.pad_token_id), padded_batches, device),
        "packed": run_mode(model, samples, PackedCollator(), packs, device),
    }
    results["packed"]["packing_efficiency"] = packing_efficiency(lengths, packs, capacity)
    ratio = results["packed"]["real_tokens_per_s"] / results["padded"]["real_tokens_per_s"]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name()
        if args.gpu
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} thread)",
        "model": "Qwen3-VL-2B-shaped random, bf16" if args.gpu else "tiny Qwen3-VL (test checkpoint), fp32",
        "samples": len(samples),
        "length_min_median_max": [min(lengths), sorted(lengths)[len(lengths) // 2], max(lengths)],
        "batch_size": args.batch_size,
        "pack_capacity": capacity,
        **results,
        "packed_vs_padded": ratio,
    }
    if args.gpu:
        n_params = sum(p.numel() for p in model.parameters())
        peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
        name = torch.cuda.get_device_name()
        flops = next((v for k, v in peak.items() if k in name), None)
        for mode in ("padded", "packed"):
            achieved = 6 * n_params * results[mode]["computed_tokens"] / results[mode]["seconds"]
            results[mode]["mfu"] = achieved / flops if flops else None
    out = args.out or str(HERE / "results" / ("train_gpu.json" if args.gpu else "train.json"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    for mode in ("padded", "packed"):
        r = results[mode]
        print(
            f"{mode:7} {r['real_tokens_per_s']:10.0f} real tokens/s  padding efficiency {r['padding_efficiency']:.2f}"
        )
    print(f"packed vs padded: {ratio:.2f}x  -> {out}")


if __name__ == "__main__":
    main()
