"""Qwen3.5 / Qwen3.5-MoE training: LoRA targets and learning-rate groups that cover the Gated DeltaNet layers,
full and LoRA training on packed image + video + text rows, the router's auxiliary loss, and the packed rows that
training feeds the model compared with vanilla transformers running each sample alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText, TrainingArguments

from qwenvl.model.families import FAMILIES
from qwenvl.model.freeze import set_trainable
from qwenvl.train.lora import lora_target_modules
from qwenvl.train.trainer import QwenVLTrainer


QWEN3_5 = [f for f in FAMILIES if FAMILIES[f].linear_attention]


def _flags(model, out, *extra):
    return ["--model_name_or_path", str(model), "--dataset_use", "demo_images,demo_video,demo_messages",
            "--output_dir", str(out), "--use_cpu", "True", "--report_to", "none", "--learning_rate", "1e-3",
            "--model_max_length", "2048", "--logging_steps", "1", "--seed", "3", "--dataloader_num_workers", "0",
            "--video_max_pixels", str(16 * 32 * 32), "--video_min_pixels", str(8 * 32 * 32),
            "--max_pixels", str(64 * 32 * 32), *extra]  # fmt: skip


def test_qwen3_5_families_are_in_the_table():
    assert QWEN3_5 == ["qwen3_5", "qwen3_5_moe"]
    for name in QWEN3_5:
        fam = FAMILIES[name]
        assert fam.thinks_by_default and fam.video_timestamps and not fam.deepstack and fam.patch_size == 16


@pytest.mark.parametrize("family", QWEN3_5)
def test_lora_targets_and_lr_groups_cover_the_linear_attention_layers(tiny_checkpoints, tmp_path, family):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    targets = lora_target_modules(model, llm_mlp=True)
    layer0 = "model.language_model.layers.0.linear_attn."
    for proj in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"):
        assert layer0 + proj in targets
    assert "model.language_model.layers.3.self_attn.q_proj" in targets  # the full-attention layer
    set_trainable(model, vision_tower=True, merger=True, llm=True)
    args = TrainingArguments(str(tmp_path), use_cpu=True, learning_rate=1e-3, weight_decay=0.1, report_to="none")
    trainer = QwenVLTrainer(model=model, args=args, component_lrs={"vision_tower": 1e-5, "merger": 1e-4, "llm": 1e-3})
    groups = trainer.param_groups(model)
    placed = {name: g["component"] for g in groups for name in g["names"]}
    # Every parameter is in exactly one group: the recurrence's A_log and dt_bias and the short convolution too.
    assert set(placed) == {n for n, _ in model.named_parameters()}
    for name in ("A_log", "dt_bias", "conv1d.weight"):
        assert placed[layer0 + name] == "llm"
    assert {g["component"]: g["lr"] for g in groups} == {"vision_tower": 1e-5, "merger": 1e-4, "llm": 1e-3}


@pytest.mark.parametrize("family", QWEN3_5)
def test_training_rows_equal_vanilla_transformers_per_sample(tiny_checkpoints, tmp_path, family):
    """The packed rows the training entry point builds (its datasets, collator and model loader), compared token
    by token with vanilla transformers running each sample alone."""
    from qwenvl.data.collate import PackedCollator, sample_lengths
    from qwenvl.data.dataset import Quarantine
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.model.budget import MediaBudget
    from qwenvl.model.loader import load_model, load_processor
    from qwenvl.train.arguments import parse_args
    from qwenvl.train.train_qwen import build_datasets

    path = str(tiny_checkpoints[family])
    _, data_args, training_args = parse_args(_flags(path, tmp_path, "--data_packing", "True",
                                                    "--max_packed_tokens", "4096"))  # fmt: skip
    encoder = SampleEncoder(load_processor(path), FAMILIES[family], MediaBudget.from_attrs(data_args))
    train_set, _ = build_datasets(data_args, training_args, encoder, Quarantine(tmp_path / "q.jsonl"))
    model = load_model(path, dtype="float32", attn_implementation="sdpa").eval()  # what train_qwen loads
    vanilla = AutoModelForImageTextToText.from_pretrained(path).eval()
    seen = {"image_grid_thw": 0, "video_grid_thw": 0, "multi_sample_packs": 0}
    for i in range(len(train_set)):
        pack = [s for s in train_set[i] if s is not None]
        batch = PackedCollator()([pack])
        seen["multi_sample_packs"] += len(pack) > 1
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
            start = 0
            for s, n in zip(pack, sample_lengths(batch)):
                ids = s["input_ids"].unsqueeze(0)
                inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False,
                          "mm_token_type_ids": s["mm_token_type_ids"].unsqueeze(0)}  # fmt: skip
                for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
                    if key in s:
                        inputs[key] = s[key]
                        seen[key] = seen.get(key, 0) + 1
                alone = vanilla(**inputs).logits[0]
                assert (logits[start : start + n] - alone).abs().max().item() < 1e-4, (i, s["sample_id"])
                start += n
    assert seen["image_grid_thw"] and seen["video_grid_thw"] and seen["multi_sample_packs"], seen


@pytest.mark.slow
@pytest.mark.parametrize("family", QWEN3_5)
def test_full_packed_training_two_steps(tiny_checkpoints, tmp_path, family):
    from qwenvl.train.train_qwen import train

    out = tmp_path / "full"
    metrics = train(_flags(tiny_checkpoints[family], out, "--tune_mm_vision", "True", "--tune_mm_mlp", "True",
                           "--vision_tower_lr", "1e-4", "--mm_projector_lr", "5e-4", "--data_packing", "True",
                           "--max_packed_tokens", "2048", "--max_steps", "2", "--save_strategy", "no"))  # fmt: skip
    assert metrics["skipped_samples"] == {}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    reloaded = AutoModelForImageTextToText.from_pretrained(out)
    assert {"linear_attention", "full_attention"} == set(reloaded.config.text_config.layer_types)


@pytest.mark.slow
def test_moe_router_aux_loss_is_added_and_logged_when_the_config_asks(tiny_checkpoints, tmp_path):
    from qwenvl.train.train_qwen import train

    model = tmp_path / "moe-aux"
    shutil.copytree(tiny_checkpoints["qwen3_5_moe"], model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["output_router_logits"] = True
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    train(_flags(model, out, "--data_packing", "True", "--max_packed_tokens", "2048", "--max_steps", "2",
                 "--save_strategy", "no"))  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    aux = [h["aux_loss"] for h in history if "aux_loss" in h]
    assert len(aux) == 2 and all(a > 0 for a in aux)


@pytest.mark.slow
def test_full_training_through_upstreams_train_qwen_py(tiny_checkpoints, tmp_path):
    """Upstream's command form, ``python qwenvl/train/train_qwen.py`` (full tuning of Qwen3.5), two steps, packed."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    script = root / "qwen-vl-finetune" / "qwenvl" / "train" / "train_qwen.py"
    # (`qwenvl train` runs both families' DeepSpeed recipes under torchrun in tests/test_examples.py)
    runs = {
        "full": ([sys.executable, str(script)], "qwen3_5", ["--tune_mm_vision", "True"]),
    }
    for name, (command, family, extra) in runs.items():
        out = tmp_path / name
        flags = _flags(tiny_checkpoints[family], out, "--data_packing", "True", "--max_packed_tokens", "2048",
                       "--max_steps", "2", "--save_strategy", "no", *extra)  # fmt: skip
        result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
        saved = "adapter_model.safetensors" if name == "lora" else "model.safetensors"
        assert (out / saved).is_file(), name
