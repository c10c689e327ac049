"""``qwenvl grpo``: group relative policy optimisation of a Qwen-VL model with sampled answers and rewards.

Run (flags as ``qwenvl train``, plus those of :mod:`qwenvl.train.grpo_args`)::

    qwenvl grpo --model_name_or_path sft_out --dataset_use prompts.jsonl --output_dir grpo_out \\
        --lora_enable True --rewards exact,format --num_generations 8 [examples/grpo_lora.yaml]
    torchrun --nproc_per_node 8 --no-python qwenvl grpo examples/grpo_lora.yaml

Each training step takes ``per_device_train_batch_size`` prompts (images, videos, multi-turn: the SFT formats;
the last answer is the reference the rewards compare with), samples ``--num_generations`` completions of each with
HF ``generate`` from the prompt encoded as inference encodes it (same frames, sizes and timestamps as SFT and
inference: :class:`qwenvl.data.preference.PromptEncoder`), scores them (:mod:`qwenvl.train.rewards`; a reward
that raises or cannot read an answer gives 0 and a logged reason), normalises rewards within each group, and
trains the clipped policy objective on the completion tokens, with an optional KL term to the reference
(``--beta``; 0 uses no reference). With ``--num_iterations`` mu > 1 the sampler gives each step's prompts mu
times in a row and the later passes train on the same completions, clipped against their log-probs at sampling
time (a run resumed between passes samples that batch afresh). The trainer is the SFT ``QwenVLTrainer``: checkpoints, resume after a kill,
learning-rate groups are SFT's; the completions of a step are packed (``--data_packing True``) or padded.
With ``--rollout_backend vllm_server`` the completions come from a vLLM server kept in sync with the policy
(:mod:`qwenvl.train.rollout_server`; video prompts are sent as training's frames and timestamps).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError
from qwenvl.train.grpo_args import GRPOArguments


logger = logging.getLogger("qwenvl.grpo")


def group_advantages(rewards: Any, group: int, scale: str = "group", eps: float = 1e-4) -> Any:
    """``r - mean(group)``, divided by ``std(group) + eps`` with ``scale="group"`` (GRPO) or not (``"none"``:
    Dr. GRPO). ``rewards`` are ordered group by group."""
    grouped = rewards.view(-1, group)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def grpo_loss(
    logps: Any, old_logps: Any, owners: Any, advantages: Any, epsilon: float = 0.2, epsilon_high: float | None = None,
    ref_logps: Any = None, beta: float = 0.0, loss_type: str = "dapo", max_completion_length: int = 1,
) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """The clipped objective over completion tokens, flattened: token ``i`` belongs to completion ``owners[i]``.

    Per token: ``-min(ρ A, clip(ρ, 1-ε, 1+ε_high) A) + β KL`` with ``ρ = exp(logp - old_logp)`` and the k3
    estimator ``KL = exp(ref - logp) - (ref - logp) - 1``. Normalisation: ``grpo`` means over each completion's
    tokens then over completions; ``dapo`` means over all tokens; ``dr_grpo`` sums and divides by
    completions x ``max_completion_length``.
    """
    import torch

    high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[owners]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats: dict[str, float] = {"clip_ratio": float(((ratio < 1 - epsilon) | (ratio > 1 + high)).float().mean()),
                               "ratio_mean": float(ratio.detach().mean())}  # fmt: skip
    if beta and ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
        stats["kl"] = float(kl.detach().mean())
    n = len(advantages)
    if loss_type == "grpo":
        sums = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add(0, owners, per_token)
        counts = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add(
            0, owners, torch.ones_like(per_token)
        )
        loss = (sums / counts.clamp(min=1)).mean()
    elif loss_type == "dapo":
        loss = per_token.sum() / max(len(per_token), 1)
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (n * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return loss, stats


class RepeatedChunks:
    """A sampler giving ``base``'s indices in chunks of ``chunk``, each chunk ``repeats`` times in a row. With
    ``chunk`` = per-device batch x processes x accumulation steps, every process sees the batches of one optimiser
    step ``repeats`` times, in the same order (accelerate hands consecutive batches to consecutive processes)."""

    def __init__(self, base: Any, chunk: int, repeats: int) -> None:
        self.base, self.chunk, self.repeats = base, chunk, repeats

    def __iter__(self) -> Any:
        indices = list(self.base)
        for start in range(0, len(indices), self.chunk):
            for _ in range(self.repeats):
                yield from indices[start : start + self.chunk]

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def set_epoch(self, epoch: int) -> None:  # (a distributed base sampler reshuffles per epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def _trainer_class() -> type:
    import torch
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from qwenvl.data.preference import PROMPT_KEYS, collate_sequences
    from qwenvl.train import checkpoints
    from qwenvl.train.policy import model_inputs, token_logps
    from qwenvl.train.rewards import score
    from qwenvl.train.rollout_server import write_weights
    from qwenvl.train.trainer import QwenVLTrainer

    class GRPOTrainer(QwenVLTrainer):
        """``QwenVLTrainer`` whose training step first samples and scores completions (see the module doc)."""

        def __init__(self, *args: Any, grpo_args: GRPOArguments, rewards: list, reference: str, encoder: Any,
                     family: Any, packed: bool = False, dummy: Any = None, ref_model: Any = None,
                     server: Any = None, sync_dir: str | None = None, **kwargs: Any) -> None:  # fmt: skip
            super().__init__(*args, **kwargs)
            self.grpo_args = grpo_args
            self.rewards = rewards
            self.reference = reference
            self.encoder = encoder
            self.family = family
            self.packed = packed
            self.dummy = dummy
            self.ref_model = ref_model
            self.model_accepts_loss_kwargs = False  # a mean per step: Trainer divides by accumulation steps
            self.rl_metrics: dict[str, list[float]] = defaultdict(list)
            tok = self.processing_class.tokenizer
            self.pad_id = tok.pad_token_id
            self.end_ids = sorted({tok.convert_tokens_to_ids("<|im_end|>")} | ({tok.eos_token_id} - {None}))
            # Media placeholders and turn openers in a completion would break the training forward (an image token
            # without pixels) or the sample's structure: rollouts never sample them.
            reserved = {tok.convert_tokens_to_ids(t) for t in encoder.encoder.reserved}
            self.suppressed = sorted(reserved - set(self.end_ids) - {None, tok.unk_token_id})
            if ref_model is not None:
                ref_model.to(self.args.device)
            self.reuse: dict[tuple[str, ...], list[Any]] = {}  # --num_iterations: batch -> [rollout, passes left]
            self.server = server  # --rollout_backend vllm_server: a RolloutServer
            self.sync_dir = Path(sync_dir) if sync_dir else Path(self.args.output_dir) / "vllm_weights"
            self.synced_step: int | None = None  # the optimiser step whose weights the server holds (None: unchecked)
            self.probe: dict[str, Any] | None = None  # the prompt item the server's weights are checked on
            # ZeRO-3 partitions the weights: the sync gathers them and the probe's forward runs on every rank, in step
            self.zero3 = server is not None and is_deepspeed_zero3_enabled()

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            base = super()._get_train_sampler(train_dataset)
            mu = self.grpo_args.num_iterations
            if mu == 1 or base is None:
                return base
            chunk = (
                self.args.per_device_train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
            )
            return RepeatedChunks(base, chunk, mu)

        # -------------------------------------------------------------------------------------------- rollouts

        @torch.no_grad()
        def rollout(self, model: Any, prompts: list[dict[str, Any]]) -> dict[str, Any]:
            """Sample G completions per prompt, score them, and build the training batch with advantages."""
            args, group = self.grpo_args, self.grpo_args.num_generations
            samples, totals, log_rows = [], [], []
            per_reward: dict[str, list[float]] = defaultdict(list)
            failures: dict[str, int] = defaultdict(int)
            lengths: list[float] = []
            sampler_logps: list[float] = []
            tokenizer = self.processing_class.tokenizer
            step = self.state.global_step + 1
            if self.server is not None:
                seeds = [(self.args.seed * 1_000_003 + step * 10_007 + self.args.process_index * 101 + i) % 2**31
                         for i in range(len(prompts))]  # fmt: skip
                gen = {"max_tokens": args.max_completion_length, "temperature": args.temperature, "top_p": args.top_p,
                       "top_k": args.top_k}  # fmt: skip
                drawn = self.server.sample(prompts, group, gen, seeds, self.end_ids, self.suppressed)
                rows = [[c.ids for c in choices] for choices in drawn]
                logps = [[c.logps for c in choices] for choices in drawn]
            else:
                seeds = [None] * len(prompts)
                rows = [self.generate_hf(model, item, group) for item in prompts]
                logps = [[None] * group for _ in prompts]
            for item, seed, group_rows, group_logps in zip(prompts, seeds, rows, logps):
                prompt, record = item["prompt"], item["record"]
                for row, row_logps in zip(group_rows, group_logps):
                    ends = [i for i, t in enumerate(row) if t in self.end_ids]
                    ids = row[: ends[0] + 1] if ends else row
                    if row_logps is not None:
                        sampler_logps += row_logps[: len(ids)]
                    text = tokenizer.decode([t for t in ids if t not in self.end_ids], skip_special_tokens=False)
                    completion = prompt["opened"] + text
                    total, values, reasons = 0.0, {}, {}
                    for reward in self.rewards:
                        value, reason = score(reward, completion, record.solution, record=record.extra,
                                              family=self.family)  # fmt: skip
                        values[reward.name] = value
                        per_reward[reward.name].append(value)
                        if reason is not None:
                            reasons[reward.name] = reason
                            failures[reward.name] += 1
                            if failures[reward.name] <= 3:
                                logger.warning("reward %s gave 0 to a rollout of %s: %s (answer %r)", reward.name,
                                               record.id, reason, text[:120])  # fmt: skip
                        total += reward.weight * value
                    totals.append(total)
                    lengths.append(float(len(ids)))
                    samples.append(self.encoder.join(prompt, torch.tensor(ids, dtype=torch.long), record.id))
                    log_rows.append({"id": record.id, "completion": completion, "truncated": not ends,
                                     "reward": total, "rewards": values, "failures": reasons, "token_ids": ids,
                                     **({"seed": seed} if seed is not None else {})})  # fmt: skip
            rewards = torch.tensor(totals, dtype=torch.float32)
            advantages = group_advantages(rewards, group, args.scale_rewards)
            batch = collate_sequences(samples, self.pad_id, self.packed, self.dummy)
            batch["advantages"] = advantages
            batch["sample_ids"] = [item["id"] for item in prompts]
            if self.server is not None:  # (in the order of the completion tokens the loss selects)
                batch["sampler_logps"] = torch.tensor(sampler_logps, dtype=torch.float32)
            grouped = rewards.view(-1, group)
            metrics = self.rl_metrics
            metrics["reward"] += rewards.tolist()
            metrics["reward_std"] += grouped.std(dim=1).tolist()
            metrics["frac_reward_zero_std"] += (grouped.std(dim=1) == 0).float().tolist()
            metrics["completion_length"] += lengths
            for name, values in per_reward.items():
                failed = failures.get(name, 0)
                metrics[f"rewards/{name}"] += values
                metrics[f"rewards/{name}/failure_rate"] += [0.0] * (len(values) - failed) + [1.0] * failed
            if failures:
                logger.warning("rollouts of step %d: %s reward(s) gave 0 for an unreadable answer or an error",
                               step, dict(failures))  # fmt: skip
            if args.log_rollouts:
                rank = self.args.process_index
                path = Path(self.args.output_dir) / ("rollouts.jsonl" if rank == 0 else f"rollouts-rank{rank}.jsonl")
                with path.open("a", encoding="utf-8") as f:
                    for row, adv in zip(log_rows, advantages.tolist()):
                        f.write(json.dumps({"step": step, **row, "advantage": round(adv, 4)}) + "\n")
            return batch

        def generate_hf(self, model: Any, item: dict[str, Any], group: int) -> list[list[int]]:
            """``group`` completions of one prompt item with HF ``generate`` (token ids after the prompt)."""
            args = self.grpo_args
            unwrapped = self.accelerator.unwrap_model(model)
            # ZeRO-3 gathers each layer's weights from every rank at every forward: all ranks go on generating
            # until the last one is done, or a rank that finished early would leave the others waiting forever.
            synced = is_deepspeed_zero3_enabled() and self.args.world_size > 1
            prompt = item["prompt"]
            inputs = {k: prompt[k] for k in PROMPT_KEYS if k in prompt}
            inputs["input_ids"] = inputs["input_ids"].unsqueeze(0)
            inputs["mm_token_type_ids"] = inputs["mm_token_type_ids"].unsqueeze(0)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            inputs = {k: v.to(self.args.device) for k, v in inputs.items()}
            n_prompt = inputs["input_ids"].shape[1]
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                out = unwrapped.generate(
                    **inputs, do_sample=True, num_return_sequences=group, max_new_tokens=args.max_completion_length,
                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or None, use_cache=True,
                    pad_token_id=self.pad_id, eos_token_id=self.end_ids, suppress_tokens=self.suppressed,
                    synced_gpus=synced,
                )  # fmt: skip
            finally:
                unwrapped.train(was_training)
            return out[:, n_prompt:].cpu().tolist()

        # -------------------------------------------------------------------------------------------- vLLM server

        def server_gap(self, model: Any) -> float:
            """Mean |log-prob difference| between the server and the policy on the server's greedy answer to the
            probe prompt (rank 0 only; under ZeRO-3 every rank, in step: the forward gathers each layer from all
            ranks, so all score rank 0's probe and answer, which run the same modules, and return rank 0's gap)."""
            item, answer = self.probe, None
            if self.args.process_index == 0:
                answer = self.server.greedy(item, self.end_ids, self.suppressed)
            if self.zero3:
                item, answer = _from_rank0((item, answer))
            sample = self.encoder.join(item["prompt"], torch.tensor(answer.ids, dtype=torch.long), item["id"])
            inputs = self._prepare_inputs(collate_sequences([sample], self.pad_id))
            unwrapped = self.accelerator.unwrap_model(model)
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                with torch.no_grad():
                    logits = unwrapped(**model_inputs(inputs)).logits
            finally:
                unwrapped.train(was_training)
            labels = inputs["labels"]
            ours = token_logps(logits, labels)[labels[:, 1:].ne(-100)].cpu()
            gap = float((ours - torch.tensor(answer.logps)).abs().mean())
            return _from_rank0(gap) if self.zero3 else gap

        def sync_server(self, model: Any) -> None:
            """Load the policy's weights into the server and check that it now answers as the policy (rank 0
            writes and checks, the other ranks wait; under ZeRO-3 they gather the weights and score the probe with
            it)."""
            if self.args.process_index == 0 or self.zero3:
                self.load_into_server(model)
            self.accelerator.wait_for_everyone()
            self.synced_step = self.state.global_step

        def load_into_server(self, model: Any, before: float | None = None) -> None:
            """:meth:`sync_server`'s work on rank 0 (under ZeRO-3 on every rank): write, reload, probe (``before``:
            the gap already measured)."""
            start = time.monotonic()
            rank0 = self.args.process_index == 0
            before = self.server_gap(model) if before is None else before
            nbytes = write_weights(self.accelerator.unwrap_model(model), self.sync_dir, self.family, zero3=self.zero3,
                                   writer=rank0)  # fmt: skip
            written = time.monotonic()
            if rank0:
                self.server.reload(self.sync_dir)
            after = self.server_gap(model)
            tol = self.grpo_args.vllm_sync_tolerance
            if after > tol:
                raise UserError(
                    f"the weight sync did not take effect: after reloading {self.sync_dir} the server's log-probs "
                    f"differ from the policy's by {after:.3g} on average (before: {before:.3g}; --vllm_sync_tolerance "
                    f"{tol}); the server must read that same folder and serve --model_name_or_path's model "
                    f"({self.server.hint}), and one in a lower precision than training needs a larger tolerance"
                )  # fmt: skip
            if rank0:
                logger.info("vLLM server synced to step %d: %.1f MB written in %.1f s, reloaded in %.1f s; mean "
                            "|log-prob gap| %.2g -> %.2g", self.state.global_step, nbytes / 2**20, written - start,
                            time.monotonic() - written, before, after)  # fmt: skip

        def check_server(self, model: Any, item: dict[str, Any]) -> None:
            """Before training from the starting weights: the server must render ``item`` (a prompt item, kept as
            the probe of later syncs) as training does and answer it as the policy does; a server holding other
            weights (an earlier run's) gets the policy's (rank 0 checks, the other ranks wait; under ZeRO-3 they
            check rank 0's item with it)."""
            self.probe = item
            if self.args.process_index == 0 or self.zero3:
                gap, tol = self.server_gap(model), self.grpo_args.vllm_sync_tolerance
                if gap > tol and self.args.process_index == 0:
                    logger.warning("the vLLM server at %s holds other weights than the policy (mean |log-prob gap| "
                                   "%.3g > --vllm_sync_tolerance %s): loading the policy's", self.server.root, gap,
                                   tol)  # fmt: skip
                if gap > tol:
                    self.load_into_server(model, before=gap)
            self.accelerator.wait_for_everyone()
            self.synced_step = self.state.global_step

        def prepare_rollout_server(self, model: Any, prompts: list[dict[str, Any]]) -> None:
            """Before a rollout: the first one checks the server (a resumed run syncs it first), later ones sync
            it every ``--vllm_sync_steps`` optimiser steps."""
            if self.synced_step is None:
                if self.state.global_step > 0:  # resumed: the server still holds the starting weights
                    self.probe = prompts[0]
                    self.sync_server(model)
                else:
                    self.check_server(model, prompts[0])
            elif self.state.global_step - self.synced_step >= self.grpo_args.vllm_sync_steps:
                self.sync_server(model)

        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
            key = tuple(item["id"] for item in inputs["prompts"])
            held = self.reuse.pop(key, None)
            if held is None:  # a new batch: sample it (and keep it for the passes still to come)
                checkpoints.crash_point("rollout", self.state.global_step + 1, self.args.process_index)
                if self.server is not None:
                    self.prepare_rollout_server(model, inputs["prompts"])
                batch = self.rollout(model, inputs["prompts"])
                if self.grpo_args.num_iterations > 1:
                    batch["old_logps"] = self.sampling_logps(model, batch)
                    later = {k: v for k, v in batch.items() if k != "sampler_logps"}  # (the sampler's: first pass)
                    self.reuse[key] = [later, self.grpo_args.num_iterations - 1]
            else:  # a later pass over the same completions (the sampler repeats the batch)
                batch = held[0]
                if held[1] > 1:
                    self.reuse[key] = [batch, held[1] - 1]
            self.rl_metrics["reused_rollouts"].append(float(held is not None))
            return super().training_step(model, batch, num_items_in_batch)

        @torch.no_grad()
        def sampling_logps(self, model: Any, batch: dict[str, Any]) -> Any:
            """The completion tokens' log-probs under the policy that sampled them (the ratio's denominator on
            every pass after the first)."""
            inputs = self._prepare_inputs(dict(batch))
            labels = inputs["labels"]
            logits = model(**model_inputs(inputs)).logits
            return token_logps(logits, labels)[labels[:, 1:].ne(-100)].detach().cpu()

        # -------------------------------------------------------------------------------------------- loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
            args = self.grpo_args
            labels, segments = inputs["labels"], inputs["segments"]
            outputs = model(**model_inputs(inputs))
            mask = labels[:, 1:].ne(-100)
            logps = token_logps(outputs.logits, labels)[mask]
            owners = segments[:, 1:][mask].to(logps.device)
            ref = None
            if self.reference != "none":
                with torch.no_grad():
                    if self.reference == "adapters":
                        unwrapped = self.accelerator.unwrap_model(model)
                        with unwrapped.disable_adapter():
                            ref_logits = unwrapped(**model_inputs(inputs)).logits
                    else:
                        ref_logits = self.ref_model(**model_inputs(inputs)).logits
                    ref = token_logps(ref_logits, labels)[mask]
            old = inputs.get("old_logps")  # (on the first pass, or with one pass, the policy is the sampler)
            loss, stats = grpo_loss(
                logps, logps.detach() if old is None else old.to(logps.device), owners, inputs["advantages"].to(logps.device), args.epsilon, args.epsilon_high,
                ref, args.beta, args.loss_type, args.max_completion_length,
            )  # fmt: skip
            for key, value in stats.items():
                self.rl_metrics[key].append(value)
            sampler = inputs.get("sampler_logps")
            if sampler is not None:  # how far the server that sampled is from the policy (0 when in sync)
                gap = (logps.detach() - sampler.to(logps.device)).abs().mean()
                self.rl_metrics["sampler_logp_gap"].append(float(gap))
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                for key in sorted(self.rl_metrics):
                    values = self.rl_metrics.pop(key)
                    local = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=self.args.device)
                    total = self.accelerator.reduce(local, reduction="sum")
                    logs[key] = round(float(total[0] / total[1].clamp(min=1)), 6)
            super().log(logs, start_time)

    return GRPOTrainer


def _from_rank0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank (a collective)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def build(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags and build everything up to the trainer: ``{"trainer", "resume", "settings", ...}``."""
    import os

    from qwenvl.train.arguments import parse_args
    from qwenvl.train.rewards import resolve_rewards

    model_args, data_args, training_args, grpo_args = parse_args(
        argv, prog="qwenvl grpo", launch=True, extra=(GRPOArguments,)
    )
    reference = grpo_args.resolve_reference(training_args.lora_enable)
    rewards = resolve_rewards(grpo_args.rewards, grpo_args.reward_weights)
    if data_args.data_flatten:
        raise UserError("--data_flatten does not apply to qwenvl grpo; use --data_packing True to pack completions")
    if data_args.eval_dataset_use:
        raise UserError("--eval_dataset_use is not supported by qwenvl grpo yet; evaluate the saved model instead")

    from qwenvl.data.collate import DummyMedia
    from qwenvl.data.dataset import Quarantine
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.data.preference import PromptDataset, PromptEncoder, collate_prompts, load_prompt_records
    from qwenvl.model.budget import MediaBudget
    from qwenvl.model.preprocessing import PreprocessingSettings
    from qwenvl.train.policy import frozen_copy, resume_checkpoint, setup_policy

    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    budget = MediaBudget.from_attrs(data_args)
    server = None
    if grpo_args.rollout_backend == "vllm_server":  # checked before the model loads: a wrong URL fails at once
        from qwenvl.model.loader import read_family
        from qwenvl.train.rollout_server import RolloutServer

        for name in ("httpx", "httpx2"):  # one INFO line per request otherwise, several per step
            logging.getLogger(name).setLevel(logging.WARNING)
        family = read_family(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
        server = RolloutServer(grpo_args.vllm_url, model_args.model_name_or_path, family, budget)
    policy = setup_policy(model_args, training_args)
    model, processor, family = policy["model"], policy["processor"], policy["family"]
    ref_model = frozen_copy(model) if reference == "copy" else None
    encoder = PromptEncoder(SampleEncoder(processor, family, budget, policy["tokens_per_second"]))
    quarantine = Quarantine(Path(training_args.output_dir) / "quarantine.jsonl")
    records = load_prompt_records(data_args.dataset_use, data_args.dataset_registry, data_args.data_seed_sampling,
                                  data_args.bad_records, data_args.media_root, kind="prompt")  # fmt: skip
    if server is not None and any(isinstance(m["content"], list) and any(i.get("type") == "video" for i in m["content"])
                                  for r in records for m in r.prompt):  # fmt: skip
        server.check_video_settings()
    dataset = PromptDataset(records, encoder, training_args.model_max_length, data_args.bad_media, quarantine)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dummy = DummyMedia.from_processor(processor, family) if world > 1 or training_args.deepspeed else None
    settings = PreprocessingSettings(model_type=family.model_type, patch_size=family.patch_size, budget=budget,
                                     model_max_length=training_args.model_max_length)  # fmt: skip
    trainer = _trainer_class()(
        model=model, args=training_args, train_dataset=dataset, data_collator=collate_prompts,
        processing_class=processor, component_lrs=policy["lrs"], preprocessing=settings, grpo_args=grpo_args,
        rewards=rewards, reference=reference, encoder=encoder, family=family, packed=data_args.data_packing,
        dummy=dummy, ref_model=ref_model, server=server, sync_dir=grpo_args.vllm_sync_dir,
    )  # fmt: skip
    return {"trainer": trainer, "resume": resume_checkpoint(training_args), "settings": settings, "model": model,
            "reference": reference, "grpo_args": grpo_args}  # fmt: skip


def train(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags and run GRPO; returns the final metrics (``reward_curve``: mean reward per logged step)."""
    built = build(argv)  # parses the flags before anything heavy is imported
    from qwenvl.train.policy import finish

    trainer = built["trainer"]
    # A wrong server fails before the progress bar (under ZeRO-3 at the first step: the probe's forward needs the
    # DeepSpeed engine, made by train(), to gather the partitioned weights).
    if trainer.server is not None and built["resume"] is None and not trainer.zero3:
        trainer.check_server(trainer.model, trainer.train_dataset[0])
    result = trainer.train(resume_from_checkpoint=built["resume"])
    if trainer.server is not None and trainer.synced_step not in (None, trainer.state.global_step):
        trainer.sync_server(trainer.model)  # the server ends with the trained weights
    metrics = dict(result.metrics)
    history = [e for e in trainer.state.log_history if "loss" in e]
    metrics["reward_curve"] = [[e["step"], e.get("reward")] for e in history]
    metrics.update(reference=built["reference"], resumed_from=built["resume"])
    finish(trainer, built["model"], built["settings"], metrics, "grpo")
    return metrics


def main(argv: list[str] | None = None) -> int:
    from qwenvl.cli import run_trainer

    return run_trainer(train, argv)


if __name__ == "__main__":
    sys.exit(main())
