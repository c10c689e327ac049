"""LoRA configuration: which linear layers get adapters and which parts are trained fully (``modules_to_save``)."""

from __future__ import annotations

from typing import Any

import torch

from qwenvl.model.freeze import component_of


LLM_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# Qwen3.5's Gated DeltaNet layers: the fused query/key/value projection, the output gate (z), the per-head
# beta (b) and decay (a) inputs, and the output projection. Their short convolution, A_log and dt_bias are not
# linear layers: under LoRA they stay frozen, in full tuning they train with the LLM.
LLM_LINEAR_ATTENTION = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")
LLM_MLP = ("gate_proj", "up_proj", "down_proj")


def lora_target_modules(
    model: torch.nn.Module, llm_mlp: bool = True, vision: bool = False, merger: bool = False
) -> list[str]:
    """Full names of the ``nn.Linear`` modules that get LoRA adapters."""
    llm_names = LLM_ATTENTION + LLM_LINEAR_ATTENTION + (LLM_MLP if llm_mlp else ())
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        component = component_of(name)
        if component == "llm" and name.rsplit(".", 1)[-1] in llm_names:
            targets.append(name)
        elif component == "vision_tower" and vision:
            targets.append(name)
        elif component == "merger" and merger:
            targets.append(name)
    if not targets:
        raise ValueError("no linear layer matched the LoRA targets; is this a Qwen-VL model?")
    return targets


def modules_to_save(model: torch.nn.Module, vision_tower: bool, merger: bool) -> list[str]:
    """Names of the parts trained fully next to LoRA (their weights are saved with the adapter).

    peft wraps each named module in a trainable copy, which it cannot do for a ``ModuleList`` (Qwen3-VL's
    ``deepstack_merger_list``, every family's vision ``blocks``): a list is named by its children instead.
    Modules without parameters (rotary tables) are left out.
    """
    out: list[str] = []
    visual_name = next((n for n, m in model.named_modules() if n.endswith("visual") and hasattr(m, "merger")), None)
    if visual_name is None:
        return out
    visual = model.get_submodule(visual_name)
    parts = []
    if merger:
        parts += [n for n in ("merger", "deepstack_merger_list") if hasattr(visual, n)]
    if vision_tower:
        parts += [n for n, _ in visual.named_children() if n not in ("merger", "deepstack_merger_list")]
    for part in parts:
        module = visual.get_submodule(part)
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            children = [f"{part}.{c}" for c, m in module.named_children() if any(True for _ in m.parameters())]
        else:
            children = [part] if any(True for _ in module.parameters()) else []
        out += [f"{visual_name}.{c}" for c in children]
    return out


def apply_lora(model: torch.nn.Module, args: Any, tune_vision: bool, tune_merger: bool) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA per the training arguments; returns the peft model."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("--lora_enable needs peft: pip install 'qwenvl[train]'") from e

    model.requires_grad_(False)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(model, args.lora_target_mlp, args.lora_vision, args.lora_merger),
        modules_to_save=modules_to_save(model, tune_vision, tune_merger) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
