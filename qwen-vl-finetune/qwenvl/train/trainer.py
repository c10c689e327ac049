"""``QwenVLTrainer``: the HF Trainer with per-component learning rates, batch statistics, and a vision-tower call
on every rank every step.

* Optimizer groups: (vision tower | merger | LLM) x (decay | no decay), learning rates from ``vision_tower_lr`` /
  ``mm_projector_lr`` / ``learning_rate``; every trainable parameter is in exactly one group (asserted).
* Under ZeRO-3 (and DDP), ranks must run the same modules in the same order each step, or the parameter
  all-gathers / gradient reductions of one rank wait forever for the other. A rank whose batch has no image (or no
  video) therefore runs the vision tower on a 2x2-patch dummy input before the model forward, adding
  ``0 * output`` to the loss, so every rank calls the tower exactly twice per step (images, then videos).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import Trainer

from qwenvl.model.freeze import component_of


logger = logging.getLogger(__name__)


class BatchStats:
    """Counts of what went through training since the last log (tokens, real tokens, images, capacity)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.real_tokens = 0
        self.images = 0
        self.videos = 0
        self.steps = 0
        self.started = time.monotonic()

    def add(self, batch: dict[str, Any], merge: int = 4) -> None:
        ids = batch["input_ids"]
        self.tokens += ids.numel()
        mask = batch.get("attention_mask")
        self.real_tokens += int(mask.sum()) if mask is not None else ids.numel()
        if batch.get("image_grid_thw") is not None:
            self.images += len(batch["image_grid_thw"])
        if batch.get("video_grid_thw") is not None:
            self.videos += len(batch["video_grid_thw"])


class QwenVLTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        component_lrs: dict[str, float] | None = None,
        vision_sync: bool = False,
        packed_capacity: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.component_lrs = component_lrs or {}
        self.vision_sync = vision_sync
        self.packed_capacity = packed_capacity
        self.batch_stats = BatchStats()

    # ------------------------------------------------------------------------------------------------ optimizer

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[str, bool], dict[str, Any]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            component = component_of(name)
            key = (component, name in decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "names": [],
                    "lr": self.component_lrs.get(component, self.args.learning_rate),
                    "weight_decay": self.args.weight_decay if key[1] else 0.0,
                    "component": component,
                }
            groups[key]["params"].append(param)
            groups[key]["names"].append(name)
        # LLM groups first: the Trainer logs the first group's learning rate as "learning_rate".
        order = {"llm": 0, "merger": 1, "vision_tower": 2}
        out = sorted(groups.values(), key=lambda g: (order[g["component"]], g["weight_decay"] == 0))
        placed = [id(p) for g in out for p in g["params"]]
        trainable = [id(p) for p in model.parameters() if p.requires_grad]
        assert len(placed) == len(set(placed)) == len(set(trainable)), "a trainable parameter is in 0 or 2+ groups"
        return out

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = [
            {k: v for k, v in g.items() if k not in ("names", "component")} for g in self.param_groups(opt_model)
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)  # each group has its own
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------------------------------------ steps

    def _visual(self, model: torch.nn.Module) -> torch.nn.Module | None:
        inner = self.accelerator.unwrap_model(model)
        for name, module in inner.named_modules():
            if name.endswith("visual") and hasattr(module, "spatial_merge_size"):
                return module
        return None

    def _dummy_vision_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Run the vision tower on dummy input for each modality this rank's batch lacks (see module doc)."""
        missing = [k for k in ("pixel_values", "pixel_values_videos") if inputs.get(k) is None]
        if not missing:
            return None
        visual = self._visual(model)
        if visual is None:
            return None
        patch = visual.patch_embed
        in_features = patch.in_channels * patch.temporal_patch_size * patch.patch_size**2
        merge = visual.spatial_merge_size
        grid = torch.tensor([[1, merge, merge]], device=inputs["input_ids"].device)
        dtype = next(visual.parameters()).dtype
        pixels = torch.zeros(merge * merge, in_features, device=grid.device, dtype=dtype)
        total = None
        for _ in missing:
            out = visual(pixels, grid_thw=grid, return_dict=True)
            tensors = [v for v in out.values() if torch.is_tensor(v)]
            for v in out.values():
                if isinstance(v, (list, tuple)):
                    tensors.extend(t for t in v if torch.is_tensor(t))
            term = sum(t.float().sum() for t in tensors) * 0.0
            total = term if total is None else total + term
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        dummy = self._dummy_vision_loss(model, inputs) if self.vision_sync and model.training else None
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if dummy is None:
            return result
        if return_outputs:
            loss, outputs = result
            return loss + dummy.to(loss.dtype), outputs
        return result + dummy.to(result.dtype)

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        self.batch_stats.add(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        stats = self.batch_stats
        if "loss" in logs and stats.tokens:
            elapsed = max(time.monotonic() - stats.started, 1e-9)
            logs["tokens_per_s"] = round(stats.real_tokens / elapsed, 1)
            logs["padding_efficiency"] = round(stats.real_tokens / stats.tokens, 4)
            if self.packed_capacity:
                steps = max(1, self.state.global_step - getattr(self, "_stats_step", 0))
                per_step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                logs["packing_efficiency"] = round(stats.real_tokens / (steps * per_step * self.packed_capacity), 4)
            steps = max(1, self.state.global_step - getattr(self, "_stats_step", 0))
            logs["images_per_step"] = round(stats.images / steps, 2)
            if stats.videos:
                logs["videos_per_step"] = round(stats.videos / steps, 2)
            self._stats_step = self.state.global_step
            stats.reset()
        super().log(logs, start_time)
