"""The quick-start job on the embedded default: a tiny Qwen3-VL checkpoint, built offline, answering about an
image and a video through the same path a real checkpoint uses (qwen_vl_utils -> processor -> generate).

Run (no downloads)::

    python -m qwenvl.quickstart [--out runs/quickstart] [--family qwen3_vl]

The fine-tuning issue turns this into the full job (train on a generated dataset, before/after accuracy).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from PIL import Image, ImageDraw

from qwenvl.model.families import FAMILIES, get_family
from qwenvl.model.tiny import write_tiny_checkpoint


logger = logging.getLogger(__name__)

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220)}


def shape_image(color: str, size: int = 96) -> Image.Image:
    """A white picture with one colored circle."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=COLORS[color])
    return image


def main(argv: list[str] | None = None) -> None:
    import torch

    from qwen_vl_utils import process_vision_info
    from qwenvl.model.loader import load_model, load_processor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="working folder")
    parser.add_argument("--family", default="qwen3_vl", choices=sorted(FAMILIES))
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    family = get_family(args.family)
    started = time.monotonic()
    ckpt = write_tiny_checkpoint(args.family, out / f"tiny-{args.family}")
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    image_path = media / "red_circle.png"
    shape_image("red", 200).save(image_path)
    frames = [shape_image(c, 96) for c in ("red", "green", "blue", "red")]

    model = load_model(str(ckpt), dtype="float32")
    processor = load_processor(str(ckpt))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(image_path), "max_pixels": 64 * family.image_factor**2},
                {"type": "video", "video": frames, "sample_fps": 2.0},
                {"type": "text", "text": "What color is the shape?"},
            ],
        }
    ]
    images, videos, video_kwargs = process_vision_info(
        messages, return_video_kwargs=True, return_video_metadata=True, image_patch_size=family.patch_size
    )
    videos, metadata = zip(*videos)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(
        text=[text],
        images=images,
        videos=list(videos),
        video_metadata=list(metadata),
        do_resize=False,
        return_tensors="pt",
        **video_kwargs,
    )
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    answer = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]

    print(f"checkpoint        {ckpt} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} params)")
    print(
        f"image             {image_path} -> {images[0].size[0]}x{images[0].size[1]}, grid {inputs['image_grid_thw'].tolist()}"
    )
    print(
        f"video             {len(frames)} frames -> {tuple(videos[0].shape)}, grid {inputs['video_grid_thw'].tolist()}"
    )
    print(f"prompt tokens     {inputs['input_ids'].shape[1]}")
    print(f"answer (random weights, so not meaningful yet): {answer!r}")
    print(f"done in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
