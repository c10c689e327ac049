"""qwenvl grpo: advantages and the clipped loss against worked numbers, the built-in rewards, failing rewards
giving 0 with a reason, and two steps on every family with an image prompt and a video prompt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qwenvl.data.registry import DEMO_DIR


USER_REWARDS = '''
def vowels(completion, solution, **context):
    """A reward a random model's samples differ in: the share of vowels."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


def flaky(completion, solution, **context):
    if len(completion) % 2:
        raise RuntimeError("this reward fails on odd lengths")
    return 1.0
'''


def write_prompts(folder: Path) -> Path:
    prompts = [
        {"id": "q-img", "image": str(DEMO_DIR / "images" / "0_red_circle.png"),
         "conversations": [{"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]},
        {"id": "q-vid", "videos": [str(DEMO_DIR / "videos" / "moving_blue.mp4")],
         "messages": [{"role": "user", "content": "<video>What color is the moving circle?"}], "solution": "blue"},
    ]  # fmt: skip
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def _flags(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--dataset_use", str(data), "--output_dir", str(out), "--use_cpu", "True",
        "--report_to", "none", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--model_max_length",
        "2048", "--logging_steps", "1", "--seed", "3", "--dataloader_num_workers", "0", "--max_steps", "2",
        "--video_max_pixels", str(64 * 64), "--video_min_pixels", str(32 * 32), "--video_max_frames", "4",
        "--num_generations", "3", "--max_completion_length", "6", *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- maths


def test_group_advantages_worked_numbers():
    from qwenvl.train.grpo import group_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    # group 1: mean 1/3, std (unbiased) sqrt(1/3); group 2: all equal -> 0
    s = math.sqrt(1 / 3)
    want = [(2 / 3) / (s + 1e-4), (-1 / 3) / (s + 1e-4), (-1 / 3) / (s + 1e-4), 0.0, 0.0, 0.0]
    assert group_advantages(rewards, 3).tolist() == pytest.approx(want, rel=1e-5)
    assert group_advantages(rewards, 3, "none").tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])


def test_clipped_loss_and_normalisations_worked_numbers():
    from qwenvl.train.grpo import grpo_loss

    # completion 0 has 2 tokens, completion 1 has 1; advantages +1 and -2
    owners = torch.tensor([0, 0, 1])
    adv = torch.tensor([1.0, -2.0])
    old = torch.zeros(3)
    logps = torch.log(torch.tensor([1.5, 1.0, 0.5]))  # ratios 1.5 (clipped to 1.2 for A>0), 1, 0.5 (A<0: clip 0.8)
    # per token: -min(1.5, 1.2) = -1.2 ; -1 ; -min(0.5*-2, 0.8*-2) = 1.6
    loss, stats = grpo_loss(logps, old, owners, adv, epsilon=0.2, loss_type="dapo")
    assert float(loss) == pytest.approx((-1.2 - 1 + 1.6) / 3)
    assert stats["clip_ratio"] == pytest.approx(2 / 3)
    loss, _ = grpo_loss(logps, old, owners, adv, epsilon=0.2, loss_type="grpo")
    assert float(loss) == pytest.approx(((-1.2 - 1) / 2 + 1.6) / 2)
    loss, _ = grpo_loss(logps, old, owners, adv, epsilon=0.2, loss_type="dr_grpo", max_completion_length=4)
    assert float(loss) == pytest.approx((-1.2 - 1 + 1.6) / (2 * 4))
    # DAPO clip-higher: 1.5 is within 1 + 0.6
    loss, _ = grpo_loss(logps, old, owners, adv, epsilon=0.2, epsilon_high=0.6, loss_type="dapo")
    assert float(loss) == pytest.approx((-1.5 - 1 + 1.6) / 3)
    # k3 KL: ref = logp + log 2 -> exp(log 2) - log 2 - 1 per token
    ref = logps + math.log(2)
    loss, stats = grpo_loss(logps, old, owners, adv, ref_logps=ref, beta=0.1, loss_type="dapo")
    assert stats["kl"] == pytest.approx(1 - math.log(2))
    assert float(loss) == pytest.approx((-1.2 - 1 + 1.6) / 3 + 0.1 * (1 - math.log(2)))
    # on-policy (old = logp detached) the gradient is -A / n per token's logp (dapo)
    logps = torch.zeros(3, requires_grad=True)
    grpo_loss(logps, logps.detach(), owners, adv, loss_type="dapo")[0].backward()
    assert logps.grad.tolist() == pytest.approx([-1 / 3, -1 / 3, 2 / 3])


# ---------------------------------------------------------------------------------------------------- rewards


def test_builtin_rewards():
    from qwenvl.model.families import FAMILIES
    from qwenvl.train.rewards import BUILTIN, Unparseable, box_iou, score

    assert BUILTIN["exact"]("<think>hmm</think>\n\nRed.", "red") == 1.0
    assert BUILTIN["exact"]("<think>x</think><answer> blue </answer>", "Blue") == 1.0
    assert BUILTIN["exact"]("green", "red") == 0.0
    assert BUILTIN["choice"]("The answer is (C).", "C") == 1.0
    assert BUILTIN["choice"]("B", "C") == 0.0
    with pytest.raises(Unparseable):
        BUILTIN["choice"]("no idea", "C")
    assert BUILTIN["numeric"]("so the final answer is \\boxed{0.5}", "1/2") == 1.0
    assert BUILTIN["numeric"]("The answer is 3", "4") == 0.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    # each family's own markup: JSON bbox_2d (Qwen2.5-VL pixels / Qwen3-VL 0-1000) and Qwen2-VL's box tokens
    json_answer = '```json\n[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]\n```'
    assert BUILTIN["iou"](json_answer, '{"bbox_2d": [5, 0, 15, 10]}', family=FAMILIES["qwen3_vl"]) == pytest.approx(
        1 / 3
    )
    tokens = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(10,10)<|box_end|>"
    assert BUILTIN["iou"](tokens, "<|box_start|>(0,0),(10,20)<|box_end|>", family=FAMILIES["qwen2_vl"]) == 0.5
    value, reason = score(_reward("iou"), json_answer, "<|box_start|>(0,0),(10,10)<|box_end|>",
                          family=FAMILIES["qwen2_vl"])  # fmt: skip
    assert value == 0.0 and "no box in the answer (expected box_tokens markup)" in reason
    assert BUILTIN["format"]("<think>a</think>\n<answer>b</answer>", "") == 1.0
    assert BUILTIN["format"]("<answer>b</answer>", "") == 0.0


def _reward(name: str):
    from qwenvl.train.rewards import resolve_rewards

    return resolve_rewards(name)[0]


def test_user_rewards_resolve_and_failures_score_zero_with_a_reason(tmp_path, monkeypatch):
    from qwenvl.cli import UserError
    from qwenvl.train.rewards import resolve_rewards, score

    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    vowels, flaky = resolve_rewards("my_rewards:vowels,my_rewards:flaky", "0.5,2")
    assert (vowels.weight, flaky.weight) == (0.5, 2.0)
    assert score(vowels, "abba", "") == (0.5, None)
    assert score(flaky, "abc", "") == (0.0, "RuntimeError: this reward fails on odd lengths")
    with pytest.raises(UserError, match="unknown reward 'exakt'"):
        resolve_rewards("exakt")
    with pytest.raises(UserError, match="cannot import it"):
        resolve_rewards("no_such_module:f")
    with pytest.raises(UserError, match="2 values for 1 rewards"):
        resolve_rewards("exact", "1,2")


# ---------------------------------------------------------------------------------------------------- training


def test_generation_prompt_is_the_inference_rendering(tiny_checkpoints, tmp_path):
    from transformers import AutoProcessor

    from qwen_vl_utils import fetch_image
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.data.preference import PromptEncoder, load_prompt_records
    from qwenvl.model.budget import TRAINING_BUDGET
    from qwenvl.model.families import FAMILIES

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["qwen3_5"])
    encoder = PromptEncoder(SampleEncoder(processor, FAMILIES["qwen3_5"], TRAINING_BUDGET))
    record = load_prompt_records(str(write_prompts(tmp_path)), kind="prompt")[0]
    assert record.solution == "red"
    prompt = encoder.generation_prompt(record.prompt, record.id)
    text = processor.apply_chat_template(record.prompt, tokenize=False, add_generation_prompt=True)
    image = fetch_image(TRAINING_BUDGET.image_item(record.prompt[0]["content"][0]), image_patch_size=16)
    want = processor(text=[text], images=[image], do_resize=False, return_tensors="pt")
    assert torch.equal(prompt["input_ids"], want["input_ids"][0]) and prompt["opened"] == "<think>\n"
    assert torch.equal(prompt["pixel_values"], want["pixel_values"])


def _history(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
def test_grpo_lora_two_steps_every_family_images_and_video(tiny_checkpoints, tmp_path, family, monkeypatch):
    """Each step samples 3 completions of an image prompt and of a video prompt; a user reward that raises on
    half the answers gives those 0 with a logged reason, and the run finishes with a gradient."""
    from qwenvl.train.grpo import build

    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    built = build(_flags(tiny_checkpoints[family], write_prompts(tmp_path), out, "--lora_enable", "True",
                         "--lora_r", "8", "--rewards", "my_rewards:vowels,my_rewards:flaky,exact",
                         "--beta", "0.04"))  # fmt: skip
    assert built["reference"] == "adapters"
    trainer = built["trainer"]
    trainer.train()
    history = _history(trainer)
    assert [h["step"] for h in history] == [1, 2]
    assert history[0]["images_per_step"] == 3 and history[0]["videos_per_step"] == 3
    assert history[0]["kl"] == pytest.approx(0, abs=1e-6)  # adapters start at zero: the policy is the reference
    assert any(h["grad_norm"] > 0 for h in history)
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3 and {r["id"].split("(")[-1] for r in rows} == {"q-img)", "q-vid)"}
    failed = [r for r in rows if "my_rewards:flaky" in r["failures"]]
    assert failed and all(r["rewards"]["my_rewards:flaky"] == 0.0 for r in failed)
    assert (
        0 < history[0]["rewards/my_rewards:flaky/failure_rate"] + history[1]["rewards/my_rewards:flaky/failure_rate"]
    )


def test_grpo_full_tuning_packed_with_a_frozen_copy(tiny_checkpoints, tmp_path, monkeypatch):
    from qwenvl.train.grpo import train

    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    metrics = train(_flags(tiny_checkpoints["qwen2_5_vl"], write_prompts(tmp_path), out, "--rewards",
                           "my_rewards:vowels", "--beta", "0.1", "--data_packing", "True", "--max_packed_tokens",
                           "4096", "--loss_type", "grpo", "--scale_rewards", "none", "--save_steps", "1"))  # fmt: skip
    assert metrics["reference"] == "copy" and len(metrics["reward_curve"]) == 2
    assert (out / "checkpoint-2" / "qwenvl_preprocessing.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("family, box", [("qwen2_vl", "<|box_start|>(100,100),(500,500)<|box_end|>"),
                                         ("qwen2_5_vl", '{"bbox_2d": [8, 8, 40, 40], "label": "shape"}')])  # fmt: skip
def test_grpo_grounding_with_the_iou_reward_reads_each_familys_markup(tiny_checkpoints, tmp_path, family, box):
    """Grounding prompts scored by IoU in the family's own box markup: an answer without a box scores 0 with the
    reason naming the markup the family answers in, and training goes on."""
    from qwenvl.train.grpo import train

    path = tmp_path / "boxes.jsonl"
    path.write_text(json.dumps({"id": "box-0", "image": str(DEMO_DIR / "images" / "0_red_circle.png"),
                                "conversations": [{"from": "human", "value": "<image>\nLocate the shape."},
                                                  {"from": "gpt", "value": box}]}) + "\n")  # fmt: skip
    out = tmp_path / "out"
    metrics = train(_flags(tiny_checkpoints[family], path, out, "--rewards", "iou", "--max_steps", "1",
                           "--per_device_train_batch_size", "1", "--lora_enable", "True", "--lora_r", "4"))  # fmt: skip
    assert metrics["reward_curve"] == [[1, 0.0]]
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    markup = "box_tokens" if family == "qwen2_vl" else "json"
    assert len(rows) == 3 and all(r["failures"]["iou"] == f"unparseable: no box in the answer (expected {markup} markup)"
                                  for r in rows)  # fmt: skip


def test_grpo_several_passes_over_each_rollout_batch(tiny_checkpoints, tmp_path, monkeypatch):
    """--num_iterations 2 with one prompt per step: the sampler gives each prompt twice in a row, the second step
    trains on the first step's completions (no new rollout) against their sampling log-probs (ratio no longer 1),
    and the next prompt comes after: 4 steps, 2 rollouts, both prompts trained."""
    from qwenvl.train.grpo import build

    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    trainer = build(_flags(tiny_checkpoints["qwen2_5_vl"], write_prompts(tmp_path), out, "--rewards",
                           "my_rewards:vowels", "--lora_enable", "True", "--lora_r", "4", "--num_iterations", "2",
                           "--per_device_train_batch_size", "1", "--max_steps", "4", "--learning_rate", "5e-2"))["trainer"]  # fmt: skip
    trainer.train()
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [1, 3] and len(rows) == 2 * 3
    assert len({r["id"] for r in rows}) == 2  # both prompts, one per rollout
    history = _history(trainer)
    assert [h["reused_rollouts"] for h in history] == [0.0, 1.0, 0.0, 1.0]
    assert history[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # the sampler's log-probs, recomputed
    assert abs(history[1]["ratio_mean"] - 1.0) > 1e-4  # the policy moved after step 1; the completions did not


def test_repeated_chunks_give_each_optimiser_steps_batches_again_in_order():
    """Chunks of batch x processes x accumulation indices, each given mu times in a row (the last chunk may be
    short); accelerate then deals consecutive batches to consecutive processes, so each process sees its own
    batches again."""
    from qwenvl.train.grpo import RepeatedChunks

    sampler = RepeatedChunks([5, 0, 3, 1, 4, 2], chunk=4, repeats=2)
    assert list(sampler) == [5, 0, 3, 1, 5, 0, 3, 1, 4, 2, 4, 2] and len(sampler) == 12
