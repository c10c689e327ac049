"""GPU checks (skipped without CUDA; run by scripts/gpu_check.sh): the loader's attention choice, and packed batches
staying isolated on the GPU kernels (sdpa, and flash-attention 2 when installed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from qwenvl.data.collate import PackedCollator
from qwenvl.data.encode import SampleEncoder
from qwenvl.data.registry import load_records
from qwenvl.model.budget import TRAINING_BUDGET
from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_model, load_processor, resolve_attn_implementation


pytestmark = pytest.mark.gpu
ATTN = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


def test_auto_attention_on_gpu():
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert resolve_attn_implementation("auto", "cuda") == expected


@pytest.mark.parametrize("attn", ATTN)
def test_packed_equals_unpacked_on_gpu(tiny_checkpoints, attn):
    path = str(tiny_checkpoints["qwen3_vl"])
    model = load_model(path, dtype="bfloat16", attn_implementation=attn, device_map="cuda").eval()
    encoder = SampleEncoder(load_processor(path), FAMILIES["qwen3_vl"], TRAINING_BUDGET)
    samples = [encoder(r.messages, r.id) for r in load_records("demo_images,demo_messages")][:4]

    def logits(batch):
        batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            return model(**batch).logits.float()

    packed = logits(PackedCollator()([samples]))
    start = 0
    for s in samples:
        n = len(s["input_ids"])
        alone = logits(PackedCollator()([s]))
        assert (packed[0, start : start + n] - alone[0]).abs().max() < 0.1  # bf16 tolerance
        start += n


def test_train_bf16_packed_with_gradient_checkpointing_on_gpu(tiny_checkpoints, tmp_path):
    """The real launch path on CUDA: bf16, packed rows, gradient checkpointing, a checkpoint eval and demo can read."""
    import json

    from qwenvl.model.preprocessing import load_preprocessing
    from qwenvl.train.train_qwen import train

    out = tmp_path / "run"
    metrics = train([
        "--model_name_or_path", str(tiny_checkpoints["qwen3_vl"]), "--dataset_use", "demo_images,demo_messages",
        "--output_dir", str(out), "--bf16", "True", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--data_packing", "True", "--max_packed_tokens", "2048", "--model_max_length", "1024",
        "--gradient_checkpointing", "True",
        "--max_steps", "6", "--logging_steps", "1", "--report_to", "none", "--seed", "3",
    ])  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # lr 1e-3 on a random tiny model: the loss falls within a few steps
    assert any("tokens_per_s" in h and "packing_efficiency" in h for h in history)
    assert metrics["skipped_samples"] == {}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_preprocessing(out) is not None and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("attn", ATTN)
def test_verify_packing_cli_on_gpu(tiny_checkpoints, attn, capsys):
    """The user-facing check on the GPU kernels, in bf16: packed rows match the model's own unpacked path."""
    from qwenvl.data.verify_packing import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tiny_checkpoints["qwen3_vl"]), "--dataset_use",
              "demo_video,demo_messages,demo_images", "--samples", "8", "--device", "cuda", "--dtype", "bfloat16",
              "--attn_implementation", attn])  # fmt: skip
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "OK: all 8 samples match" in out and "the check sees a leak" in out


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f].linear_attention])
def test_qwen3_5_packed_rows_on_the_linear_attention_kernels(tiny_checkpoints, family):
    """Packed Qwen3.5 rows on CUDA: with flash-linear-attention and causal-conv1d installed the boundaries go to the
    kernels (cu_seqlens, seq_idx), otherwise each sample runs alone through the layer; either way each sample's
    logits equal the vanilla model's for that sample alone (fp32, so the tolerance is tight)."""
    from transformers import AutoModelForImageTextToText

    from qwenvl.model.linear_attention import kernels_available

    path = str(tiny_checkpoints[family])
    model = load_model(path, dtype="float32", attn_implementation="sdpa", device_map="cuda").eval()
    vanilla = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).cuda().eval()
    encoder = SampleEncoder(load_processor(path), FAMILIES[family], TRAINING_BUDGET)
    samples = [encoder(r.messages, r.id) for r in load_records("demo_images,demo_video,demo_messages")][:5]
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in PackedCollator()([samples]).items() if k != "labels"}
    with torch.no_grad():
        packed = model(**batch).logits.float()
    hook = model._qwenvl_packed_linear_attention
    assert hook.mode == ("kernels" if kernels_available() else "per_sample")
    start = 0
    for s in samples:
        n = len(s["input_ids"])
        inputs = {"input_ids": s["input_ids"][None], "attention_mask": torch.ones_like(s["input_ids"])[None],
                  "mm_token_type_ids": s["mm_token_type_ids"][None], "use_cache": False}  # fmt: skip
        inputs.update({k: s[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
                       if k in s})  # fmt: skip
        with torch.no_grad():
            alone = vanilla(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}).logits.float()
        assert (packed[0, start : start + n] - alone[0]).abs().max() < 2e-3, s["sample_id"]
        start += n
