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
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.model.budget import TRAINING_BUDGET
    from qwenvl.model.families import get_family

    torch.manual_seed(0)
    model, processor = bench_train.model_2b("cpu", torch.float32, text_layers=1, vision_depth=1, vocab_size=4096)
    encoder = SampleEncoder(
        processor, get_family("qwen3_vl"), TRAINING_BUDGET.overridden(max_pixels=64 * 64, min_pixels=32 * 32)
    )
    samples = [encoder(r.messages, r.id) for r in bench_train.make_records(tmp_path, 2)]
    batch = PackedCollator()(samples)
    labels = batch.pop("labels")
    with FlopCounterMode(display=False) as counter:
        logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100).backward()
    lengths = [len(s["input_ids"]) for s in samples]
    estimate = bench_train.flop_model(model)(batch, lengths)
    counted = counter.get_total_flops()
    # On the CPU the counter sees no FLOPs inside sdpa at all, so this checks the linear terms (parameters x tokens
    # and patches), which dominate these short samples; the attention term is checked below on eager attention.
    attention = 12 * 1 * 16 * 128 * sum(n * n for n in lengths)
    print(f"estimate/counted = {estimate / counted:.4f}, attention share {attention / estimate:.3f}")
    assert attention / estimate < 0.05
    assert estimate - attention == pytest.approx(counted, rel=0.02)


@pytest.mark.slow
def test_attention_flops_match_the_counter_on_eager_attention(tmp_path):
    """Eager attention runs as matmuls the flop counter sees: on one long text sample, where attention is over 20%
    of the work, the formula (12 x layers x heads x head_dim x T per token) matches the count within 2%."""
    from transformers import AutoModelForImageTextToText

    from qwenvl.model.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint("qwen3_vl", tmp_path / "tiny")
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    n = 768
    ids = torch.randint(10, 200, (1, n))
    with FlopCounterMode(display=False) as counter:
        logits = model(input_ids=ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    estimate = bench_train.flop_model(model)({"input_ids": ids}, [n])
    t = model.config.text_config
    attention = 12 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * n * n
    counted = counter.get_total_flops()
    print(f"estimate/counted = {estimate / counted:.4f}, attention share {attention / estimate:.3f}")
    assert attention / estimate >= 0.20
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


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as exit_info:
        bench_train.main(["--gpu"])
    assert exit_info.value.code == 2
    assert "--device cuda: no CUDA device is visible" in capsys.readouterr().err
