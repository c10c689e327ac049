"""``qwenvl dpo``'s own flags (the rest are ``qwenvl train``'s: model, data, LoRA, Trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


LossType = Literal["sigmoid", "ipo", "simpo", "orpo"]
Reference = Literal["auto", "adapters", "copy", "precomputed", "none"]
REFERENCE_FREE = ("simpo", "orpo")


@dataclass
class DPOArguments:
    GROUP = "preference (dpo)"

    loss_type: LossType = field(
        default="sigmoid",
        metadata={"help": "sigmoid (DPO), ipo (IPO, length-normalised), simpo (SimPO, reference-free), "
                  "orpo (ORPO, reference-free, adds the chosen answers' NLL)"},
    )  # fmt: skip
    beta: float = field(
        default=0.1,
        metadata={"help": "inverse temperature of the implicit reward (IPO: the regulariser tau; ORPO: lambda)"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "conservative DPO / robust SimPO: the chance a pair is mislabelled, in [0, 0.5)"},
    )
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO's target reward margin gamma"})
    rpo_alpha: float = field(
        default=0.0,
        metadata={"help": "weight of the chosen answers' per-token NLL added to the loss (RPO; keeps the policy "
                  "generating the chosen answers while it learns the preference); 0 = off"},
    )  # fmt: skip
    reference: Reference = field(
        default="auto",
        metadata={"help": "reference model: adapters (LoRA switched off: one copy of the weights), copy (a frozen "
                  "copy, full tuning), precomputed (log-probs of the initial model computed once before training, "
                  "saved in output_dir/reference_logps.json; no second model in memory), none (simpo/orpo); "
                  "auto = adapters with LoRA, copy without, none for simpo/orpo"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        from qwenvl.cli import UserError

        if self.beta <= 0:
            raise UserError(f"--beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise UserError(f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type in REFERENCE_FREE:
            if self.reference not in ("auto", "none"):
                raise UserError(
                    f"--loss_type {self.loss_type} is reference-free; drop --reference {self.reference} "
                    "(or use --loss_type sigmoid / ipo)"
                )
            self.reference = "none"
        elif self.reference == "none":
            raise UserError(f"--loss_type {self.loss_type} needs a reference model; use --reference auto")
        if self.rpo_alpha < 0:
            raise UserError(f"--rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise UserError("--label_smoothing does not apply to --loss_type ipo; drop it")

    def resolve_reference(self, lora: bool) -> str:
        """The reference actually used (``auto`` resolved), checked against ``--lora_enable``."""
        from qwenvl.cli import UserError

        if self.reference == "auto":
            return "adapters" if lora else "copy"
        if self.reference == "adapters" and not lora:
            raise UserError("--reference adapters needs --lora_enable True; use --reference copy or precomputed")
        return self.reference
