"""``QwenVLTrainer``: the HF Trainer with per-component learning rates, a token-weighted global loss and batch
statistics.

* Optimizer groups: (vision tower | merger | LLM) x (decay | no decay), learning rates from ``vision_tower_lr`` /
  ``mm_projector_lr`` / ``learning_rate``; every trainable parameter is in exactly one group (asserted).
* Checkpoints are written under ``output_dir/.partial`` and renamed into place when complete, with
  ``qwenvl_preprocessing.json`` inside (see :mod:`qwenvl.train.checkpoints`).
* Data wait: the time each optimizer step waited for its batches is logged (``data_wait_s``, ``data_wait_share``)
  and summed for ``train_summary.json``, with the media cache's hits and misses per epoch
  (see :mod:`qwenvl.train.data_wait`).
* Ranks calling the vision tower a different number of times (text-only vs image batches) would hang ZeRO-3;
  the collators' ``DummyMedia`` prevents that (see :mod:`qwenvl.data.collate`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from qwenvl.model.freeze import component_of
from qwenvl.model.preprocessing import PreprocessingSettings, save_preprocessing
from qwenvl.train import checkpoints
from qwenvl.train.data_wait import DataWaitClock, MediaCacheCounter, merge_media_cache


logger = logging.getLogger(__name__)


def causal_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Next-token cross-entropy summed over supervised tokens and divided by ``num_items_in_batch``.

    Given to the Trainer as ``compute_loss_func`` so the loss is a token-weighted mean over the *global* batch:
    Trainer counts ``num_items_in_batch`` across gradient-accumulation steps and all ranks, so DDP / ZeRO runs
    and accumulation give exactly the loss of one process with the same global batch (the model's own loss
    would average per-rank means instead). Packed rows need no special case: each sample's first label is -100.
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    shift_logits = logits[..., :-1, :].float()
    shift_labels = labels[..., 1:].to(shift_logits.device)
    total = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    if num_items_in_batch is None:
        num_items_in_batch = shift_labels.ne(-100).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


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
        self.aux_losses: list[float] = []
        self.started = time.monotonic()

    def add(self, batch: dict[str, Any]) -> None:
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
        packed_capacity: int | None = None,
        preprocessing: PreprocessingSettings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.component_lrs = component_lrs or {}
        self.packed_capacity = packed_capacity
        self.preprocessing = preprocessing
        self.batch_stats = BatchStats()
        self._staging = False
        self._stats_step = 0
        self.trained_ids: Counter[str] = Counter()  # sample ids of the batches this process trained on
        self.data_wait = DataWaitClock()
        self.media_cache_counts = MediaCacheCounter()

    # ------------------------------------------------------------------------------------------------ checkpoints

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return str(checkpoints.staging_dir(run_dir)) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Write the checkpoint into the staging folder on every rank, then publish it atomically (rank 0) once all
        ranks are done; older checkpoints are rotated out only after that."""
        step, rank = self.state.global_step, self.args.process_index
        checkpoints.crash_point("save_begin", step, rank)
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{step}"
        staged = checkpoints.staging_dir(run_dir) / name
        if self.args.should_save:
            checkpoints.clear_stale(staged)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation waits for the rename
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        checkpoints.crash_point("before_publish", step, rank)
        if self.args.should_save:
            if self.preprocessing is not None:
                save_preprocessing(self.preprocessing, staged)
            final = run_dir / name
            checkpoints.publish(staged, final)
            checkpoints.crash_point("after_publish", step, rank)
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staged.parent:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(str(run_dir), limit, self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()
        checkpoints.crash_point("after_rotate", step, rank)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:  # noqa: D102
        super().save_model(output_dir, _internal_call)
        if _internal_call:
            checkpoints.crash_point("after_model", self.state.global_step, self.args.process_index)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        checkpoints.crash_point("after_optimizer", self.state.global_step, self.args.process_index)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        checkpoints.crash_point("after_rng", self.state.global_step, self.args.process_index)

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else None
        if aux is not None and model.training:
            # A mixture-of-experts config with output_router_logits: the router's load-balancing loss, weighted by
            # router_aux_loss_coef as the model's own loss would add it. Our token loss is already a mean over the
            # global batch; the aux loss is a per-micro-batch mean, so each accumulation step adds its share.
            config = self.accelerator.unwrap_model(model).config
            coef = getattr(getattr(config, "text_config", config), "router_aux_loss_coef", 0.0)
            loss = loss + coef * aux.to(loss.device) / self.args.gradient_accumulation_steps
            self.batch_stats.aux_losses.append(float(aux.detach()))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        self.trained_ids.update(inputs.pop("sample_ids", None) or [])
        self.batch_stats.add(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def get_batch_samples(self, epoch_iterator, num_batches, device):  # noqa: D102
        batches, num_items = super().get_batch_samples(self.data_wait.begin(epoch_iterator), num_batches, device)
        epoch = int(self.state.epoch or 0)  # exactly e at the first step of epoch e
        for batch in batches:
            if isinstance(batch, dict):
                self.media_cache_counts.add(epoch, batch.pop("media_cache", None))
        return batches, num_items

    def data_summary(self) -> dict[str, Any]:
        """Data wait of this process, and the media cache's hits and misses summed over all ranks."""
        parts = [self.media_cache_counts.as_dict()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.media_cache_counts.as_dict())
        out: dict[str, Any] = self.data_wait.summary()
        media = merge_media_cache(parts)
        if media["hits"] or media["misses"]:
            out["media_cache"] = media
        return out

    def prediction_step(self, model, inputs, *args, **kwargs):  # noqa: D102
        inputs.pop("sample_ids", None)
        inputs.pop("media_cache", None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def gathered_trained_ids(self) -> Counter[str]:
        """``trained_ids`` summed over all ranks."""
        total = Counter(self.trained_ids)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, dict(self.trained_ids))
            total = Counter()
            for part in parts:
                total.update(part)
        return total

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        # Called after every optimizer step, before the step's save: the "step_end" crash point.
        self.data_wait.end()
        checkpoints.crash_point("step_end", self.state.global_step, self.args.process_index)
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        stats = self.batch_stats
        if "loss" in logs and stats.tokens:
            elapsed = max(time.monotonic() - stats.started, 1e-9)
            logs["tokens_per_s"] = round(stats.real_tokens / elapsed, 1)
            logs["padding_efficiency"] = round(stats.real_tokens / stats.tokens, 4)
            if self.packed_capacity:
                steps = max(1, self.state.global_step - self._stats_step)
                per_step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                logs["packing_efficiency"] = round(stats.real_tokens / (steps * per_step * self.packed_capacity), 4)
            steps = max(1, self.state.global_step - self._stats_step)
            logs["images_per_step"] = round(stats.images / steps, 2)
            if stats.videos:
                logs["videos_per_step"] = round(stats.videos / steps, 2)
            if stats.aux_losses:
                logs["aux_loss"] = round(sum(stats.aux_losses) / len(stats.aux_losses), 6)
            self._stats_step = self.state.global_step
            stats.reset()
            logs.update(self.data_wait.window_logs())
        super().log(logs, start_time)
