"""``qwenvl dpo``: direct preference optimisation of a Qwen-VL model on (prompt, chosen, rejected) pairs.

Run (flags as ``qwenvl train``, plus those of :mod:`qwenvl.train.dpo_args`)::

    qwenvl dpo --model_name_or_path sft_out --dataset_use pairs.jsonl --output_dir dpo_out \\
        --lora_enable True --loss_type sigmoid --beta 0.1 [--data_packing True] [examples/dpo_lora.yaml]
    torchrun --nproc_per_node 8 --no-python qwenvl dpo examples/dpo_lora.yaml

Pairs are encoded with the SFT encoder (media resized once per pair, both answers after the same prompt tokens:
:mod:`qwenvl.data.preference`) and trained by :class:`DPOTrainer`, the SFT ``QwenVLTrainer`` with a preference
loss: checkpoints, resume after a kill, learning-rate groups and quarantine are SFT's. Losses: ``sigmoid`` (DPO,
with ``--label_smoothing`` = conservative DPO), ``ipo``, and the reference-free ``simpo`` and ``orpo``. The reference
is the policy with its LoRA adapters switched off (one copy of the weights), a frozen copy (full tuning), or
log-probabilities of the initial model precomputed once (``--reference precomputed``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError
from qwenvl.train.dpo_args import DPOArguments


logger = logging.getLogger("qwenvl.dpo")


def preference_loss(
    loss_type: str, beta: float, policy_chosen: Any, policy_rejected: Any, chosen_tokens: Any, rejected_tokens: Any,
    reference_chosen: Any = None, reference_rejected: Any = None, label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Per-pair losses and the implicit rewards ``(losses, {"chosen", "rejected"})`` from summed log-probs.

    * sigmoid: ``-log σ(β h)(1-ε) - log σ(-β h) ε`` with ``h = (π_c - ref_c) - (π_r - ref_r)`` (Rafailov et al.;
      ε = label smoothing, Mitchell's conservative DPO);
    * ipo: ``(h - 1/(2β))²`` with per-token mean log-probs (Azar et al., as TRL computes it);
    * simpo: ``-log σ(β(π̄_c - π̄_r) - γ)`` on per-token mean log-probs, no reference (Meng et al.);
    * orpo: ``-π̄_c - β log σ(log odds_c - log odds_r)``, odds ``p / (1 - p)`` of the per-token mean (Hong et al.;
      β is ORPO's λ, as in TRL).
    """
    import torch
    import torch.nn.functional as F

    if loss_type in ("sigmoid", "ipo"):
        if reference_chosen is None or reference_rejected is None:
            raise ValueError(f"loss {loss_type} needs reference log-probs")
        if loss_type == "ipo":
            chosen = (policy_chosen - reference_chosen) / chosen_tokens
            rejected = (policy_rejected - reference_rejected) / rejected_tokens
            losses = (chosen - rejected - 1 / (2 * beta)) ** 2
        else:
            chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
            h = beta * (chosen - rejected)
            losses = -F.logsigmoid(h) * (1 - label_smoothing) - F.logsigmoid(-h) * label_smoothing
        return losses, {"chosen": beta * chosen.detach(), "rejected": beta * rejected.detach()}
    mean_chosen, mean_rejected = policy_chosen / chosen_tokens, policy_rejected / rejected_tokens
    if loss_type == "simpo":
        h = beta * (mean_chosen - mean_rejected) - simpo_gamma
        losses = -F.logsigmoid(h) * (1 - label_smoothing) - F.logsigmoid(-h) * label_smoothing
    elif loss_type == "orpo":

        def log_odds(mean: Any) -> Any:  # log(p / (1 - p)), p = exp(mean) < 1
            return mean - torch.log(-torch.expm1(mean.clamp(max=-1e-6)))

        losses = -mean_chosen - beta * F.logsigmoid(log_odds(mean_chosen) - log_odds(mean_rejected))
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return losses, {"chosen": beta * mean_chosen.detach(), "rejected": beta * mean_rejected.detach()}


def _trainer_class() -> type:
    import torch

    from qwenvl.train.policy import model_inputs, sequence_logps
    from qwenvl.train.trainer import QwenVLTrainer

    class DPOTrainer(QwenVLTrainer):
        """``QwenVLTrainer`` whose loss is a preference loss over the pairs of a batch (see the module doc)."""

        def __init__(self, *args: Any, dpo_args: DPOArguments, reference: str, ref_model: Any = None,
                     reference_logps: dict[str, list[float]] | None = None, **kwargs: Any) -> None:  # fmt: skip
            super().__init__(*args, **kwargs)
            self.dpo_args = dpo_args
            self.reference = reference
            self.ref_model = ref_model
            self.reference_logps = reference_logps or {}
            self.model_accepts_loss_kwargs = False  # a per-pair mean: Trainer divides by accumulation steps
            self.pair_metrics: dict[str, list[float]] = defaultdict(list)
            if ref_model is not None:
                ref_model.to(self.args.device)

        def _logps(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
            outputs = model(**model_inputs(inputs))
            n = 2 * len(inputs["pair_keys"])
            return sequence_logps(outputs.logits, inputs["labels"], inputs["segments"], n)

        def reference_for(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
            """The reference's summed log-probs of the chosen and rejected answers of the batch."""
            pairs = len(inputs["pair_keys"])
            if self.reference == "precomputed":
                values = torch.tensor([self.reference_logps[k] for k in inputs["pair_keys"]], device=self.args.device)
                return values[:, 0], values[:, 1]
            with torch.no_grad():
                if self.reference == "adapters":
                    unwrapped = self.accelerator.unwrap_model(model)
                    with unwrapped.disable_adapter():
                        logps, _ = self._logps(unwrapped, inputs)
                else:
                    logps, _ = self._logps(self.ref_model, inputs)
            return logps[:pairs], logps[pairs:]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
            args = self.dpo_args
            pairs = len(inputs["pair_keys"])
            logps, counts = self._logps(model, inputs)
            ref_c = ref_r = None
            if self.reference != "none":
                ref_c, ref_r = self.reference_for(model, inputs)
            losses, rewards = preference_loss(
                args.loss_type, args.beta, logps[:pairs], logps[pairs:], counts[:pairs], counts[pairs:], ref_c, ref_r,
                args.label_smoothing, args.simpo_gamma,
            )  # fmt: skip
            loss = losses.mean()
            if args.rpo_alpha:
                nll = -(logps[:pairs] / counts[:pairs]).mean()
                loss = loss + args.rpo_alpha * nll
                self.pair_metrics[("" if model.training else "eval_") + "nll/chosen"] += [float(nll.detach())]
            prefix = "" if model.training else "eval_"
            metrics = self.pair_metrics
            margin = rewards["chosen"] - rewards["rejected"]
            for name, values in (("rewards/chosen", rewards["chosen"]), ("rewards/rejected", rewards["rejected"]),
                                 ("rewards/margin", margin), ("rewards/accuracy", (margin > 0).float()),
                                 ("logps/chosen", logps[:pairs].detach()),
                                 ("logps/rejected", logps[pairs:].detach())):  # fmt: skip
                metrics[prefix + name] += values.float().tolist()
            return (loss, {"logps": logps}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: D102
            inputs.pop("sample_ids", None)
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            training = "loss" in logs
            keys = sorted(k for k in self.pair_metrics if k.startswith("eval_") != training)
            for key in keys:
                values = self.pair_metrics.pop(key)
                local = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=self.args.device)
                total = self.accelerator.reduce(local, reduction="sum")
                logs[key] = round(float(total[0] / total[1].clamp(min=1)), 6)
            super().log(logs, start_time)

    return DPOTrainer


def compute_reference_logps(model: Any, dataset: Any, collator: Any, batch_size: int, device: Any) -> dict[str, list]:
    """``{pair key: [chosen, rejected]}`` summed log-probs of ``model`` (the initial policy) over the dataset; each
    rank computes its share, and the shares are gathered."""
    import torch

    from qwenvl.train.policy import model_inputs, sequence_logps

    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mine = list(range(rank, len(dataset), world))
    out: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            batch = collator([dataset[j] for j in mine[i : i + batch_size]])
            inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model_inputs(batch).items()}
            logits = model(**inputs).logits
            n = 2 * len(batch["pair_keys"])
            logps, _ = sequence_logps(logits, batch["labels"].to(device), batch["segments"].to(device), n)
            half = n // 2
            for k, key in enumerate(batch["pair_keys"]):
                out[key] = [float(logps[k]), float(logps[half + k])]
    model.train(was_training)
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, out)
        out = {k: v for part in parts for k, v in part.items()}
    return out


def build(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags and build everything up to the trainer: ``{"trainer", "resume", "settings", ...}``."""
    from qwenvl.train.arguments import parse_args

    model_args, data_args, training_args, dpo_args = parse_args(
        argv, prog="qwenvl dpo", launch=True, extra=(DPOArguments,)
    )
    reference = dpo_args.resolve_reference(training_args.lora_enable)
    if data_args.data_flatten:
        raise UserError("--data_flatten does not apply to qwenvl dpo; use --data_packing True to pack pairs")
    import os

    import transformers

    from qwenvl.data.collate import DummyMedia
    from qwenvl.data.dataset import Quarantine
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.data.preference import PairCollator, PairDataset, PromptEncoder, load_prompt_records
    from qwenvl.model.budget import MediaBudget
    from qwenvl.model.preprocessing import PreprocessingSettings
    from qwenvl.train.policy import frozen_copy, resume_checkpoint, setup_policy

    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    del transformers
    policy = setup_policy(model_args, training_args)
    model, processor, family = policy["model"], policy["processor"], policy["family"]
    ref_model = frozen_copy(model) if reference == "copy" else None

    budget = MediaBudget.from_attrs(data_args)
    encoder = PromptEncoder(SampleEncoder(processor, family, budget, policy["tokens_per_second"]))
    quarantine = Quarantine(Path(training_args.output_dir) / "quarantine.jsonl")

    def dataset(use: str) -> PairDataset:
        records = load_prompt_records(use, data_args.dataset_registry, data_args.data_seed_sampling,
                                      data_args.bad_records, data_args.media_root, kind="pair")  # fmt: skip
        return PairDataset(records, encoder, training_args.model_max_length, data_args.bad_media, data_args.overlong,
                           quarantine)  # fmt: skip

    train_dataset = dataset(data_args.dataset_use)
    eval_dataset = dataset(data_args.eval_dataset_use) if data_args.eval_dataset_use else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dummy = DummyMedia.from_processor(processor, family) if world > 1 or training_args.deepspeed else None
    collator = PairCollator(processor.tokenizer.pad_token_id, packed=data_args.data_packing, dummy=dummy)

    resume = resume_checkpoint(training_args)
    reference_logps = None
    if reference == "precomputed":
        path = Path(training_args.output_dir) / "reference_logps.json"
        if path.is_file():
            reference_logps = json.loads(path.read_text())
        else:
            if resume is not None:
                raise UserError(f"{path} is missing but {resume} exists; the reference can no longer be computed "
                                "from the initial model: start over in a new --output_dir")  # fmt: skip
            reference_logps = compute_reference_logps(
                model, train_dataset, collator, training_args.per_device_train_batch_size, training_args.device
            )
            if eval_dataset is not None:
                reference_logps.update(compute_reference_logps(model, eval_dataset, collator,
                                                               training_args.per_device_eval_batch_size,
                                                               training_args.device))  # fmt: skip
            if training_args.process_index == 0:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(reference_logps))
                tmp.replace(path)

    settings = PreprocessingSettings(model_type=family.model_type, patch_size=family.patch_size, budget=budget,
                                     model_max_length=training_args.model_max_length)  # fmt: skip
    trainer = _trainer_class()(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=collator, processing_class=processor, component_lrs=policy["lrs"],
        packed_capacity=None, preprocessing=settings, dpo_args=dpo_args, reference=reference, ref_model=ref_model,
        reference_logps=reference_logps,
    )  # fmt: skip
    return {"trainer": trainer, "resume": resume, "settings": settings, "reference": reference, "dpo_args": dpo_args,
            "model": model, "eval_dataset": eval_dataset}  # fmt: skip


def train(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags and run DPO; returns the final metrics."""
    built = build(argv)
    trainer, resume, model, dpo_args = built["trainer"], built["resume"], built["model"], built["dpo_args"]
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    history = [e for e in trainer.state.log_history if "loss" in e]
    if history:
        metrics["last_log"] = history[-1]
    if built["eval_dataset"] is not None:
        metrics.update(trainer.evaluate())
    metrics.update(reference=built["reference"], loss_type=dpo_args.loss_type, resumed_from=resume)
    from qwenvl.train.policy import finish

    finish(trainer, model, built["settings"], metrics, "dpo")
    return metrics


def main(argv: list[str] | None = None) -> int:
    from qwenvl.cli import run_trainer

    return run_trainer(train, argv)


if __name__ == "__main__":
    sys.exit(main())
