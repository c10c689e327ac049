"""What ``qwenvl dpo`` and ``qwenvl grpo`` share with ``qwenvl train``: the policy model set up exactly as SFT sets
it up (``load_model``, freezing, LoRA, learning-rate groups), the reference model, per-sequence log-probabilities
of packed or padded rows, resume from the newest complete checkpoint, and the final save.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from qwenvl.cli import UserError


logger = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw",
              "pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "use_cache")  # fmt: skip


def setup_policy(model_args: Any, training_args: Any) -> dict[str, Any]:
    """Seeded, loaded, frozen / LoRA-wrapped policy as ``qwenvl train`` builds it: ``{"model", "processor",
    "family", "lrs", "tokens_per_second"}``."""
    import transformers

    from qwenvl.model.freeze import format_summary, set_trainable, trainable_summary
    from qwenvl.model.loader import load_model, load_processor, read_family
    from qwenvl.train.train_qwen import _init_deepspeed_comm

    transformers.set_seed(training_args.seed)
    _init_deepspeed_comm(training_args)
    os.makedirs(training_args.output_dir, exist_ok=True)
    family = read_family(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    model = load_model(model_args.model_name_or_path, dtype=dtype, attn_implementation=model_args.attn_implementation,
                       cache_dir=training_args.cache_dir)  # fmt: skip
    model.config.use_cache = False  # packed rows are isolated only without a KV cache
    if hasattr(model.config, "text_config"):
        model.config.text_config.use_cache = False
    processor = load_processor(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    set_trainable(model, vision_tower=model_args.tune_mm_vision, merger=model_args.tune_mm_mlp,
                  llm=model_args.tune_mm_llm)  # fmt: skip
    if training_args.lora_enable:
        from qwenvl.train.lora import apply_lora

        model = apply_lora(model, training_args, model_args.tune_mm_vision, model_args.tune_mm_mlp)
    if training_args.gradient_checkpointing:
        if training_args.gradient_checkpointing_kwargs is None:
            training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}
        model.enable_input_require_grads()

    def lr(value: float | None) -> float:
        return value if value is not None else training_args.learning_rate

    lrs = {"vision_tower": lr(training_args.vision_tower_lr), "merger": lr(training_args.mm_projector_lr),
           "llm": training_args.learning_rate}  # fmt: skip
    summary = trainable_summary(model, lrs)
    if training_args.should_log:
        logger.info("trainable parameters:\n%s", format_summary(summary))
    tokens_per_second = getattr(getattr(model.config, "vision_config", None), "tokens_per_second", 2)
    return {"model": model, "processor": processor, "family": family, "lrs": lrs,
            "tokens_per_second": tokens_per_second}  # fmt: skip


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` in eval mode: the reference of a full fine-tune."""
    import copy

    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a collated batch the model takes."""
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the labelled tokens of each of ``n`` samples, and their token counts.

    ``segments`` ``(B, L)`` gives each token's sample (-1: none); the target at ``t`` is predicted from ``t - 1``,
    and belongs to the segment of ``t`` (packed samples start with a -100 label, so no target crosses samples).
    Only labelled positions go through the log-softmax (the full ``(B, L, V)`` log-probabilities are never built).
    """
    targets = labels[:, 1:]
    mask = targets.ne(-100)
    picked = logits[:, :-1][mask].float()
    wanted = targets[mask]
    token_logps = picked.gather(-1, wanted.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    owners = segments[:, 1:][mask].to(token_logps.device)
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, owners, token_logps)
    counts = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, owners, torch.ones_like(token_logps)
    )
    return sums, counts


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, L-1)`` log-probability of each next token (0 where the label is -100)."""
    targets = labels[:, 1:]
    mask = targets.ne(-100)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    picked = logits[:, :-1][mask].float()
    wanted = targets[mask]
    out[mask] = picked.gather(-1, wanted.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    return out


def resume_checkpoint(training_args: Any) -> str | None:
    """``--resume_from_checkpoint``, else the newest complete ``checkpoint-N`` of the output dir, else None."""
    from qwenvl.train.checkpoints import find_resume_checkpoint

    resume = training_args.resume_from_checkpoint
    if resume is None:
        found = find_resume_checkpoint(training_args.output_dir)
        if found is not None:
            logger.warning("found %s: resuming from it (pass a new --output_dir to start over)", found)
            return str(found)
        return None
    if not os.path.isdir(resume):
        raise UserError(f"--resume_from_checkpoint {resume}: no such folder")
    return resume


def finish(trainer: Any, model: torch.nn.Module, settings: Any, metrics: dict[str, Any], name: str) -> None:
    """Save the final model (with ``use_cache`` back on), the state, the preprocessing settings and a summary."""
    from qwenvl.model.preprocessing import save_preprocessing

    trainer.save_state()
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None:
            config.use_cache = True
    trainer.save_model(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        save_preprocessing(settings, trainer.args.output_dir)
        path = Path(trainer.args.output_dir) / f"{name}_summary.json"
        path.write_text(json.dumps(metrics, indent=2, default=str) + "\n")


def end_distributed() -> None:
    """As ``qwenvl train`` ends a distributed run: barrier, then leave without the gloo teardown."""
    import sys

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
