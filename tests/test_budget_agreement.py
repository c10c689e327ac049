"""One budget everywhere: for one video and one image on one checkpoint, the demo, inspect_video, MMMU's backend
and training produce the same frames, sizes and visual tokens, with and without saved preprocessing settings."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import web_demo_mm as demo_mod
from qwenvl.data.encode import SampleEncoder
from qwenvl.data.inspect_video import main as inspect_video
from qwenvl.inference import load_backend
from qwenvl.inference.config import BackendConfig
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget
from qwenvl.model.families import FAMILIES
from qwenvl.model.preprocessing import PreprocessingSettings, checkpoint_budget, save_preprocessing
from qwenvl.train.arguments import DataArguments


VIDEO = str(Path(__file__).resolve().parents[1] / "qwen-vl-finetune/qwenvl/data/demo/videos/moving_red.mp4")
PATCH, MERGE = 16, 2  # qwen3_vl


def _grid_view(grid) -> tuple[int, int, int, int]:
    """(frames, width, height, visual tokens) of a (t, h, w) grid of patches."""
    t, h, w = (int(v) for v in grid)
    return t * 2, w * PATCH, h * PATCH, t * h * w // MERGE**2


def _demo_view(note: str) -> tuple[int, int, int, int]:
    m = re.search(r"(?:(\d+) frames of )?(\d+)x(\d+), (\d+) visual tokens", note)
    assert m, note
    return int(m.group(1) or 1), int(m.group(2)), int(m.group(3)), int(m.group(4))


def _views(checkpoint: str, image: str, tmp_path: Path, capsys) -> dict[str, dict[str, tuple]]:
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "video", "video": VIDEO},
                                                 {"type": "text", "text": "What happens?"}]}]  # fmt: skip
    views: dict[str, dict[str, tuple]] = {}
    # The demo: its upload notes, from the backend it builds for the checkpoint.
    backend = load_backend(BackendConfig.from_args(demo_mod.parse_args(["-c", checkpoint, "--cpu-only"])))
    notes = [demo_mod.describe_upload(image, "image", backend), demo_mod.describe_upload(VIDEO, "video", backend)]
    views["demo"] = {"image": _demo_view(notes[0])[1:], "video": _demo_view(notes[1])}
    # MMMU: the budget its infer builds from --model-path (no pixel flags), fed through the hf backend.
    budget, _ = checkpoint_budget(checkpoint, max_pixels=None, min_pixels=None)
    mmmu = load_backend("hf", checkpoint, budget=budget, device="cpu", model=backend.model)
    inputs = mmmu.inputs([conversation])
    views["mmmu"] = {"image": _grid_view([1, *inputs["image_grid_thw"][0][1:]])[1:],
                     "video": _grid_view(inputs["video_grid_thw"][0])}  # fmt: skip
    # inspect_video's report.
    report_path = tmp_path / f"report-{Path(checkpoint).name}.json"
    with pytest.raises(SystemExit) as exit_info:
        inspect_video(["--model_name_or_path", checkpoint, "--video", VIDEO, "--json", str(report_path)])
    assert exit_info.value.code == 0, capsys.readouterr()
    report = json.loads(report_path.read_text())
    views["inspect_video"] = {"video": (report["frames"], *report["size"], report["visual_tokens"])}
    if report["training_defaults"]:
        t = report["training_defaults"]
        views["inspect_video (training defaults)"] = {"video": (t["frames"], *t["size"], t["visual_tokens"])}
    return views


def _training_view(checkpoint: str, budget: MediaBudget, image: str) -> dict[str, tuple]:
    from qwenvl.model.loader import load_processor

    encoder = SampleEncoder(load_processor(checkpoint), FAMILIES["qwen3_vl"], budget)
    sample = encoder([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "video", "video": VIDEO},
                                                   {"type": "text", "text": "What happens?"}]},
                      {"role": "assistant", "content": "A red square moves."}], "s")  # fmt: skip
    return {
        "image": _grid_view([1, *sample["image_grid_thw"][0][1:]])[1:],
        "video": _grid_view(sample["video_grid_thw"][0]),
    }


def test_every_tool_sees_the_same_media(tiny_checkpoints, tmp_path, capsys):
    image = str(tmp_path / "photo.png")
    Image.new("RGB", (900, 500), (30, 120, 200)).save(image)
    train_flags = MediaBudget.from_attrs(DataArguments())  # what train_qwen.py uses with its default flags
    assert train_flags == TRAINING_BUDGET

    # 1. A fine-tuned checkpoint with saved settings (an unusual budget: nobody's default).
    tuned = str(tmp_path / "tuned")
    shutil.copytree(tiny_checkpoints["qwen3_vl"], tuned)
    saved = TRAINING_BUDGET.overridden(max_pixels=40 * 32 * 32, video_max_frames=6, video_fps=8.0, video_max_pixels=48 * 32 * 32,
                                       video_min_pixels=16 * 32 * 32)  # fmt: skip
    save_preprocessing(PreprocessingSettings("qwen3_vl", PATCH, saved), tuned)
    views = _views(tuned, image, tmp_path, capsys)
    training = _training_view(tuned, saved, image)  # training with these flags wrote these settings
    for tool, view in views.items():
        for kind, value in view.items():
            assert value == training[kind], (tool, kind, value, training[kind])
    assert training["video"][0] == 6  # the saved frame cap, not a default

    # 2. A released checkpoint without saved settings: every inference tool uses qwen_vl_utils' defaults, and
    # inspect_video also reports what training with the default flags would see (and then save).
    plain = str(tiny_checkpoints["qwen3_vl"])
    views = _views(plain, image, tmp_path, capsys)
    for tool in ("mmmu", "inspect_video"):
        for kind, value in views[tool].items():
            assert value == views["demo"][kind], (tool, kind)
    training = _training_view(plain, train_flags, image)
    assert views["inspect_video (training defaults)"]["video"] == training["video"]
    assert training["video"] != views["demo"]["video"]  # the two defaults really differ on this clip
