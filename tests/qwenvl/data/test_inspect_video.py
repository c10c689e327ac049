"""python -m qwenvl.data.inspect_video: sampling report, Qwen3-VL timestamps, and the training vs inference check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl.data.encode import SampleEncoder, encode_prompts
from qwenvl.data.inspect_video import compare_encodings, main, token_layout
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget
from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_processor


VIDEO = str(Path(__file__).resolve().parents[3] / "qwen-vl-finetune/qwenvl/data/demo/videos/moving_red.mp4")


def test_report_and_agreement_for_every_family(tiny_checkpoint, family, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tiny_checkpoint), "--video", VIDEO, "--video_max_frames", "6",
              "--json", str(tmp_path / "r.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "training and inference encode this video identically" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["problems"] == [] and report["budget"]["video_max_frames"] == 6
    assert report["indices"] == sorted(report["indices"]) and len(report["indices"]) % 2 == 0
    import av  # the frame rate read independently of our probe

    with av.open(VIDEO) as container:
        fps = float(container.streams.video[0].average_rate)
    assert report["probe"]["fps"] == pytest.approx(fps)
    assert report["seconds"] == [round(i / fps, 3) for i in report["indices"]]
    layout = "".join(report["prompt_layout"])
    pads = sum(int(p.split("x")[-1]) for p in report["prompt_layout"] if p.startswith("<|video_pad|>x"))
    assert pads == report["visual_tokens"]
    if family.startswith("qwen3"):  # one "<t seconds>" per temporal group, the mean time of its two frames
        groups = len(report["indices"]) // 2
        for g in range(groups):
            mean = sum(report["seconds"][2 * g : 2 * g + 2]) / 2
            assert f"<{mean:.1f} seconds>" in layout
    else:
        assert "seconds>" not in layout


def test_compare_encodings_sees_a_different_rendering(tiny_checkpoints):
    path = str(tiny_checkpoints["qwen3_vl"])
    processor, family = load_processor(path), FAMILIES["qwen3_vl"]
    conversation = [{"role": "user", "content": [{"type": "video", "video": VIDEO}, {"type": "text", "text": "Hi"}]}]
    training = SampleEncoder(processor, family, TRAINING_BUDGET)(
        conversation + [{"role": "assistant", "content": "x"}], "s"
    )

    def inference(budget: MediaBudget):
        return encode_prompts(processor, family, [conversation], budget)

    assert compare_encodings(training, inference(TRAINING_BUDGET), processor.tokenizer) == []
    # Served with other budgets than it was trained with: fewer pixels per frame, or other frames.
    smaller = compare_encodings(training, inference(TRAINING_BUDGET.overridden(video_max_pixels=64 * 64, video_min_pixels=32 * 32)),
                                processor.tokenizer)  # fmt: skip
    assert any("token ids differ" in p for p in smaller) and any("video_grid_thw" in p for p in smaller)
    other_frames = compare_encodings(
        training, inference(TRAINING_BUDGET.overridden(video_fps=4.0)), processor.tokenizer
    )
    assert any("pixel_values_videos" in p for p in other_frames)


def test_token_layout_names_special_runs(tiny_checkpoints):
    tok = load_processor(str(tiny_checkpoints["qwen3_vl"])).tokenizer
    ids = tok.convert_tokens_to_ids(["<|vision_start|>"] + ["<|video_pad|>"] * 3 + ["<|vision_end|>"])
    ids += tok.encode("hello world", add_special_tokens=False)
    assert token_layout(tok, ids) == ["<|vision_start|>", "<|video_pad|>x3", "<|vision_end|>", "hello world"]


def test_missing_video_is_a_clear_error(tiny_checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tiny_checkpoints["qwen3_vl"]), "--video", "/no/such/clip.mp4"])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err
