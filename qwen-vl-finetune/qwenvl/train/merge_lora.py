"""Merge a LoRA adapter (a training output dir or checkpoint) into its base model and save a standalone model
with processor files and preprocessing settings, loadable with AutoModelForImageTextToText / AutoProcessor.

Run::

    python -m qwenvl.train.merge_lora --adapter out/ --out merged/ [--base Qwen/Qwen3-VL-8B-Instruct] [--dtype bfloat16]
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from qwenvl.cli import UserError
from qwenvl.model.loader import load_model, load_processor
from qwenvl.model.preprocessing import FILENAME as PREPROCESSING_FILE


logger = logging.getLogger(__name__)


def merge_lora(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "auto") -> Path:
    """Load ``base`` (default: the adapter's ``base_model_name_or_path``), apply the adapter, merge, save."""
    from peft import PeftModel

    adapter, out = Path(adapter), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the merged model")
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise UserError(f"{adapter} has no adapter_config.json; pass the output dir of a --lora_enable run")
    base = base or json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config_path} names no base model; pass --base")
    model = load_model(base, dtype=dtype, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.config.use_cache = True
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror}); give a writable folder") from None
    model.save_pretrained(out)
    # The processor saved with the adapter is the one it was trained with; fall back to the base model's.
    processor_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base)
    load_processor(str(processor_source)).save_pretrained(out)
    if (adapter / PREPROCESSING_FILE).is_file():
        shutil.copy(adapter / PREPROCESSING_FILE, out / PREPROCESSING_FILE)
    logger.info("merged %s into %s -> %s", adapter, base, out)
    return out


def main(argv: list[str] | None = None) -> None:
    from qwenvl.cli import StrictParser, run_tool

    parser = StrictParser(description=__doc__)
    parser.add_argument("--adapter", required=True, help="folder with adapter_config.json (a training output)")
    parser.add_argument("--out", required=True, help="folder for the merged model")
    parser.add_argument("--base", default=None, help="base model (default: from adapter_config.json)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        print(f"merged model written to {merge_lora(args.adapter, args.out, args.base, args.dtype)}")
        return 0

    sys.exit(run_tool(body))


if __name__ == "__main__":
    main()
