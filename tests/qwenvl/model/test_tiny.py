"""The tiny checkpoints are real: they load through the Auto classes offline and behave like a Qwen-VL model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_model, read_family


def _image(seed: int = 0, size: tuple[int, int] = (224, 160)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _video(seed: int = 0, frames: int = 8, size: int = 112) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, size, size), dtype=torch.uint8, generator=g)


def _encode(processor, family: str, with_video: bool = True) -> dict:
    content = [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]
    if with_video:
        content.insert(1, {"type": "video"})
    messages = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": "It is red."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    kwargs = {}
    if with_video:
        kwargs["videos"] = [_video()]
        if FAMILIES[family].video_timestamps:
            from transformers.video_utils import VideoMetadata

            kwargs["do_sample_frames"] = False
            kwargs["video_metadata"] = [VideoMetadata(total_num_frames=8, fps=2.0, frames_indices=list(range(8)))]
    return processor(text=[text], images=[_image()], return_tensors="pt", **kwargs)


def test_every_family_has_a_checkpoint(tiny_checkpoints):
    assert set(tiny_checkpoints) == set(FAMILIES)


def test_loads_with_auto_classes_and_right_classes(tiny_checkpoint, family):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    fam = FAMILIES[family]
    assert type(model).__name__ == fam.model_class
    assert type(processor).__name__ == fam.processor_class
    assert type(processor.video_processor).__name__ == fam.video_processor_class
    assert processor.image_processor.patch_size == fam.patch_size
    assert model.config.vision_config.patch_size == fam.patch_size
    if fam.linear_attention:  # both Qwen3.5 layer kinds, each twice (full attention last, as in the real models)
        assert model.config.text_config.layer_types == ["linear_attention", "full_attention"] * 2
    else:
        assert model.config.text_config.num_hidden_layers == 2
    assert model.config.vision_config.depth == 2
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.3e6 < n_params < 2e6, n_params
    if fam.deepstack:
        assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1]
        assert len(model.model.visual.deepstack_merger_list) == 2


def test_config_token_ids_match_tokenizer(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    tok = processor.tokenizer
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config["video_token_id"] == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config["vision_end_token_id"] == tok.convert_tokens_to_ids("<|vision_end|>")
    assert config["text_config"]["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert config["text_config"]["vocab_size"] >= len(tok)
    ids = {tok.convert_tokens_to_ids(t) for t in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|image_pad|>"]}
    assert len(ids) == 4 and tok.unk_token_id not in ids
    # Special tokens encode to one id each, and byte-level BPE round-trips arbitrary text.
    text = "<|im_start|>user\nÜber 3.5 <think>naïve 😀</think><|im_end|>\n"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") == enc[0]
    assert tok.decode(enc) == text


def test_chat_template_renders_qwen_layout(tiny_checkpoint, family):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "a.png"},
                {"type": "video", "video": "b.mp4"},
                {"type": "text", "text": "Hi"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    body = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )
    fam = FAMILIES[family]
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if fam.default_system_prompt else ""
    thinking = "<think>\n" if fam.thinks_by_default else ""  # Qwen3.5 opens the reasoning in the prompt
    assert text == system + body + thinking
    if fam.thinks_by_default:
        off = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        assert off == system + body + "<think>\n\n</think>\n\n"


def test_pad_tokens_match_grids(tiny_checkpoint, family):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    enc = _encode(processor, family)
    ids = enc["input_ids"][0]
    merge = FAMILIES[family].spatial_merge_size ** 2
    image_pads = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    video_pads = int((ids == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    assert image_pads == int(enc["image_grid_thw"].prod(-1).sum()) // merge
    assert video_pads == int(enc["video_grid_thw"].prod(-1).sum()) // merge
    assert image_pads > 0 and video_pads > 0
    # 224x160 at patch 14 -> 16x12 patches (factor 28 grid: 224x168), at patch 16 -> 14x10.
    expected_grid = [1, 12, 16] if FAMILIES[family].patch_size == 14 else [1, 10, 14]
    assert enc["image_grid_thw"].tolist() == [expected_grid]
    assert "mm_token_type_ids" in enc


def test_forward_backward_generate_and_roundtrip(tiny_checkpoint, family, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    enc = _encode(processor, family)
    model.train()
    out = model(**enc, labels=enc["input_ids"], use_cache=False)
    loss = out.loss
    assert torch.isfinite(loss)
    vocab = model.config.text_config.vocab_size
    assert abs(loss.item() - math.log(vocab)) < 0.5, (loss.item(), math.log(vocab))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)

    model.eval()
    prompt = _encode(processor, family, with_video=False)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    with torch.no_grad():
        ref = model(**enc, labels=enc["input_ids"]).loss
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), dtype="float32")
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    enc2 = _encode(reprocessor, family)
    assert torch.equal(enc2["input_ids"], enc["input_ids"])
    with torch.no_grad():
        again = reloaded(**enc2, labels=enc2["input_ids"]).loss
    assert torch.allclose(ref, again, atol=1e-6)


def test_seed_makes_checkpoints_reproducible(tmp_path):
    from qwenvl.model.tiny import build_tiny

    a, _ = build_tiny("qwen3_vl", seed=3)
    b, _ = build_tiny("qwen3_vl", seed=3)
    c, _ = build_tiny("qwen3_vl", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_loader_reads_family_from_config(tiny_checkpoints):
    for family, path in tiny_checkpoints.items():
        assert read_family(str(path)).model_type == family


def test_cli_writes_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl.model.tiny", "--family", "qwen2_5_vl", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in Path(out).iterdir()}
    assert read_family(str(out)).model_type == "qwen2_5_vl"


def test_unknown_family_is_a_clear_error():
    from qwenvl.model.families import get_family

    with pytest.raises(ValueError, match="llava.*expected one of"):
        get_family("llava")
