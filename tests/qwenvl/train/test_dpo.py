"""qwenvl dpo: the losses against worked numbers, pairs encoded as the processor encodes the whole conversation,
two steps on every family with an image pair and a video pair, the three kinds of reference, packing."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import torch

from qwenvl.data.registry import DEMO_DIR


ROOT = Path(__file__).resolve().parents[3]
REGISTRY = ROOT / "examples" / "data" / "registry.yaml"


def write_pairs(folder: Path) -> Path:
    """One image pair and one video pair (a batch of 2 holds both)."""
    pairs = [
        {"id": "p-img", "image": str(DEMO_DIR / "images" / "0_red_circle.png"),
         "conversations": [{"from": "human", "value": "<image>\nWhat color is the shape?"}],
         "chosen": "The circle is red.", "rejected": "The circle is blue."},
        {"id": "p-vid", "videos": [str(DEMO_DIR / "videos" / "moving_red.mp4")],
         "messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "<video>Which way does the shape move?"}],
         "chosen": {"role": "assistant", "content": "Left to right."}, "rejected": "Right to left."},
    ]  # fmt: skip
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def _flags(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--dataset_use", str(data), "--output_dir", str(out), "--use_cpu", "True",
        "--report_to", "none", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--model_max_length",
        "2048", "--logging_steps", "1", "--seed", "3", "--dataloader_num_workers", "0", "--max_steps", "2",
        "--video_max_pixels", str(64 * 64), "--video_min_pixels", str(32 * 32), "--video_max_frames", "4", *extra,
    ]  # fmt: skip


def _models_in_memory() -> int:
    from transformers import PreTrainedModel

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, PreTrainedModel) and o.__class__.__name__.endswith(
        "ForConditionalGeneration"))  # fmt: skip


# ---------------------------------------------------------------------------------------------------- losses


def _loss(loss_type: str, **kw):
    from qwenvl.train.dpo import preference_loss

    t = torch.tensor
    args = dict(policy_chosen=t([-4.0]), policy_rejected=t([-6.0]), chosen_tokens=t([2.0]), rejected_tokens=t([3.0]))
    if loss_type in ("sigmoid", "ipo"):
        args.update(reference_chosen=t([-5.0]), reference_rejected=t([-5.0]))
    losses, rewards = preference_loss(loss_type, 0.5, **args, **kw)
    return float(losses[0]), float(rewards["chosen"][0]), float(rewards["rejected"][0])


def test_losses_match_worked_numbers():
    # h = (-4 - -5) - (-6 - -5) = 2; beta h = 1
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert _loss("sigmoid") == pytest.approx((-math.log(sig(1.0)), 0.5, -0.5))
    smoothed = -0.9 * math.log(sig(1.0)) - 0.1 * math.log(sig(-1.0))
    assert _loss("sigmoid", label_smoothing=0.1)[0] == pytest.approx(smoothed)
    # IPO on per-token means: (1/2 - (-1/3) - 1/(2*0.5))^2
    assert _loss("ipo")[0] == pytest.approx((0.5 + 1 / 3 - 1.0) ** 2)
    # SimPO: means -2 and -2; 0.5 * 0 - gamma 0.5
    assert _loss("simpo", simpo_gamma=0.5) == pytest.approx((-math.log(sig(-0.5)), -1.0, -1.0))
    # ORPO: -mean_c - beta log sig(log odds_c - log odds_r), means -2 and -2 -> log sig(0)
    assert _loss("orpo")[0] == pytest.approx(2.0 + 0.5 * math.log(2))


def test_precomputed_and_reference_free_flags_are_checked_before_loading(tmp_path):
    from qwenvl.train.dpo import train

    base = ["--model_name_or_path", "/nonexistent", "--dataset_use", "x.jsonl", "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="--loss_type simpo is reference-free"):
        train([*base, "--loss_type", "simpo", "--reference", "copy"])
    with pytest.raises(ValueError, match="--reference adapters needs --lora_enable True"):
        train([*base, "--reference", "adapters"])
    with pytest.raises(ValueError, match="--label_smoothing must be in"):
        train([*base, "--label_smoothing", "0.5"])


# ---------------------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_pairs_share_one_prompt_encoding_and_match_the_processor(tiny_checkpoints, tmp_path, family):
    """Each answer's tokens are what the processor gives the whole rendered conversation (images and video, the
    thinking template's empty think block included); both answers reuse the prompt's pixel tensors."""
    from transformers import AutoProcessor

    from qwen_vl_utils import fetch_image, fetch_video
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.data.preference import PromptEncoder, load_prompt_records
    from qwenvl.model.budget import TRAINING_BUDGET
    from qwenvl.model.families import FAMILIES

    path = tiny_checkpoints[family]
    processor = AutoProcessor.from_pretrained(path)
    budget = TRAINING_BUDGET
    encoder = PromptEncoder(SampleEncoder(processor, FAMILIES[family], budget))
    for record in load_prompt_records(str(write_pairs(tmp_path))):
        pair = encoder.pair(record)
        for name in ("chosen", "rejected"):
            answer = getattr(record, name)
            messages = record.prompt + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
            text = processor.apply_chat_template(messages, tokenize=False)
            media = [i for m in record.prompt if isinstance(m["content"], list) for i in m["content"]]
            kwargs = {}
            for item in media:
                patch = FAMILIES[family].patch_size
                if item["type"] == "image":
                    kwargs["images"] = [fetch_image(budget.image_item(item), image_patch_size=patch)]
                elif item["type"] == "video":
                    video, meta = fetch_video(budget.video_item(item), patch, return_video_metadata=True)
                    kwargs.update(videos=[video], video_metadata=[meta], do_sample_frames=False)
            want = processor(text=[text], do_resize=False, return_tensors="pt", **kwargs)["input_ids"][0]
            got = pair[name]["input_ids"]
            assert torch.equal(got, want[: len(got)]) and want[len(got) :].tolist() == processor.tokenizer.encode("\n")
            labelled = got[pair[name]["labels"] != -100]
            assert processor.tokenizer.decode(labelled).endswith(answer + "<|im_end|>")
        for key in ("pixel_values", "pixel_values_videos"):
            if key in pair["chosen"]:
                assert pair["chosen"][key] is pair["rejected"][key]


def test_pair_records_are_checked_and_named(tmp_path):
    from qwenvl.data.annotations import AnnotationError
    from qwenvl.data.preference import load_prompt_records

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "hi"}], "chosen": "a"}) + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "hi"}], "chosen": "a", "rejected": "a"}) + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "hi"}], "chosen": "a", "rejected": "b"}) + "\n"
    )  # fmt: skip
    with pytest.raises(AnnotationError, match=r"bad.jsonl:1: .*missing \['rejected'\].*\n.*bad.jsonl:2: .*the same"):
        load_prompt_records(str(bad))
    invalid: list = []
    records = load_prompt_records(str(bad), bad_records="skip", invalid=invalid)
    assert [r.chosen for r in records] == ["a"] and len(invalid) == 2


# ---------------------------------------------------------------------------------------------------- training


def _history(source) -> list[dict]:
    """Logged training steps of a trainer, or of a finished run's output dir."""
    if isinstance(source, Path):
        return [h for h in json.loads((source / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    return [h for h in source.state.log_history if "loss" in h]


@pytest.mark.slow
def test_dpo_lora_two_steps_every_family_images_and_video(tiny_checkpoints, tmp_path, family):
    """LoRA DPO with one image pair and one video pair per step: the reference is the policy with its adapters
    off (one model in memory), so step 1's loss is log 2 exactly; it learns (margin > 0 at step 2)."""
    from qwenvl.train.dpo import build

    out = tmp_path / "out"
    built = build(_flags(tiny_checkpoints[family], write_pairs(tmp_path), out, "--lora_enable", "True",
                         "--lora_r", "8", "--lora_alpha", "16"))  # fmt: skip
    assert built["reference"] == "adapters" and _models_in_memory() == 1
    trainer = built["trainer"]
    trainer.train()
    first, second = _history(trainer)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and first["rewards/margin"] == pytest.approx(0)
    assert first["images_per_step"] == 2 and first["videos_per_step"] == 2  # chosen + rejected of each pair
    assert second["rewards/margin"] > 0 and second["loss"] < first["loss"]
    for key in ("logps/chosen", "logps/rejected", "rewards/accuracy", "rewards/chosen", "rewards/rejected"):
        assert key in second


def test_adapters_off_reference_is_the_base_model(tiny_checkpoints, tmp_path):
    """The LoRA reference's log-probs equal the untouched checkpoint's, loaded separately by transformers, after
    the adapters have been trained."""
    from transformers import AutoModelForImageTextToText

    from qwenvl.train.dpo import build

    out = tmp_path / "out"
    built = build(_flags(tiny_checkpoints["qwen3_vl"], write_pairs(tmp_path), out, "--lora_enable", "True",
                         "--lora_r", "8", "--max_steps", "1"))  # fmt: skip
    trainer = built["trainer"]
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    ref_c, ref_r = trainer.reference_for(trainer.model, batch)
    base = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen3_vl"]).eval()
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "segments", "pair_keys", "sample_ids")}
    with torch.no_grad():
        logits = base(**inputs).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["labels"][:, 1:].clamp(min=0).unsqueeze(-1))[..., 0]
    per_row = (logp * batch["labels"][:, 1:].ne(-100)).sum(-1)
    assert torch.allclose(torch.cat([ref_c, ref_r]), per_row, atol=1e-4)
    with torch.no_grad():
        policy = trainer._logps(trainer.model, batch)[0]
    assert not torch.allclose(policy, per_row, atol=1e-3)  # the adapters did change the policy


@pytest.mark.slow
def test_full_dpo_packed_with_a_frozen_copy_and_precomputed_reference(tiny_checkpoints, tmp_path):
    """Full tuning keeps a frozen copy (two models); --reference precomputed keeps one and gives the same losses;
    packed pairs give the padded losses."""
    from qwenvl.train.dpo import build

    data = write_pairs(tmp_path)
    model = tiny_checkpoints["qwen2_vl"]
    losses = {}
    for name, extra, models in (
        ("copy", ["--reference", "copy"], 2),
        ("precomputed", ["--reference", "precomputed"], 1),
        ("packed", ["--reference", "copy", "--data_packing", "True", "--max_packed_tokens", "4096"], 2),
    ):
        out = tmp_path / name
        built = build(_flags(model, data, out, *extra))
        assert _models_in_memory() == models, name
        built["trainer"].train()
        losses[name] = [h["loss"] for h in _history(built["trainer"])]
        del built
    assert losses["copy"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses["precomputed"] == pytest.approx(losses["copy"], abs=1e-4)
    assert losses["packed"] == pytest.approx(losses["copy"], abs=1e-4)
    assert (tmp_path / "precomputed" / "reference_logps.json").is_file()


def test_simpo_and_orpo_train_without_a_reference(tiny_checkpoints, tmp_path):
    from qwenvl.train.dpo import train

    data = write_pairs(tmp_path)
    for loss_type in ("simpo", "orpo"):
        out = tmp_path / loss_type
        metrics = train(_flags(tiny_checkpoints["qwen3_vl"], data, out, "--loss_type", loss_type, "--lora_enable",
                               "True", "--lora_r", "4", "--max_steps", "1"))  # fmt: skip
        assert metrics["reference"] == "none" and (out / "adapter_model.safetensors").is_file()
        assert math.isfinite(_history(out)[0]["loss"])
