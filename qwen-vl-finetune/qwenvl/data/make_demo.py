"""Writes the bundled demo dataset (qwenvl/data/demo/): small generated pictures of coloured shapes, a short
generated video, annotations in upstream's format (json and jsonl) and in the OpenAI ``messages`` format, and
the registry entries ``demo_images``, ``demo_video`` and ``demo_messages``.

Run (the output is committed; re-running reproduces it)::

    python -m qwenvl.data.make_demo [--out qwen-vl-finetune/qwenvl/data/demo]
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from qwenvl.data.registry import DEMO_DIR


COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(color: str, shape: str, size: tuple[int, int] = (160, 120), offset: int = 0) -> Image.Image:
    """A white picture with one coloured shape."""
    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    box = (w // 4 + offset, h // 4, 3 * w // 4 + offset, 3 * h // 4)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return image


def write_video(path: Path, color: str, frames: int = 16, fps: int = 8, size: tuple[int, int] = (128, 96)) -> None:
    """An H.264 clip of a shape moving left to right, written with PyAV (no ffmpeg binary needed)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "8", "crf": "28"}
        for i in range(frames):
            image = draw_shape(color, "circle", size, offset=(i - frames // 2) * 3)
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def main(argv: list[str] | None = None) -> None:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    parser.add_argument("--out", default=str(DEMO_DIR))
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)

    items = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle"), ("red", "square")]
    for i, (color, shape) in enumerate(items):
        fmt = "jpg" if i % 2 else "png"
        draw_shape(color, shape).save(out / "images" / f"{i}_{color}_{shape}.{fmt}")
    names = sorted(p.name for p in (out / "images").iterdir())

    single = []
    for name in names:
        _, color, shape = Path(name).stem.split("_")
        single.append(
            {
                "id": f"img-{Path(name).stem}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the shape?"},
                    {"from": "gpt", "value": f"The {shape} is {color}."},
                ],
            }
        )
    two = {
        "id": "img-pair",
        "image": [names[0], names[1]],
        "conversations": [
            {"from": "human", "value": "Compare <image> and <image>."},
            {"from": "gpt", "value": "The first shape is a red circle and the second a blue square."},
            {"from": "human", "value": "Which one is red?"},
            {"from": "gpt", "value": "The first one."},
        ],
    }
    (out / "single_images.json").write_text(json.dumps(single + [two], indent=1) + "\n")

    write_video(out / "videos" / "moving_red.mp4", "red")
    write_video(out / "videos" / "moving_blue.mp4", "blue")
    with (out / "video.jsonl").open("w") as f:
        for color in ("red", "blue"):
            record = {
                "id": f"vid-{color}",
                "video": f"moving_{color}.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhich way does the shape move?"},
                    {"from": "gpt", "value": f"The {color} circle moves from left to right."},
                ],
            }
            f.write(json.dumps(record) + "\n")

    messages = [
        {
            "id": "msg-image-video",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": f"images/{names[2]}"},
                        {"type": "video", "video": "videos/moving_red.mp4"},
                        {"type": "text", "text": "Is the picture's shape the same colour as the video's?"},
                    ],
                },
                {"role": "assistant", "content": "No: the picture is green, the video red."},
            ],
        },
        {
            "id": "msg-placeholders",
            "images": [f"images/{names[3]}"],
            "messages": [
                {"role": "user", "content": "<image>What shape is this?"},
                {"role": "assistant", "content": [{"type": "text", "text": "A yellow circle."}]},
            ],
        },
        {
            "id": "msg-text-only",
            "messages": [
                {"role": "user", "content": "Name a primary colour."},
                {"role": "assistant", "content": "Blue."},
            ],
        },
    ]
    with (out / "messages.jsonl").open("w") as f:
        for record in messages:
            f.write(json.dumps(record) + "\n")

    (out / "registry.yaml").write_text(
        "# Bundled demo datasets (written by python -m qwenvl.data.make_demo). Paths are relative to this file.\n"
        "datasets:\n"
        "  demo_images:\n    annotation_path: single_images.json\n    media_root: images\n"
        "  demo_video:\n    annotation_path: video.jsonl\n    media_root: videos\n"
        "  demo_messages:\n    annotation_path: messages.jsonl\n    media_root: .\n"
    )
    print(f"demo dataset written to {out}")


if __name__ == "__main__":
    main()
