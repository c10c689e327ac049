"""M-RoPE position ids against the transformers model's own get_rope_index (the oracle), for every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from qwenvl.data.encode import SampleEncoder
from qwenvl.data.registry import DEMO_DIR
from qwenvl.model.budget import TRAINING_BUDGET
from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_processor
from qwenvl.model.rope import mrope_position_ids


IMAGES = sorted((DEMO_DIR / "images").iterdir())
VIDEO = str(DEMO_DIR / "videos" / "moving_red.mp4")


def _user(*items):
    return {"role": "user", "content": list(items)}


def _answer(text="It is red."):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


CASES = {
    "text_only": [_user({"type": "text", "text": "Hello there"}), _answer()],
    "one_image": [_user({"type": "image", "image": str(IMAGES[0])}, {"type": "text", "text": "Colour?"}), _answer()],
    "several_images": [
        _user(
            {"type": "image", "image": str(IMAGES[0])},
            {"type": "text", "text": "and"},
            {"type": "image", "image": str(IMAGES[1]), "max_pixels": 32 * 32 * 30},
        ),
        _answer(),
        _user({"type": "image", "image": str(IMAGES[2])}),
        _answer("Green."),
    ],
    "video": [_user({"type": "video", "video": VIDEO}, {"type": "text", "text": "Motion?"}), _answer()],
    "image_and_video": [
        _user({"type": "image", "image": str(IMAGES[3])}, {"type": "video", "video": VIDEO, "fps": 4.0}),
        _answer(),
    ],
}


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    return {f: AutoModelForImageTextToText.from_pretrained(p) for f, p in tiny_checkpoints.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_position_ids_match_transformers(tiny_checkpoint, family, models, case):
    model = models[family]
    tps = getattr(model.config.vision_config, "tokens_per_second", 2)
    encoder = SampleEncoder(load_processor(str(tiny_checkpoint)), FAMILIES[family], TRAINING_BUDGET, tps)
    sample = encoder(CASES[case], case)
    positions = sample["position_ids"]
    L = len(sample["input_ids"])
    assert positions.shape == (4, L)
    assert torch.equal(positions[0], torch.arange(L))
    if case == "text_only":
        assert "image_grid_thw" not in sample
        assert torch.equal(positions[1:], torch.arange(L).expand(3, L))
        return
    kwargs = {k: sample[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in sample}
    expected, _ = model.model.get_rope_index(sample["input_ids"][None], sample["mm_token_type_ids"][None], **kwargs)
    assert torch.equal(positions[1:], expected[:, 0])
    # The vision positions really are 3-D (not a plain range), so the comparison is not vacuous.
    assert not torch.equal(positions[1], positions[2])


def test_qwen2_5_temporal_index_scales_with_seconds():
    fam = FAMILIES["qwen2_5_vl"]
    types = torch.tensor([0] + [2] * 8 + [0])
    grid = torch.tensor([[2, 4, 4]])  # 2 temporal patches of 2x2 merged tokens
    slow = mrope_position_ids(fam, types, video_grid_thw=grid, second_per_grid_ts=[2.0], tokens_per_second=2)
    fast = mrope_position_ids(fam, types, video_grid_thw=grid, second_per_grid_ts=[0.5], tokens_per_second=2)
    assert slow[1, 1:9].tolist() == [1, 1, 1, 1, 5, 5, 5, 5]
    assert fast[1, 1:9].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert slow[2, 1:9].tolist() == [1, 1, 2, 2, 1, 1, 2, 2]
    assert slow[3, 1:9].tolist() == [1, 2, 1, 2, 1, 2, 1, 2]
    assert slow[1:, 9].tolist() == [3, 3, 3]  # text continues at start + max(h, w) = 1 + 2


def test_mismatched_grids_are_errors():
    fam = FAMILIES["qwen2_vl"]
    with pytest.raises(ValueError, match="implies 4"):
        mrope_position_ids(fam, torch.tensor([0, 1, 1, 1, 0]), image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="more image token runs"):
        mrope_position_ids(fam, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="but 1 image and 0 video grids"):
        mrope_position_ids(fam, torch.tensor([0, 0]), image_grid_thw=torch.tensor([[1, 2, 2]]))
