"""Show how a video is sampled and tokenised, and check that training and inference see it the same way.

For one video and a checkpoint's processor it prints:

* the probe (frames, fps, duration, display size) and the decoder that reads it;
* the sampled frame indices with their times in seconds, grouped as the model's temporal patches see them (two
  frames per group), the resized frame size, the grid and the number of visual tokens;
* the prompt's token layout (for Qwen3-VL the ``<t seconds>`` text before each group), runs of pad tokens
  shortened;

and then encodes the same one-turn conversation twice, with the training encoder (``SampleEncoder``, what
``train_qwen.py`` feeds the model) and with the inference path (``encode_prompts``, what every backend of the
demo and the evaluations feeds it), and compares token ids, grids and pixels. Any difference means the model would
be trained on one rendering of a video and asked about another; the command then exits with status 1. The budget
is the one the demo and the evaluations use for this checkpoint (``checkpoint_budget``: its
``qwenvl_preprocessing.json``, else qwen_vl_utils' defaults, then these flags); for a checkpoint without saved
settings it also says how training with the default flags would sample the video.

Run::

    python -m qwenvl.data.inspect_video --model_name_or_path Qwen/Qwen3-VL-8B-Instruct --video clip.mp4 \\
        [--video_fps 2] [--video_max_frames 32] [--video_max_pixels 200704] [--json report.json]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qwenvl.cli import StrictParser, run_tool
from qwenvl.model.budget import MediaBudget


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(description=__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--video", required=True, help="a local video file (download a URL first)")
    parser.add_argument("--question", default="Describe this video.")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    MediaBudget.add_arguments(parser)  # unset flags keep the checkpoint's budget (as the demo and evals use it)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from qwenvl.data.video_report import inspect

        return inspect(args)

    sys.exit(run_tool(body))


def __getattr__(name: str) -> Any:  # the report's functions, importable from here as before
    from qwenvl.data import video_report

    try:
        return getattr(video_report, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


if __name__ == "__main__":
    main()
