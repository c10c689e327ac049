"""Model components (vision tower, merger, LLM), freezing them, and the trainable-parameter table.

Components, by parameter name (the same with or without a peft wrapper):

* ``merger``: ``visual.merger`` and, for Qwen3-VL, ``visual.deepstack_merger_list`` (the DeepStack mergers
  project vision features into early LLM layers, so they belong with the projector, not the vision tower;
  upstream toggled them with the vision tower but put them in the projector's LR group);
* ``vision_tower``: every other ``visual.*`` parameter (patch embedding, blocks, position embeddings);
* ``llm``: ``language_model.*`` and ``lm_head`` (upstream's ``lm_head.requires_grad = ...`` set a Python attribute
  on the module and so never froze the head).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch


Component = Literal["vision_tower", "merger", "llm"]
COMPONENTS: tuple[Component, ...] = ("vision_tower", "merger", "llm")

_MERGER_RE = re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list)(\.|$)")
_VISUAL_RE = re.compile(r"(^|\.)visual\.")
_LLM_RE = re.compile(r"(^|\.)(language_model|lm_head)(\.|$)")


def component_of(name: str) -> Component:
    """The component a parameter (or module) name belongs to."""
    if _MERGER_RE.search(name):
        return "merger"
    if _VISUAL_RE.search(name):
        return "vision_tower"
    if _LLM_RE.search(name):
        return "llm"
    raise ValueError(f"parameter {name!r} belongs to no known component (vision_tower, merger, llm)")


def set_trainable(model: torch.nn.Module, vision_tower: bool, merger: bool, llm: bool) -> None:
    """``requires_grad_`` on every parameter according to its component."""
    wanted = {"vision_tower": vision_tower, "merger": merger, "llm": llm}
    for name, param in model.named_parameters():
        param.requires_grad_(wanted[component_of(name)])


def trainable_summary(model: torch.nn.Module, lrs: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per component: total and trainable parameter counts (and the learning rate, if given)."""
    rows = {c: {"component": c, "params": 0, "trainable": 0} for c in COMPONENTS}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        row = rows[component_of(name)]
        n = param.ds_numel if hasattr(param, "ds_numel") else param.numel()  # ZeRO-3 partitions report 0 numel
        row["params"] += n
        if param.requires_grad:
            row["trainable"] += n
    out = list(rows.values())
    for row in out:
        row["lr"] = (lrs or {}).get(row["component"]) if row["trainable"] else None
    return out


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The summary as a text table."""
    lines = [f"{'component':14} {'params':>14} {'trainable':>14} {'%':>7} {'lr':>10}"]
    for r in rows:
        pct = 100 * r["trainable"] / r["params"] if r["params"] else 0.0
        lr = f"{r['lr']:.2e}" if r["lr"] is not None else "-"
        lines.append(f"{r['component']:14} {r['params']:>14,} {r['trainable']:>14,} {pct:>6.1f}% {lr:>10}")
    total = sum(r["params"] for r in rows)
    trainable = sum(r["trainable"] for r in rows)
    lines.append(f"{'total':14} {total:>14,} {trainable:>14,} {100 * trainable / max(total, 1):>6.1f}%")
    return "\n".join(lines)
