"""benchmarks/bench_train.py: the GPU benchmark's code path (2B-shaped model, FLOP count, MFU) on the CPU, so that a
GPU session's few minutes are not spent finding a broken script."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_train


SMOKE = ["--shape", "2b", "--device", "cpu", "--dtype", "float32", "--text-layers", "1", "--vision-depth", "1",
         "--vocab-size", "4096"]  # fmt: skip


@pytest.mark.slow
def test_flop_formula_matches_counted_flops(tmp_path):
    from qwenvl.data.collate import PackedCollator
    from qwenvl.data.encode import MediaBudget, SampleEncoder
    from qwenvl.model.families import get_family

    torch.manual_seed(0)
    model, processor = bench_train.model_2b("cpu", torch.float32, text_layers=1, vision_depth=1, vocab_size=4096)
    encoder = SampleEncoder(processor, get_family("qwen3_vl"), MediaBudget(max_pixels=64 * 64, min_pixels=32 * 32))
    samples = [encoder(r.messages, r.id) for r in bench_train.make_records(tmp_path, 2)]
    batch = PackedCollator()(samples)
    labels = batch.pop("labels")
    with FlopCounterMode(display=False) as counter:
        logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100).backward()
    lengths = [len(s["input_ids"]) for s in samples]
    estimate = bench_train.flop_model(model)(batch, lengths)
    counted = counter.get_total_flops()
    # The counter charges sdpa the full square of the packed row (the formula: each sample's causal half) and skips
    # the input gradient of the first layers (the formula charges every layer a full backward); with short samples
    # the linear layers dominate, so the two agree closely.
    print(f"estimate/counted = {estimate / counted:.4f}")
    assert estimate == pytest.approx(counted, rel=0.02)


@pytest.mark.slow
def test_gpu_benchmark_path_runs_on_cpu(tmp_path):
    report = bench_train.main(
        [*SMOKE, "--samples", "4", "--batch-size", "2", "--repeats", "1", "--out", str(tmp_path / "r.json")]
    )
    assert (tmp_path / "r.json").is_file()
    assert report["model"].startswith("Qwen3-VL-2B-shaped random (1 text layers")
    for mode in ("padded", "packed"):
        assert report[mode]["model_tflops_per_s"] > 0 and report[mode]["mfu"] is None  # no known peak on a CPU
    assert report["packed"]["padding_efficiency"] == 1.0 and report["padded"]["padding_efficiency"] < 1.0


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit):
        bench_train.main(["--gpu"])
