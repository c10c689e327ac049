"""The options of ``infer`` that every benchmark shares: backend (:class:`BackendConfig`), shards, batch, decoding
(presets: greedy ``default`` and upstream's ``instruct`` / ``think``), and the pixel budget (the checkpoint's
saved one, with the flags' overrides)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qwenvl.inference.config import BackendConfig
from qwenvl.model.families import FAMILIES


# ----------------------------------------------------------------------------------------------- flags


FAMILY_CHOICES = sorted(FAMILIES)
DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty")


def add_infer_arguments(p: argparse.ArgumentParser, presets: dict[str, dict[str, Any]], seed: int = 42) -> None:
    """The flags every benchmark's ``infer`` takes: output, backend (hf, vllm, openai), shards, batch, decoding
    (``presets["default"]`` unless ``--preset`` names another; a flag given wins over its preset)."""
    p.add_argument("--output-file", required=True,
                   help="results JSONL (appended to: a rerun resumes), with <name>.manifest.json beside it")  # fmt: skip
    BackendConfig.add_arguments(p)
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="run N shard processes (each --tensor-parallel-size GPUs) and merge them")  # fmt: skip
    p.add_argument("--num-shards", type=int, default=None, help="this process answers one of N shards")
    p.add_argument("--shard-index", type=int, default=None, help="which shard (0..N-1); torchrun sets both")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generate call (and per write)")
    named = [k for k in presets if k != "default"]
    described = "; ".join(
        f"{k}: T {v['temperature']}, top-p {v['top_p']}, top-k {v['top_k']}, presence {v['presence_penalty']}, "
        f"{v['max_new_tokens']} tokens"
        for k, v in presets.items()
        if k != "default"
    )
    p.add_argument("--preset", default=None, choices=named, help=f"upstream's settings ({described})")
    default = presets["default"]
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default {default['max_new_tokens']}")
    p.add_argument("--temperature", type=float, default=None, help=f"default {default['temperature']} (0 = greedy)")
    p.add_argument("--top-p", type=float, default=None, help=f"default {default['top_p']}")
    p.add_argument("--top-k", type=int, default=None, help=f"default {default['top_k']} (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"default {default['repetition_penalty']}")
    p.add_argument("--presence-penalty", type=float, default=None, help=f"default {default['presence_penalty']}")
    p.add_argument("--seed", type=int, default=seed, help="sampling seed (default %(default)s)")
    p.add_argument(
        "--allow-settings-change",
        action="store_true",
        help="resume into a file whose answers were made with other answer-changing settings (recorded per segment)",
    )


def generation_settings(args: argparse.Namespace, presets: dict[str, dict[str, Any]]) -> Any:
    """Decoding settings: the preset's values, each replaced by its flag when given."""
    from qwenvl.inference.base import GenerationSettings

    values = dict(presets[args.preset or "default"])
    for key in DECODING_FIELDS:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return GenerationSettings(**{k: values[k] for k in DECODING_FIELDS}, seed=args.seed)


def load_backend_from_args(args: argparse.Namespace, budget: Any) -> Any:
    """The backend of the parsed flags (:class:`BackendConfig`), with ``budget`` and ``--seed``."""
    from qwenvl.inference import load_backend

    return load_backend(BackendConfig.from_args(args), budget=budget, seed=args.seed)


def resolve_budget(args: argparse.Namespace, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's budget with the flags' non-None ``overrides``, and its manifest entry; a flag that departs
    from what the checkpoint was trained with is warned about."""
    from qwenvl.model.preprocessing import checkpoint_budget, load_preprocessing

    budget, source = checkpoint_budget(args.model_path, **overrides)
    saved = load_preprocessing(args.model_path) if args.model_path and Path(args.model_path).is_dir() else None
    drift = {
        k: (getattr(budget, k), getattr(saved.budget, k))
        for k, v in overrides.items()
        if saved is not None and v is not None and getattr(budget, k) != getattr(saved.budget, k)
    }
    for key, (flag, trained) in drift.items():
        print(
            f"warning: --{key.replace('_', '-')} {flag} differs from the {trained} this checkpoint was trained with "
            f"({args.model_path}/qwenvl_preprocessing.json); scores may not reflect the trained model",
            file=sys.stderr,
        )
    entry = {
        "drift_from_checkpoint": {k: {"flag": f, "trained": t} for k, (f, t) in drift.items()},
        "source": source,
        **{k: v for k, v in budget.to_dict().items() if v is not None},
    }
    return budget, entry


def upstream_presets(default_tokens: int, think_temperature: float, think_tokens: int) -> dict[str, dict[str, Any]]:
    """Greedy ``default`` decoding and upstream's ``instruct`` / ``think`` shell presets (the think preset's
    temperature and token limit differ between upstream's benchmarks)."""
    return {
        "default": dict(max_new_tokens=default_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                        presence_penalty=0.0),
        "instruct": dict(max_new_tokens=32768, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0,
                         presence_penalty=1.5),
        "think": dict(max_new_tokens=think_tokens, temperature=think_temperature, top_p=0.95, top_k=20,
                      repetition_penalty=1.0, presence_penalty=0.0),
    }  # fmt: skip
