"""``qwenvl grpo``'s own flags (the rest are ``qwenvl train``'s: model, data, LoRA, Trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class GRPOArguments:
    GROUP = "reinforcement (grpo)"

    rewards: str = field(
        default="exact",
        metadata={"help": "comma-separated rewards: exact, choice, numeric, iou, format, or module:function "
                  "(see qwenvl/train/rewards.py)"},
    )  # fmt: skip
    reward_weights: str | None = field(
        default=None, metadata={"help": "comma-separated weights, one per reward (default: all 1)"}
    )
    num_generations: int = field(default=4, metadata={"help": "G: completions sampled per prompt"})
    max_completion_length: int = field(default=64, metadata={"help": "most tokens generated per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the rollouts"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling of the rollouts (0: off)"})
    beta: float = field(
        default=0.0, metadata={"help": "weight of the KL term to the reference (0: no reference model is used)"}
    )
    epsilon: float = field(default=0.2, metadata={"help": "clip range of the policy ratio (lower side)"})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "upper clip range (DAPO's clip-higher; default: --epsilon)"}
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = field(
        default="dapo",
        metadata={"help": "normalisation: grpo (mean over each completion's tokens, then over completions), dapo "
                  "(token-level: sum over all tokens / their count), dr_grpo (sum / (completions x "
                  "--max_completion_length))"},
    )  # fmt: skip
    scale_rewards: Literal["group", "none"] = field(
        default="group", metadata={"help": "divide advantages by the group's std (group) or not (none, Dr. GRPO)"}
    )
    reference: Literal["auto", "adapters", "copy"] = field(
        default="auto",
        metadata={"help": "KL reference when --beta > 0: adapters (LoRA off, one copy), copy (frozen copy); "
                  "auto = adapters with LoRA, else copy"},
    )  # fmt: skip
    num_iterations: int = field(
        default=1,
        metadata={"help": "optimisation passes over each rollout batch (mu): its prompts come back mu times in a row "
                  "and train on the same completions, clipped against their log-probs at sampling time"},
    )  # fmt: skip
    rollout_backend: Literal["hf", "vllm_server"] = field(
        default="hf",
        metadata={"help": "who samples the rollouts: hf (generate in the training process) or vllm_server (an "
                  "OpenAI-compatible vLLM server at --vllm_url, started with VLLM_SERVER_DEV_MODE=1 on "
                  "--model_name_or_path; its weights are synced with the policy's, see --vllm_sync_steps)"},
    )  # fmt: skip
    vllm_url: str | None = field(
        default=None, metadata={"help": "--rollout_backend vllm_server: the server's root, e.g. http://127.0.0.1:8000"}
    )
    vllm_sync_steps: int = field(
        default=1,
        metadata={"help": "--rollout_backend vllm_server: load the policy's weights (LoRA merged) into the server "
                  "every N optimiser steps, and after the last one"},
    )  # fmt: skip
    vllm_sync_dir: str | None = field(
        default=None,
        metadata={"help": "--rollout_backend vllm_server: a folder the server can read, where the weights are "
                  "written for it (default: output_dir/vllm_weights)"},
    )  # fmt: skip
    vllm_sync_tolerance: float = field(
        default=0.05,
        metadata={"help": "--rollout_backend vllm_server: largest mean |log-prob difference| between the server and "
                  "the policy on a probe answer, checked before the first rollout and after every sync (raise it "
                  "when the server runs in a lower precision than training)"},
    )  # fmt: skip
    log_rollouts: bool = field(
        default=True, metadata={"help": "append every rollout, its rewards and failures to output_dir/rollouts.jsonl"}
    )

    def __post_init__(self) -> None:
        from qwenvl.cli import UserError

        if self.num_generations < 2:
            raise UserError(
                f"--num_generations must be at least 2 (advantages compare a group), got {self.num_generations}"
            )
        if self.max_completion_length < 1:
            raise UserError(f"--max_completion_length must be positive, got {self.max_completion_length}")
        if self.beta < 0:
            raise UserError(f"--beta must be >= 0, got {self.beta}")
        if not 0 < self.epsilon < 1 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise UserError("--epsilon must be in (0, 1) and --epsilon_high positive")
        if self.num_iterations < 1:
            raise UserError(f"--num_iterations must be at least 1 (passes over each rollout batch), got "
                            f"{self.num_iterations}")  # fmt: skip
        if self.rollout_backend == "vllm_server" and not self.vllm_url:
            raise UserError("--rollout_backend vllm_server needs --vllm_url (the server's root, e.g. "
                            "http://127.0.0.1:8000)")  # fmt: skip
        if self.rollout_backend != "vllm_server" and self.vllm_url:
            raise UserError("--vllm_url is only read with --rollout_backend vllm_server; pass that too")
        if self.vllm_sync_steps < 1:
            raise UserError(f"--vllm_sync_steps must be at least 1, got {self.vllm_sync_steps}")
        if self.vllm_sync_tolerance <= 0:
            raise UserError(f"--vllm_sync_tolerance must be positive, got {self.vllm_sync_tolerance}")
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive (rollouts are sampled), got {self.temperature}")

    def resolve_reference(self, lora: bool) -> str:
        from qwenvl.cli import UserError

        if self.beta == 0:
            return "none"
        if self.reference == "auto":
            return "adapters" if lora else "copy"
        if self.reference == "adapters" and not lora:
            raise UserError("--reference adapters needs --lora_enable True; use --reference copy")
        return self.reference
