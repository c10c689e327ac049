"""Training throughput, padded vs packed batches: the same samples with skewed lengths, the same model, one run.

Each mode trains for the same samples (one epoch over a generated dataset whose text lengths follow a long-tailed
distribution, each sample with a small image) with AdamW; the figure is real (non-padding) tokens per second of
forward + backward + optimizer step, the median of ``--repeats`` epochs run alternately with the other mode.
Target: packed >= 1.5x padded.

CPU (default): the tiny test checkpoint of ``--family`` (Qwen3-VL unless given; for Qwen3.5 with the training
path's linear-attention boundary hook, so packed rows are isolated as in training). ``--gpu``: a Qwen3-VL-2B-shaped random model in bf16 on CUDA
(text hidden 2048, 28 layers, vocabulary 151,936 tied; vision depth 24, deepstack 5/11/17), reporting the model
FLOP rate and MFU too.

MFU counts useful work only: 6 x (LLM parameters without the embedding lookup) per real text token, 6 x (vision
block parameters) per real image patch and 6 x (merger parameters) per merged token, and attention by the standard
convention of PaLM (appendix B) and nanoGPT, 12 x layers x heads x head_dim x T per token with T the length of the
token's own sample (12 = 2 matmuls, QK^T and AV, x 2 FLOPs per multiply-add x 3 for forward + backward). That counts
the full T x T score matrix, although a causal kernel computes about half of it: the convention MFU figures are
usually quoted in, so ours compare with published ones. Padding computed in padded batches is waste, so it is not
counted; packed batches are charged only for each sample's own attention, although sdpa with a block-diagonal mask
computes the full square of the row. The peak is
the card's dense bf16 figure (H100/H200 SXM 989 TFLOP/s).

Run::

    .venv/bin/python benchmarks/bench_train.py [--samples 96] [--batch-size 8] [--gpu] [--family qwen3_5] \
        [--out benchmarks/results/train.json]
    # the GPU model's code path on the CPU with 1 layer, as tests/benchmarks checks it:
    .venv/bin/python benchmarks/bench_train.py --shape 2b --device cpu --dtype float32 --text-layers 1 \
        --vision-depth 1 --vocab-size 4096
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py


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


def model_2b(
    device: str, dtype: Any, text_layers: int = 28, vision_depth: int = 24, vocab_size: int = 151936
) -> tuple[Any, Any]:
    """A Qwen3-VL-2B-shaped random model, built directly on ``device`` (fewer layers for a smoke run)."""
    import torch

    from qwenvl.model.families import get_family, transformers_attr
    from qwenvl.model.tiny import build_config, build_processor, build_tokenizer

    fam = get_family("qwen3_vl")
    tok = build_tokenizer()
    processor = build_processor(fam, tok)
    config = build_config(fam, tok)
    t = config.text_config
    t.vocab_size = vocab_size
    t.hidden_size, t.intermediate_size, t.num_hidden_layers = 2048, 6144, text_layers
    t.num_attention_heads, t.num_key_value_heads, t.head_dim = 16, 8, 128
    t.rope_parameters["mrope_section"] = [24, 20, 20]
    t.use_cache = False
    config.tie_word_embeddings = t.tie_word_embeddings = True
    v = config.vision_config
    v.hidden_size, v.intermediate_size, v.depth, v.num_heads, v.out_hidden_size = 1024, 4096, vision_depth, 16, 2048
    v.deepstack_visual_indexes = [i for i in (5, 11, 17) if i < vision_depth] or [vision_depth - 1]
    v.num_position_embeddings = 2304
    with torch.device(device):
        model = transformers_attr(fam.model_class)._from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model, processor


def flop_model(model) -> Callable[[dict, list[int]], float]:
    """``flops(batch, sample_lengths)``: useful training FLOPs of one batch (forward + backward), see the module
    docstring. Parameter counts are taken once, here, not per step."""
    t = model.config.text_config
    llm = model.model.language_model
    llm_params = sum(p.numel() for p in llm.parameters()) - llm.embed_tokens.weight.numel()
    llm_params += model.lm_head.weight.numel()
    # Vision blocks see every patch; the mergers (and deepstack mergers) see one token per merge_size^2 patches;
    # the learned position table is a lookup, not a product.
    per_patch = per_merged = 0
    for name, p in model.model.visual.named_parameters():
        if "merger" in name:
            per_merged += p.numel()
        elif not name.startswith("pos_embed"):
            per_patch += p.numel()
    merge = model.config.vision_config.spatial_merge_size**2
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    # Quadratic attention only in full-attention layers (Qwen3.5's linear-attention layers are linear in T: their
    # projections are in llm_params).
    full_layers = (
        sum(kind == "full_attention" for kind in getattr(t, "layer_types", None) or []) or t.num_hidden_layers
    )
    attention_width = 12 * full_layers * t.num_attention_heads * head_dim  # per token, per token of context

    def flops(batch: dict, sample_lengths: list[int]) -> float:
        patches = int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
        linear = llm_params * sum(sample_lengths) + per_patch * patches + per_merged * (patches // merge)
        return 6 * linear + attention_width * sum(n * n for n in sample_lengths)

    return flops


def run_mode(model, samples: list, collate, batches: list[list[int]], device: str) -> dict:
    """One epoch over ``batches``. Per-batch counts come from the CPU batch before it is moved, and the loss is
    checked once at the end, so nothing in the timed loop waits for the GPU."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    count_flops = flop_model(model)
    tokens = real = 0
    flops = 0.0
    start = None
    for step, batch_idx in enumerate(batches):
        cpu_batch = collate([samples[i] for i in batch_idx])
        if step >= 1:  # the first step warms up allocators and kernels and is not counted
            tokens += cpu_batch["input_ids"].numel()
            mask = cpu_batch.get("attention_mask")
            real += int(mask.sum()) if mask is not None else cpu_batch["input_ids"].numel()
            flops += count_flops(cpu_batch, [len(samples[i]["input_ids"]) for i in batch_idx])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in cpu_batch.items()}
        labels = batch.pop("labels")
        if step == 1:
            if device.startswith("cuda"):
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
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):  # a NaN anywhere reaches the last loss through the weights
        raise RuntimeError(f"non-finite loss {loss.item()} at the end of the epoch")
    return {"steps": len(batches) - 1, "seconds": elapsed, "real_tokens": real, "computed_tokens": tokens,
            "real_tokens_per_s": real / elapsed, "padding_efficiency": real / tokens,
            "model_tflops_per_s": flops / elapsed / 1e12}  # fmt: skip


def peak_bf16_flops(device: str) -> float | None:
    """The card's dense bf16 peak, or None when unknown (CPU, other cards)."""
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    for key, peak in (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)):
        if key in name:
            return peak
    return None


def main(argv: list[str] | None = None) -> dict:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gpu", action="store_true", help="same as --shape 2b --device cuda --dtype bfloat16")
    parser.add_argument("--shape", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--family", default="qwen3_vl", help="tiny shape only: the family of the tiny model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--text-layers", type=int, default=28, help="2b shape only")
    parser.add_argument("--vision-depth", type=int, default=24, help="2b shape only")
    parser.add_argument("--vocab-size", type=int, default=151936, help="2b shape only")
    parser.add_argument(
        "--repeats", type=int, default=5, help="alternating timed runs per mode after a warm-up (fewer: a smoke run)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.gpu:
        args.shape, args.device, args.dtype = "2b", "cuda", "bfloat16"
    from qwenvl.model.families import FAMILIES

    if args.family not in FAMILIES:
        parser.error(f"--family {args.family}: expected one of {', '.join(sorted(FAMILIES))}")
    if args.shape == "2b" and args.family != "qwen3_vl":
        parser.error("--shape 2b is a Qwen3-VL shape; use --shape tiny with --family")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible")
    from qwenvl.data.collate import PackedCollator, PaddedCollator
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.data.packing import packing_efficiency, plan_packs
    from qwenvl.model.budget import TRAINING_BUDGET
    from qwenvl.model.families import get_family
    from qwenvl.model.tiny import build_tiny

    torch.manual_seed(0)
    device = args.device
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtype = getattr(torch, args.dtype)
    if args.shape == "2b":
        model, processor = model_2b(device, dtype, args.text_layers, args.vision_depth, args.vocab_size)
        label = (
            f"Qwen3-VL-2B-shaped random ({args.text_layers} text layers, vision depth {args.vision_depth}, "
            f"vocabulary {args.vocab_size})"
        )
    else:
        model, processor = build_tiny(args.family)
        model = model.to(device=device, dtype=dtype)
        model.config.text_config.use_cache = False
        label = f"tiny {args.family} (test checkpoint)"
        if get_family(args.family).linear_attention:  # as load_model attaches it for training
            from qwenvl.model.linear_attention import isolate_packed_samples

            hook = isolate_packed_samples(model)
            label += ", linear attention " + ("kernels" if device.startswith("cuda") and hook.kernels_usable() else
                                              "per sample")  # fmt: skip
    encoder = SampleEncoder(
        processor, get_family(args.family), TRAINING_BUDGET.overridden(max_pixels=64 * 64, min_pixels=32 * 32)
    )
    with tempfile.TemporaryDirectory() as tmp:
        samples = [encoder(r.messages, r.id) for r in make_records(Path(tmp), args.samples)]
    lengths = [len(s["input_ids"]) for s in samples]
    order = list(range(len(samples)))
    random.Random(1).shuffle(order)
    padded_batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    capacity = max(max(lengths), int(sum(lengths) / len(padded_batches)) + 1)
    packs = plan_packs(lengths, capacity)
    modes = {
        "padded": (PaddedCollator(processor.tokenizer.pad_token_id), padded_batches),
        "packed": (PackedCollator(), packs),
    }
    # One warm-up epoch per mode, then the modes alternate (A B, B A, ...) --repeats times (benchmarks/timing.py);
    # each mode reports its median run and the spread of its runs.
    from timing import compare, summary

    timed = compare(
        {mode: (lambda c=collate, b=batches: run_mode(model, samples, c, b, device)) for mode, (collate, batches) in
         modes.items()},
        repeats=args.repeats,
        smoke=args.repeats < 5,
    )  # fmt: skip
    results = {}
    for mode, side in timed["sides"].items():
        mode_runs = side["runs"]
        ranked = sorted(mode_runs, key=lambda r: r["real_tokens_per_s"])
        results[mode] = {
            **ranked[len(ranked) // 2],
            "runs_real_tokens_per_s": [r["real_tokens_per_s"] for r in mode_runs],
            "real_tokens_per_s_summary": summary([r["real_tokens_per_s"] for r in mode_runs]),
        }
    results["packed"]["packing_efficiency"] = packing_efficiency(lengths, packs, capacity)
    ratio = results["packed"]["real_tokens_per_s"] / results["padded"]["real_tokens_per_s"]
    peak = peak_bf16_flops(device) if dtype == torch.bfloat16 else None
    for mode in ("padded", "packed"):
        results[mode]["mfu"] = results[mode]["model_tflops_per_s"] * 1e12 / peak if peak else None
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_start": timed["load_start"],
        "load_end": timed["load_end"],
        "repeats": timed["repeats"],
        "smoke": timed.get("smoke", False),
        "device": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} thread)",
        "model": f"{label}, {args.dtype}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_flops": peak,
        "samples": len(samples),
        "length_min_median_max": [min(lengths), sorted(lengths)[len(lengths) // 2], max(lengths)],
        "batch_size": args.batch_size,
        "pack_capacity": capacity,
        **results,
        "packed_vs_padded": ratio,
    }
    out = args.out or str(HERE / "results" / ("train_gpu.json" if device.startswith("cuda") else "train.json"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['model']} on {report['device']}")
    for mode in ("padded", "packed"):
        r = results[mode]
        mfu = f"  MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        print(
            f"{mode:7} {r['real_tokens_per_s']:10.0f} real tokens/s  padding efficiency {r['padding_efficiency']:.2f}"
            f"  {r['model_tflops_per_s']:.3g} model TFLOP/s{mfu}"
        )
    print(f"packed vs padded: {ratio:.2f}x  -> {out}")
    return report


if __name__ == "__main__":
    main()
