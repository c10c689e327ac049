"""Argument dataclasses of ``train_qwen.py`` (upstream's flag names), their cross-flag checks, and ``--config``.

Every flag can also come from a YAML file: ``--config recipe.yaml`` (or the YAML file as first argument) with keys
named like the flags; flags given on the command line win over the file.

Flags are checked in two steps, so that ``--help`` and usage mistakes answer in well under two seconds: a light
parser that knows every flag name (ours, and transformers' ``TrainingArguments`` read from its source without
importing it) refuses abbreviations and unknown flags or YAML keys, naming the closest valid flag, and values of
the wrong kind (a number, a boolean, a choice, a ``name%N`` percentage); only then is transformers imported and the
values parsed into the dataclasses. Every boolean flag also takes the bare form (``--bf16`` = ``--bf16 True``).
``TrainingArguments`` (transformers' class plus our fields) is therefore built on first use. Without a GPU it
chooses the CPU settings unasked (:func:`choose_cpu_settings`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import logging
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from qwenvl.cli import StrictParser, UserError, closest
from qwenvl.model.budget import TRAINING_BUDGET


logger = logging.getLogger(__name__)


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
        default=None,
        metadata={
            "help": "train the LLM fully (default: True without LoRA; with LoRA ignored, the adapters train it)"
        },
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = field(
        default="auto", metadata={"help": "auto = flash_attention_2 when installed and on GPU, else sdpa"}
    )


@dataclass
class DataArguments:
    dataset_use: str = field(
        default="",
        metadata={"help": "comma-separated registry names or annotation files; name%%N samples N%% (see README)"},
    )
    eval_dataset_use: str = field(default="", metadata={"help": "datasets for evaluation during training (eval loss)"})
    dataset_registry: str | None = field(default=None, metadata={"help": "YAML file registering more datasets"})
    data_flatten: bool = field(default=False, metadata={"help": "concatenate each batch into one padding-free row"})
    data_packing: bool = field(
        default=False, metadata={"help": "pack samples (best-fit-decreasing) into rows of --max_packed_tokens tokens"}
    )
    max_packed_tokens: int = field(default=8192, metadata={"help": "capacity of a pack (with --data_packing)"})
    # Budget defaults come from TRAINING_BUDGET (qwenvl/model/budget.py), defined once for every tool.
    max_pixels: int = field(default=TRAINING_BUDGET.max_pixels, metadata={"help": "image pixel budget (max)"})
    min_pixels: int = field(default=TRAINING_BUDGET.min_pixels, metadata={"help": "image pixel budget (min)"})
    video_max_pixels: int = field(
        default=TRAINING_BUDGET.video_max_pixels, metadata={"help": "per-frame pixel budget (max)"}
    )
    video_min_pixels: int = field(
        default=TRAINING_BUDGET.video_min_pixels, metadata={"help": "per-frame pixel budget (min)"}
    )
    video_fps: float = field(
        default=TRAINING_BUDGET.video_fps, metadata={"help": "frames sampled per second of video"}
    )
    video_max_frames: int = field(
        default=TRAINING_BUDGET.video_max_frames, metadata={"help": "most frames sampled per video"}
    )
    video_min_frames: int = field(
        default=TRAINING_BUDGET.video_min_frames, metadata={"help": "fewest frames sampled per video"}
    )
    overlong: Literal["error", "skip", "truncate_text"] = field(
        default="error", metadata={"help": "what to do with samples longer than --model_max_length"}
    )
    bad_media: Literal["error", "skip"] = field(
        default="error", metadata={"help": "what to do with samples whose media fail to load (skip: quarantine.jsonl)"}
    )
    bad_records: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "what to do with invalid annotation records (skip: log each, train on the rest)"},
    )
    media_root: str | None = field(
        default=None,
        metadata={"help": "media root of annotation files given directly in --dataset_use (default: their folder)"},
    )
    data_seed_sampling: int = field(default=42, metadata={"help": "seed of name%%N sampling (the same on every rank)"})
    media_cache: str | None = field(
        default=None,
        metadata={
            "help": "folder of a media cache: resized images and videos stored at first use (or by qwenvl cache "
            "build), so later epochs skip decoding; shared safely by workers, ranks and nodes"
        },
    )
    media_cache_max_gb: float | None = field(
        default=None, metadata={"help": "size bound of --media_cache in GB (least recently used entries go first)"}
    )
    base_interval: float | None = field(
        default=None,
        metadata={"help": "accepted for upstream's scripts and ignored (it only served upstream's offline packer)"},
    )


@dataclass
class QwenTrainingFields:
    """Our fields of ``TrainingArguments`` (added to transformers' own; see :func:`training_arguments_class`)."""

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
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "upstream's flag: warm-up steps = ceil(ratio x total steps); or give --warmup_steps"},
    )
    # DataLoader defaults that keep a GPU step from waiting for its batch (benchmarks/RESULTS.md, "Feeding the GPU").
    dataloader_num_workers: int = field(
        default=4, metadata={"help": "dataloader worker processes per rank (0: load in the training process)"}
    )
    dataloader_persistent_workers: bool = field(
        default=True,
        metadata={"help": "keep the workers between epochs (no restart, no cold first batch); off with 0 workers"},
    )


def resolve_components(model_args: ModelArguments, training_args: Any) -> None:
    """Fill the tune_* defaults and check every cross-flag rule, naming the flags (before any weights load)."""
    lora = training_args.lora_enable
    if lora and model_args.tune_mm_llm:
        # Upstream's sft_30a3b_lora.sh passes both; upstream ignores the tune flags under LoRA.
        logger.warning(
            "--tune_mm_llm True with --lora_enable True: the LLM trains through its LoRA adapters, its base weights "
            "stay frozen (as upstream does); drop --lora_enable for a full fine-tune of the LLM"
        )
        model_args.tune_mm_llm = False
    if model_args.tune_mm_vision is None:
        model_args.tune_mm_vision = False
    if model_args.tune_mm_mlp is None:
        model_args.tune_mm_mlp = not lora
    if model_args.tune_mm_llm is None:
        model_args.tune_mm_llm = not lora
    if training_args.vision_tower_lr is not None and not (model_args.tune_mm_vision or training_args.lora_vision):
        raise UserError(
            "--vision_tower_lr is set but the vision tower is frozen; add --tune_mm_vision True or --lora_vision True"
        )
    if training_args.mm_projector_lr is not None and not (model_args.tune_mm_mlp or training_args.lora_merger):
        raise UserError(
            "--mm_projector_lr is set but the merger is frozen; add --tune_mm_mlp True or --lora_merger True"
        )
    if (training_args.lora_vision or training_args.lora_merger) and not lora:
        raise UserError("--lora_vision / --lora_merger need --lora_enable True")
    if lora and model_args.tune_mm_vision and training_args.lora_vision:
        raise UserError(
            "--tune_mm_vision True (full) and --lora_vision True (LoRA) both target the vision tower; pick one"
        )
    if lora and model_args.tune_mm_mlp and training_args.lora_merger:
        raise UserError("--tune_mm_mlp True (full) and --lora_merger True (LoRA) both target the merger; pick one")
    if not (lora or model_args.tune_mm_vision or model_args.tune_mm_mlp or model_args.tune_mm_llm):
        raise UserError(
            "nothing would be trained: set --tune_mm_llm / --tune_mm_mlp / --tune_mm_vision True or --lora_enable True"
        )
    if lora and training_args.lora_r <= 0:
        raise UserError(f"--lora_r must be positive, got {training_args.lora_r}")
    if not 0.0 <= training_args.lora_dropout < 1.0:
        raise UserError(f"--lora_dropout must be in [0, 1), got {training_args.lora_dropout}")


def check_data_args(data_args: DataArguments, training_args: Any) -> None:
    if not data_args.dataset_use:
        raise UserError("--dataset_use is empty; name the datasets to train on (e.g. --dataset_use demo_images)")
    if data_args.data_packing and data_args.max_packed_tokens < training_args.model_max_length:
        raise UserError(
            f"--max_packed_tokens ({data_args.max_packed_tokens}) is smaller than --model_max_length "
            f"({training_args.model_max_length}); a sample that fits the limit would not fit a pack"
        )
    if training_args.eval_strategy != "no" and not data_args.eval_dataset_use:
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        raise UserError(f"--eval_strategy {strategy} needs --eval_dataset_use")
    if data_args.media_cache_max_gb is not None and data_args.media_cache is None:
        raise UserError("--media_cache_max_gb is set without --media_cache; add --media_cache DIR")
    if data_args.media_cache_max_gb is not None and data_args.media_cache_max_gb <= 0:
        raise UserError(f"--media_cache_max_gb must be positive, got {data_args.media_cache_max_gb}")
    if training_args.remove_unused_columns:
        raise UserError("--remove_unused_columns True would drop the image tensors from batches; leave it False")


def _transformers_training_fields() -> list[tuple[str, str, Any, str]]:
    """``(name, annotation, default, help)`` of every field of transformers' ``TrainingArguments``, read from its
    source with ``ast`` (importing it costs seconds). Defaults that are not literals come back as None."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("transformers is not installed; pip install 'qwenvl[train]'")
    source = Path(list(spec.submodule_search_locations)[0]) / "training_args.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments")
    out = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        default, help_text = None, ""
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
            for kw in value.keywords:
                try:
                    if kw.arg == "default":
                        default = ast.literal_eval(kw.value)
                    elif kw.arg == "metadata":
                        help_text = ast.literal_eval(kw.value).get("help", "")
                except (ValueError, TypeError, SyntaxError):
                    pass
        elif value is not None:
            try:
                default = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):
                pass
        out.append((node.target.id, ast.unparse(node.annotation), default, help_text))
    return out


OURS = (ModelArguments, DataArguments, QwenTrainingFields)


def light_parser(prog: str | None = None, extra: tuple[type, ...] = ()) -> StrictParser:
    """A parser that knows every flag's name, help and value kind without importing transformers: a value of the
    wrong kind (``--learning_rate abc``, ``--bf16 maybe``) is refused here, in well under two seconds. Values stay
    text (:func:`canonical_argv` hands them to transformers' parser, which builds the dataclasses). ``extra``: more
    argument dataclasses (a method's, e.g. DPO), one group each."""
    parser = StrictParser(
        prog=prog,
        usage="%(prog)s [--config YAML] --model_name_or_path M --dataset_use D --output_dir OUT [flags]",
        description="Fine-tune a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE) with the HF Trainer."
        "\n\nRun: torchrun --nproc_per_node N qwenvl/train/train_qwen.py "
        "--model_name_or_path ... --dataset_use ... --output_dir ...  (or qwenvl train recipe.yaml)"
        "\n\nA boolean flag alone means True (--bf16 is --bf16 True).",
    )
    parser.add_argument("--config", metavar="YAML", help="read flags from a YAML file (command-line flags win)")
    ours: set[str] = set()
    names = ("model", "data", "training (qwenvl)") + tuple(getattr(t, "GROUP", t.__name__) for t in extra)
    for group_name, dtype in zip(names, OURS + tuple(extra)):
        group = parser.add_argument_group(group_name)
        for f in fields(dtype):
            ours.add(f.name)
            default = f.default if f.default is not MISSING else None
            text = f.metadata.get("help", "") + (f" (default {default})" if default not in (None, "") else "")
            _add_flag(group, f.name, _annotation_text(dtype, f), text, default is True)
    group = parser.add_argument_group("training (transformers.TrainingArguments)")
    for name, annotation, default, help_text in _transformers_training_fields():
        if name in ours:
            continue
        text = " ".join(help_text.split()) + (f" (default {default})" if default not in (None, "") else "")
        _add_flag(group, name, annotation, text, default is True and annotation.startswith("bool"))
    return parser


def _annotation_text(dtype: type, f: Any) -> str:
    """A field's annotation as written (``"bool | None"``): transformers' parser replaces ``Field.type`` with the
    resolved type once it has parsed, so the class's own annotations are read first."""
    annotation = dtype.__dict__.get("__annotations__", {}).get(f.name, f.type)
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _escape_percent(text: str) -> str:
    """Help text for argparse, which %-formats it: every ``%`` doubled once (transformers' help is already
    escaped for its own parser, ours is not)."""
    return text.replace("%%", "%").replace("%", "%%")


_TRUE = ("yes", "true", "t", "y", "1")
_FALSE = ("no", "false", "f", "n", "0")


def _checker(kind: str, check: Any) -> Any:
    """An argparse ``type`` that refuses a value ``check`` refuses and keeps the text; named ``kind`` so argparse's
    message reads ``invalid float value: 'abc'``."""

    def convert(text: str) -> str:
        check(text)
        return text

    convert.__name__ = kind
    return convert


def _check_bool(text: str) -> None:
    if text.lower() not in _TRUE + _FALSE:
        raise ValueError(text)


def _value_kind(annotation: str) -> tuple[str, Any, Any]:
    """``(metavar, argparse type, choices)`` of a field from its annotation text (``"float | None"``,
    ``"Literal['a', 'b']"``, ``"IntervalStrategy | str"``); anything that admits text is taken as text."""
    if annotation.startswith("Optional[") and annotation.endswith("]"):
        annotation = annotation[len("Optional[") : -1]
    parts = {p.strip() for p in annotation.split("|")} - {"None"}
    if len(parts) == 1 and next(iter(parts)).startswith("Literal["):
        choices = ast.literal_eval("[" + next(iter(parts))[len("Literal[") : -1] + "]")
        return "{" + ",".join(map(str, choices)) + "}", None, choices
    if parts == {"bool"}:
        return "BOOL", _checker("boolean (true/false)", _check_bool), None
    if parts == {"int"}:
        return "INT", _checker("int", int), None
    if parts <= {"int", "float"} and parts:
        return "FLOAT", _checker("float", float), None
    if any(p.startswith("dict") for p in parts):
        return "JSON_OR_PATH", None, None
    return "VALUE", None, None


def _add_flag(group: Any, name: str, annotation: str, help_text: str, bool_default_true: bool) -> None:
    options = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    metavar, kind, choices = _value_kind(annotation)
    kwargs: dict[str, Any] = {"dest": name, "metavar": metavar, "help": _escape_percent(help_text)}
    if kind is not None:
        kwargs["type"] = kind
    if choices is not None:
        kwargs["choices"] = [str(c) for c in choices]
    if metavar == "BOOL":
        kwargs.update(nargs="?", const="True")  # a bare --flag means True, for every boolean flag
    elif any("list[" in p for p in annotation.split("|")):
        kwargs["nargs"] = "+"
    group.add_argument(*options, **kwargs)
    if bool_default_true:  # transformers' parser adds --no_<flag> for booleans that default to True
        group.add_argument(f"--no_{name}", f"--no-{name.replace('_', '-')}", dest=f"no_{name}",
                           action="store_const", const=True, help=argparse.SUPPRESS)  # fmt: skip


def canonical_argv(parser: StrictParser, seen: argparse.Namespace) -> list[str]:
    """The flags ``seen`` holds, as ``--name value`` pairs for transformers' parser (the last occurrence of a flag
    has won; a bare boolean flag has become ``True``)."""
    argv: list[str] = []
    for action in parser._actions:
        if action.dest in ("help", "config") or not action.option_strings:
            continue
        value = getattr(seen, action.dest, None)
        if value is None:
            continue
        if action.dest.startswith("no_") and value is True and action.nargs == 0:
            argv.append(f"--{action.dest}")
        elif isinstance(value, list):
            argv += [f"--{action.dest}", *value]
        else:
            argv += [f"--{action.dest}", value]
    return argv


PATH_KEYS = ("deepspeed", "dataset_registry")


def config_file_args(argv: list[str], known: list[str] | None = None) -> list[str]:
    """Expand ``--config file.yaml`` (or a YAML file given as the first argument) into flags placed before the
    other command-line flags, which then win. Keys must be flag names (``known``): an unknown or misspelt key is
    refused, naming the closest valid flag."""
    if argv and argv[0].endswith((".yaml", ".yml")) and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    if "--config" not in argv:
        return argv
    import yaml

    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise UserError("--config needs a YAML file path")
    path = argv[i + 1]
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of flag names to values")
    expanded: list[str] = []
    base = Path(path).resolve().parent
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in PATH_KEYS and isinstance(value, str) and not Path(value).is_absolute():
            beside = base / value  # a recipe's paths are relative to the recipe, wherever it is run from
            if beside.exists() and not Path(value).exists():
                value = str(beside)
        if known is not None and f"--{key}" not in known:
            hint = closest(f"--{key}", known)
            raise UserError(
                f"{path}: unknown key {key!r}" + (f"; did you mean {hint[2:]!r}?" if hint else "; see --help")
            )
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            expanded += [f"--{key}", *[str(v) for v in value]]
        elif isinstance(value, dict):
            import json

            expanded += [f"--{key}", json.dumps(value)]
        else:
            expanded += [f"--{key}", str(value)]
    return expanded + argv[:i] + argv[i + 2 :]


def has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator that transformers would train on."""
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def choose_cpu_settings(args: Any) -> None:
    """On a machine without a GPU, train on the CPU unasked: ``--use_cpu True``, and ``--bf16`` / ``--fp16``
    (the recipes' GPU precision) off, so training runs in float32, with one warning naming what changed. Without it
    transformers refuses bf16, and under torchrun DeepSpeed counts the ranks differently from accelerate (a
    batch-size AssertionError). ``--use_cpu True --bf16 True`` given explicitly is left as it is."""
    if args.use_cpu or has_accelerator():
        return
    args.use_cpu = True
    changed = ["--use_cpu True"]
    for flag in ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval"):
        if getattr(args, flag, False):
            setattr(args, flag, False)
            changed.append(f"--{flag} False")
    import os

    if os.environ.get("RANK", "0") == "0":  # once per job, not once per rank
        logger.warning(
            "no GPU found: training on the CPU in float32 (%s); pass --use_cpu True --bf16 True to train in bf16 on "
            "a CPU that supports it", ", ".join(changed),
        )  # fmt: skip


def prepare_single_process_launch(deepspeed: Any) -> None:
    """DeepSpeed started without a launcher (``qwenvl train recipe.yaml`` on one GPU or CPU) looks for MPI unless
    the launcher's variables are set; set those of a one-process job (rank 0 of 1, a free local port)."""
    import os

    if not deepspeed or any(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    logger.info("DeepSpeed without a launcher: one process (rank 0 of 1, port %d)", port)


# --report_to names (transformers' integrations) and the module each needs.
REPORTERS = {
    "wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml",
    "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio",
    "codecarbon": "codecarbon", "azure_ml": "azureml", "flyte": "flytekit", "dagshub": "dagshub",
}  # fmt: skip


def missing_reporters(report_to: list[str] | str) -> list[tuple[str, str]]:
    """``(name, package)`` of each ``--report_to`` integration whose package is not installed (transformers would
    raise a RuntimeError when the Trainer is built)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    missing = []
    for name in names:
        module = REPORTERS.get(name)
        if module and importlib.util.find_spec(module) is None:
            if name != "tensorboard" or importlib.util.find_spec("tensorboardX") is None:
                missing.append((name, module))
    return missing


_TRAINING_CLASS: type | None = None


def training_arguments_class() -> type:
    """transformers' ``TrainingArguments`` with the fields of :class:`QwenTrainingFields` (built once, on first use,
    so that importing this module does not import transformers). Picklable as
    ``qwenvl.train.arguments.TrainingArguments``."""
    global _TRAINING_CLASS
    if _TRAINING_CLASS is not None:
        return _TRAINING_CLASS
    import transformers

    def __post_init__(self) -> None:
        choose_cpu_settings(self)
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise UserError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise UserError("--warmup_ratio and --warmup_steps are both set; keep one")
            self.warmup_steps = self.warmup_ratio  # transformers reads a value below 1 as a ratio (rounded up)
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # torch refuses it without workers
        transformers.TrainingArguments.__post_init__(self)

    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": "TrainingArguments",
        "__doc__": "transformers.TrainingArguments plus the fields of QwenTrainingFields.",
        "__annotations__": {},
        "__post_init__": __post_init__,
    }
    for f in fields(QwenTrainingFields):
        namespace["__annotations__"][f.name] = f.type
        namespace[f.name] = field(default=f.default, metadata=dict(f.metadata))
    _TRAINING_CLASS = dataclass(type("TrainingArguments", (transformers.TrainingArguments,), namespace))
    return _TRAINING_CLASS


def __getattr__(name: str) -> Any:
    if name == "TrainingArguments":
        return training_arguments_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_args(
    argv: list[str] | None = None, prog: str | None = None, launch: bool = False, extra: tuple[type, ...] = ()
) -> tuple[Any, ...]:
    """Parse flags (and ``--config``) into ``(ModelArguments, DataArguments, TrainingArguments)`` (followed by one
    instance of each ``extra`` dataclass) and run the cross-flag checks. Usage mistakes exit with status 2 and one
    line naming the fix (before transformers is imported); a value that fails a check raises :class:`UserError`.
    ``launch`` (training itself, not a check of flags) also sets the environment a launcher would for a one-process
    DeepSpeed run, before the arguments set up the devices."""
    light = light_parser(prog, extra)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = config_file_args(argv, light.known_flags())
    except UserError as e:
        light.error(str(e))
    seen = light.parse_args(argv)
    if not seen.output_dir:
        light.error("--output_dir is required (checkpoints, logs and the final model go there)")
    if Path(seen.output_dir).exists() and not Path(seen.output_dir).is_dir():
        light.error(f"--output_dir {seen.output_dir} is a file; give a folder")
    missing = missing_reporters(seen.report_to or [])
    if missing:
        name, package = missing[0]
        light.error(f"--report_to {name} needs the {package} package: pip install {package}, or pass --report_to none")
    if seen.base_interval is not None:
        logger.warning("--base_interval is accepted for upstream's scripts and ignored (frames follow --video_fps)")
    from qwenvl.data.registry import parse_dataset_use

    for flag in ("dataset_use", "eval_dataset_use"):
        try:
            if getattr(seen, flag):
                parse_dataset_use(getattr(seen, flag))
        except UserError as e:
            light.error(str(e).replace("--dataset_use", f"--{flag}"))
    argv = canonical_argv(light, seen)
    if launch:
        prepare_single_process_launch(seen.deepspeed)

    import transformers

    class _Parser(transformers.HfArgumentParser):
        def error(self, message: str):  # noqa: D102 - same short error as the light parser
            light.error(message)

    parser = _Parser((ModelArguments, DataArguments, training_arguments_class(), *extra), allow_abbrev=False)
    try:
        model_args, data_args, training_args, *more = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False
        )
    except ValueError as e:  # a value transformers' own checks refuse (or an extra dataclass's __post_init__)
        raise UserError(str(e)) from None
    resolve_components(model_args, training_args)
    check_data_args(data_args, training_args)
    return (model_args, data_args, training_args, *more)
