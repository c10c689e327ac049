"""Collators with exact tensors, and packed batches that give each sample the loss it has alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from qwenvl.data.collate import PackedCollator, PaddedCollator, sample_lengths
from qwenvl.data.encode import IGNORE_INDEX, SampleEncoder
from qwenvl.data.registry import load_records
from qwenvl.model.budget import TRAINING_BUDGET
from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_model, load_processor


def _sample(ids, labels, sample_id="s"):
    ids = torch.tensor(ids)
    L = len(ids)
    return {
        "sample_id": sample_id,
        "input_ids": ids,
        "labels": torch.tensor(labels),
        "mm_token_type_ids": torch.zeros(L, dtype=torch.int64),
        "position_ids": torch.arange(L).expand(4, L).clone(),
    }


def test_padded_collator_exact():
    a = _sample([5, 6, 7], [5, 6, 7])
    b = _sample([8, 9], [-100, 9])
    batch = PaddedCollator(pad_token_id=0)([a, None, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["position_ids"].shape == (4, 2, 3)
    assert batch["position_ids"][:, 1].tolist() == [[0, 1, 2]] * 4
    assert batch["mm_token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["use_cache"] is False
    assert PaddedCollator(0, pad_to_multiple_of=4)([a])["input_ids"].shape == (1, 4)


def test_packed_collator_exact():
    a = _sample([5, 6, 7], [5, 6, 7])
    b = _sample([8, 9], [8, 9])
    batch = PackedCollator()([[a, b], None, [a]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 5, 6, 7]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 6, 7]]
    assert batch["attention_mask"] is None
    assert batch["position_ids"][0, 0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert batch["position_ids"].shape == (4, 1, 8)
    assert sample_lengths(batch) == [3, 2, 3]
    with pytest.raises(RuntimeError, match="every sample of this batch was skipped"):
        PackedCollator()([None, []])


def _per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, lengths: list[int]) -> list[float]:
    """Mean next-token CE of each sample in a (1, sum L) row, shifting inside each sample."""
    out, start = [], 0
    for n in lengths:
        lg, lb = logits[0, start : start + n - 1], labels[0, start + 1 : start + n]
        out.append(F.cross_entropy(lg.float(), lb, ignore_index=IGNORE_INDEX).item())
        start += n
    return out


@pytest.fixture(scope="module")
def encoded(tiny_checkpoints):
    """The demo samples (images, video, image+video, text-only, multi-turn) encoded for every family."""
    records = load_records("demo_images,demo_video,demo_messages")
    picked = [
        r
        for r in records
        if any(k in r.id for k in ("img-pair", "vid-red", "msg-image-video", "msg-text-only", "img-0"))
    ]
    out = {}
    for family, path in tiny_checkpoints.items():
        budget = TRAINING_BUDGET.overridden(
            max_pixels=64 * 32 * 32, video_max_pixels=16 * 32 * 32, video_min_pixels=8 * 32 * 32
        )
        encoder = SampleEncoder(load_processor(str(path)), FAMILIES[family], budget)
        out[family] = [encoder(r.messages, r.id) for r in picked]
    return out


def test_packed_equals_the_models_own_unpacked_path(tiny_checkpoint, family, encoded):
    # Packed and padded rows go through the model as training loads it (load_model: for Qwen3.5 that attaches the
    # linear-attention boundary hook); the oracle is vanilla transformers, each sample alone.
    model = load_model(str(tiny_checkpoint), dtype="float32", attn_implementation="sdpa").eval()
    vanilla = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    samples = encoded[family]
    assert (
        len(samples) == 5
        and any("video_grid_thw" in s for s in samples)
        and any("image_grid_thw" in s for s in samples)
    )
    # The oracle: each sample alone through the model's own inference path (attention mask, no position_ids, so
    # transformers computes the M-RoPE positions itself). Our collator's position ids are not used for it, so a
    # position bug in our code shows up as a difference (comparing with a 1-sample pack of our own would not).
    alone = []
    with torch.no_grad():
        for s in samples:
            ids = s["input_ids"].unsqueeze(0)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False,
                      "mm_token_type_ids": s["mm_token_type_ids"].unsqueeze(0)}  # fmt: skip
            inputs.update({k: s[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos",
                                             "video_grid_thw", "second_per_grid_ts") if k in s})  # fmt: skip
            labels = s["labels"].clone().unsqueeze(0)
            labels[0, 0] = IGNORE_INDEX
            alone.extend(_per_sample_losses(vanilla(**inputs).logits, labels, [len(s["input_ids"])]))
        batch = PackedCollator()([samples])
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        packed = _per_sample_losses(logits, batch["labels"], sample_lengths(batch))
        # Padded batch: the same per-sample losses too.
        padded = PaddedCollator(pad_token_id=0)(samples)
        padded_logits = model(**{k: v for k, v in padded.items() if k != "labels"}).logits
    for i, (a, p) in enumerate(zip(alone, packed)):
        assert abs(a - p) <= 1e-5, (family, i, a, p)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        row = F.cross_entropy(padded_logits[i, : n - 1], padded["labels"][i, 1:n], ignore_index=IGNORE_INDEX).item()
        assert abs(row - alone[i]) <= 1e-5, (family, i)


def test_control_positions_not_restarting_leak_across_samples(tiny_checkpoint, family, encoded):
    """The same packed row with row 0 of position_ids running on (no restart): later samples see earlier ones
    and their loss changes, so test_packed_equals_unpacked would catch broken isolation."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    samples = encoded[family]
    batch = PackedCollator()([samples])
    lengths = sample_lengths(batch)
    broken = dict(batch)
    broken["position_ids"] = batch["position_ids"].clone()
    broken["position_ids"][0, 0] = torch.arange(broken["position_ids"].shape[-1])
    with torch.no_grad():
        good = _per_sample_losses(
            model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"], lengths
        )
        bad = _per_sample_losses(
            model(**{k: v for k, v in broken.items() if k != "labels"}).logits, batch["labels"], lengths
        )
    assert abs(good[0] - bad[0]) <= 1e-5  # the first sample has nothing before it
    assert max(abs(g - b) for g, b in zip(good[1:], bad[1:])) > 1e-3


def test_linear_attention_leaks_without_the_boundary_hook(tiny_checkpoints, encoded):
    """Qwen3.5's Gated DeltaNet layers carry their convolution window and recurrent state across a packed boundary
    in vanilla transformers even with restarting position ids (full attention alone would be isolated): without
    qwenvl.model.linear_attention, packed training would change what every later sample learns."""
    for family in [f for f in FAMILIES if FAMILIES[f].linear_attention]:
        vanilla = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family]).eval()
        trained = load_model(str(tiny_checkpoints[family]), dtype="float32", attn_implementation="sdpa").eval()
        batch = PackedCollator()([encoded[family]])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        lengths = sample_lengths(batch)
        with torch.no_grad():
            leaky = _per_sample_losses(vanilla(**inputs).logits, batch["labels"], lengths)
            isolated = _per_sample_losses(trained(**inputs).logits, batch["labels"], lengths)
        assert abs(leaky[0] - isolated[0]) <= 1e-5, family  # nothing before the first sample
        assert max(abs(a - b) for a, b in zip(leaky[1:], isolated[1:])) > 1e-4, family


def test_dummy_media_change_no_loss(tiny_checkpoint, family, encoded):
    """The dummy image/video added for distributed runs makes the model run its vision paths but changes no
    sample's loss, packed or padded."""
    from qwenvl.data.collate import DummyMedia

    model = load_model(str(tiny_checkpoint), dtype="float32", attn_implementation="sdpa").eval()
    dummy = DummyMedia.from_processor(load_processor(str(tiny_checkpoint)), FAMILIES[family])
    text_only = [s for s in encoded[family] if "image_grid_thw" not in s and "video_grid_thw" not in s]
    image_only = [s for s in encoded[family] if "image_grid_thw" in s and "video_grid_thw" not in s]
    assert text_only and image_only
    for samples in (text_only, image_only[:2]):
        with torch.no_grad():
            plain = PackedCollator()([samples])
            with_dummy = PackedCollator(dummy=dummy)([samples])
            assert "video_grid_thw" in with_dummy and with_dummy["input_ids"].shape[1] > plain["input_ids"].shape[1]
            a = _per_sample_losses(
                model(**{k: v for k, v in plain.items() if k != "labels"}).logits,
                plain["labels"],
                sample_lengths(plain),
            )
            b = _per_sample_losses(
                model(**{k: v for k, v in with_dummy.items() if k != "labels"}).logits,
                with_dummy["labels"],
                sample_lengths(with_dummy),
            )
            assert b[: len(a)] == pytest.approx(a, abs=1e-5)
            padded = PaddedCollator(0)(samples)
            padded_dummy = PaddedCollator(0, dummy=dummy)(samples)
            assert "video_grid_thw" in padded_dummy
            la = model(**{k: v for k, v in padded.items() if k != "labels"}).logits
            lb = model(**{k: v for k, v in padded_dummy.items() if k != "labels"}).logits
            for i, s in enumerate(samples):
                n = len(s["input_ids"])
                assert torch.allclose(la[i, :n], lb[i, :n], atol=1e-5)
