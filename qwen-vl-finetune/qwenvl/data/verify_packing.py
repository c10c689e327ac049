"""Check, before a long run, that packed rows give every sample exactly what it gets alone.

Takes ``--samples`` records of a training mix (a seeded draw across it, or ``--pick first``), encodes them with
the same encoder and pixel budgets as ``train_qwen.py``, packs them with the same planner and collator, and runs
the real model twice per sample:

* packed: the pack as training sees it (one row, our 4-row M-RoPE ``position_ids`` restarting per sample);
* alone: the sample on its own through the model's own inference path (attention mask, no ``position_ids``, so the
  model computes the M-RoPE positions itself, as ``generate`` does).

For each sample it prints the loss both ways and the largest logit difference, and fails (exit status 1) when a
loss differs by more than the tolerance. That catches both bug classes behind packed-training reports: samples
seeing each other (attention not isolated) and wrong per-sample positions (image/video grids, timestamps). A
control run of the first pack with row 0 of ``position_ids`` not restarting shows how large a real leak is.
``--dump`` writes each pack's layout (sample spans, ``cu_seqlens``, the 4 x L position ids, vision token spans and
grids) as JSON.

Run::

    python -m qwenvl.data.verify_packing --model_name_or_path Qwen/Qwen3-VL-8B-Instruct \\
        --dataset_use my_mix --samples 8 [--max_packed_tokens 8192] [--attn_implementation sdpa] \\
        [--dtype bfloat16] [--device cuda] [--dump packing.json] [--max_pixels 451584 ...]
"""

from __future__ import annotations

import argparse
import sys

from qwenvl.cli import StrictParser, run_tool
from qwenvl.model.budget import TRAINING_BUDGET, MediaBudget


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(description=__doc__)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--dataset_use", required=True, help="as for train_qwen.py: registry names or files, name%%N")
    parser.add_argument("--dataset_registry", default=None)
    parser.add_argument(
        "--media_root", default=None, help="media root of annotation files given directly (default: their folder)"
    )
    parser.add_argument("--samples", type=int, default=8, help="how many records to check")
    parser.add_argument(
        "--pick", choices=["random", "first"], default="random", help="seeded draw across the mix, or the first ones"
    )
    parser.add_argument("--max_packed_tokens", type=int, default=8192)
    parser.add_argument(
        "--attn_implementation", choices=["auto", "sdpa", "flash_attention_2", "eager"], default="auto"
    )
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--tolerance", type=float, default=None, help="largest |loss packed - loss alone| accepted")
    parser.add_argument("--seed", type=int, default=42, help="seed of %%N sampling")
    parser.add_argument("--no_control", action="store_true", help="skip the leak control run")
    parser.add_argument(
        "--use_cache",
        action="store_true",
        help="run the packed rows with use_cache=True, as a trainer that leaves the checkpoint's default would "
        "(train_qwen.py turns it off; this shows why)",
    )
    parser.add_argument("--dump", default=None, help="write the pack layouts and results as JSON here")
    MediaBudget.add_arguments(parser, TRAINING_BUDGET)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from qwenvl.data.packcheck import verify

        return verify(args)

    sys.exit(run_tool(body))


if __name__ == "__main__":
    main()
