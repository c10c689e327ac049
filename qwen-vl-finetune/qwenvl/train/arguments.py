"""Argument dataclasses of ``train_qwen.py`` (upstream's flag names), their cross-flag checks, and ``--config``.

Every flag can also come from a YAML file: ``--config recipe.yaml`` with keys named like the flags; flags given
on the command line win over the file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

import transformers


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="Qwen/Qwen2.5-VL-3B-Instruct", metadata={"help": "hub id or local folder of a Qwen-VL checkpoint"}
    )
    tune_mm_vision: bool | None = field(
        default=None,
        metadata={"help": "train the vision tower fully (default: False; with LoRA it is added to modules_to_save)"},
    )
    tune_mm_mlp: bool | None = field(
        default=None,
        metadata={"help": "train the merger incl. Qwen3-VL deepstack mergers fully (default: True without LoRA)"},
    )
    tune_mm_llm: bool | None = field(
        default=None, metadata={"help": "train the LLM fully (default: True without LoRA; not allowed with LoRA)"}
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = field(
        default="auto", metadata={"help": "auto = flash_attention_2 when installed and on GPU, else sdpa"}
    )


@dataclass
class DataArguments:
    dataset_use: str = field(
        default="", metadata={"help": "comma-separated registry names or annotation files; name%N samples N%"}
    )
    eval_dataset_use: str = field(default="", metadata={"help": "datasets for evaluation during training (eval loss)"})
    dataset_registry: str | None = field(default=None, metadata={"help": "YAML file registering more datasets"})
    data_flatten: bool = field(default=False, metadata={"help": "concatenate each batch into one padding-free row"})
    data_packing: bool = field(
        default=False, metadata={"help": "pack samples (best-fit-decreasing) into rows of --max_packed_tokens tokens"}
    )
    max_packed_tokens: int = field(default=8192, metadata={"help": "capacity of a pack (with --data_packing)"})
    max_pixels: int = field(default=28 * 28 * 576, metadata={"help": "image pixel budget (max)"})
    min_pixels: int = field(default=28 * 28 * 16, metadata={"help": "image pixel budget (min)"})
    video_max_pixels: int = field(default=28 * 28 * 1024, metadata={"help": "per-frame pixel budget (max)"})
    video_min_pixels: int = field(default=28 * 28 * 256, metadata={"help": "per-frame pixel budget (min)"})
    video_fps: float = field(default=2.0, metadata={"help": "frames sampled per second of video"})
    video_max_frames: int = field(default=8, metadata={"help": "most frames sampled per video"})
    video_min_frames: int = field(default=4, metadata={"help": "fewest frames sampled per video"})
    overlong: Literal["error", "skip", "truncate_text"] = field(
        default="error", metadata={"help": "what to do with samples longer than --model_max_length"}
    )
    bad_media: Literal["error", "skip"] = field(
        default="error", metadata={"help": "what to do with samples whose media fail to load (skip: quarantine.jsonl)"}
    )
    data_seed_sampling: int = field(default=42, metadata={"help": "seed of name%N sampling (the same on every rank)"})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None, metadata={"help": "hub cache folder"})
    optim: str = field(default="adamw_torch", metadata={"help": "optimizer name (transformers)"})
    model_max_length: int = field(default=8192, metadata={"help": "longest sample in tokens (see --overlong)"})
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the merger (default: --learning_rate)"}
    )
    vision_tower_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the vision tower (default: --learning_rate)"}
    )
    lora_enable: bool = field(
        default=False, metadata={"help": "train LoRA adapters on the LLM instead of the full LLM"}
    )
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (0.0 is honoured)"})
    lora_target_mlp: bool = field(default=True, metadata={"help": "LoRA also on the LLM MLP projections"})
    lora_vision: bool = field(default=False, metadata={"help": "LoRA also on the vision tower's linear layers"})
    lora_merger: bool = field(default=False, metadata={"help": "LoRA also on the merger's linear layers"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False for multimodal batches"})


def resolve_components(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Fill the tune_* defaults and check every cross-flag rule, naming the flags (before any weights load)."""
    lora = training_args.lora_enable
    if lora and model_args.tune_mm_llm:
        raise ValueError(
            "--tune_mm_llm True and --lora_enable True both train the LLM; drop --tune_mm_llm (LoRA trains the LLM) "
            "or drop --lora_enable for a full fine-tune"
        )
    if model_args.tune_mm_vision is None:
        model_args.tune_mm_vision = False
    if model_args.tune_mm_mlp is None:
        model_args.tune_mm_mlp = not lora
    if model_args.tune_mm_llm is None:
        model_args.tune_mm_llm = not lora
    if training_args.vision_tower_lr is not None and not (model_args.tune_mm_vision or training_args.lora_vision):
        raise ValueError(
            "--vision_tower_lr is set but the vision tower is frozen; add --tune_mm_vision True or --lora_vision True"
        )
    if training_args.mm_projector_lr is not None and not (model_args.tune_mm_mlp or training_args.lora_merger):
        raise ValueError(
            "--mm_projector_lr is set but the merger is frozen; add --tune_mm_mlp True or --lora_merger True"
        )
    if (training_args.lora_vision or training_args.lora_merger) and not lora:
        raise ValueError("--lora_vision / --lora_merger need --lora_enable True")
    if lora and model_args.tune_mm_vision and training_args.lora_vision:
        raise ValueError(
            "--tune_mm_vision True (full) and --lora_vision True (LoRA) both target the vision tower; pick one"
        )
    if lora and model_args.tune_mm_mlp and training_args.lora_merger:
        raise ValueError("--tune_mm_mlp True (full) and --lora_merger True (LoRA) both target the merger; pick one")
    if not (lora or model_args.tune_mm_vision or model_args.tune_mm_mlp or model_args.tune_mm_llm):
        raise ValueError(
            "nothing would be trained: set --tune_mm_llm / --tune_mm_mlp / --tune_mm_vision True or --lora_enable True"
        )
    if lora and training_args.lora_r <= 0:
        raise ValueError(f"--lora_r must be positive, got {training_args.lora_r}")
    if not 0.0 <= training_args.lora_dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {training_args.lora_dropout}")


def check_data_args(data_args: DataArguments, training_args: TrainingArguments) -> None:
    if not data_args.dataset_use:
        raise ValueError("--dataset_use is empty; name the datasets to train on (e.g. --dataset_use demo_images)")
    if data_args.data_packing and data_args.max_packed_tokens < training_args.model_max_length:
        raise ValueError(
            f"--max_packed_tokens ({data_args.max_packed_tokens}) is smaller than --model_max_length "
            f"({training_args.model_max_length}); a sample that fits the limit would not fit a pack"
        )
    if training_args.eval_strategy != "no" and not data_args.eval_dataset_use:
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        raise ValueError(f"--eval_strategy {strategy} needs --eval_dataset_use")
    if training_args.remove_unused_columns:
        raise ValueError("--remove_unused_columns True would drop the image tensors from batches; leave it False")


def config_file_args(argv: list[str]) -> list[str]:
    """Expand ``--config file.yaml`` into flags placed before the other command-line flags (which then win)."""
    if "--config" not in argv:
        return argv
    import yaml

    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ValueError("--config needs a YAML file path")
    path = argv[i + 1]
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values")
    expanded: list[str] = []
    for key, value in data.items():
        if isinstance(value, (list, tuple)):
            expanded += [f"--{key}", *[str(v) for v in value]]
        else:
            expanded += [f"--{key}", str(value)]
    return expanded + argv[:i] + argv[i + 2 :]


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse flags (and ``--config``) into the three dataclasses and run the cross-flag checks."""
    argv = config_file_args(list(sys.argv[1:] if argv is None else argv))
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    resolve_components(model_args, training_args)
    check_data_args(data_args, training_args)
    return model_args, data_args, training_args
