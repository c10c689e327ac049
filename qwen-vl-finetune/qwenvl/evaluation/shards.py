"""Running one evaluation on several processes: shards, their files, and joining them.

A run with ``--num-shards N --shard-index I`` (or started by ``torchrun``, which sets ``WORLD_SIZE`` / ``RANK``)
answers every N-th question from the I-th on, into ``<output>.shard-I-of-N<suffix>`` with its own manifest that
lists the ids it was given. ``merge`` joins the shards into the output file and refuses when an id is missing from
its shard or written twice. ``--data-parallel-size N`` starts the N shard processes itself (each with its share of
the visible GPUs) and merges them when all are done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from qwenvl.cli import UserError


T = TypeVar("T")


class ShardError(UserError):
    """Shards that cannot be merged (missing or duplicated ids, a shard not written); the message names them."""


def shard_from_env(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``(num_shards, index)`` from the flags, else from torchrun's ``WORLD_SIZE`` / ``RANK``, else ``(1, 0)``."""
    if num_shards is None and shard_index is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return (world, int(os.environ.get("RANK", "0"))) if world > 1 else (1, 0)
    if num_shards is None or shard_index is None:
        raise UserError("--num-shards and --shard-index go together (or neither, under torchrun)")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} must be in 0..{num_shards - 1} (--num-shards {num_shards})")
    return num_shards, shard_index


def shard_path(output: Path, num_shards: int, index: int) -> Path:
    """``results.jsonl`` -> ``results.shard-1-of-4.jsonl``; the output itself for one shard."""
    if num_shards == 1:
        return output
    return output.with_name(f"{output.stem}.shard-{index}-of-{num_shards}{output.suffix}")


def select(items: Sequence[T], num_shards: int, index: int) -> list[T]:
    """The shard's items: every ``num_shards``-th from ``index`` (the same split on every process)."""
    return list(items[index::num_shards])


def merge(
    output: Path,
    num_shards: int,
    read: Callable[[Path], list[dict[str, Any]]],
    expected: Callable[[Path], list[str] | None],
) -> list[dict[str, Any]]:
    """The records of all shards of ``output``, each shard's in its order, after checking that every shard holds
    exactly the ids it was given (``expected(shard)``, from its manifest) and no id is written twice."""
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for index in range(num_shards):
        path = shard_path(output, num_shards, index)
        if not path.exists():
            problems.append(f"shard {index}: {path} does not exist (run it: --num-shards {num_shards} "
                            f"--shard-index {index})")  # fmt: skip
            continue
        lines = read(path)
        ids = [r["id"] for r in lines]
        for qid in ids:
            if qid in seen:
                problems.append(f"{qid} is in shard {seen[qid]} and shard {index}")
            seen.setdefault(qid, index)
        wanted = expected(path)
        if wanted is not None:
            missing = [q for q in wanted if q not in set(ids)]
            if missing:
                problems.append(f"shard {index} lacks {len(missing)} of its {len(wanted)} ids (first: {missing[0]}); "
                                "rerun that shard, it resumes")  # fmt: skip
        records += lines
    if problems:
        raise ShardError(f"cannot merge the shards of {output}: " + "; ".join(problems[:10]))
    return records


def launch_data_parallel(argv: list[str], workers: int, gpus_per_worker: int, module: str) -> None:
    """Run ``python -m module argv --num-shards W --shard-index i`` for every worker at once, worker i on its own
    ``gpus_per_worker`` of the visible GPUs; raise naming the first worker that failed."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    if devices is None:
        try:
            import torch

            devices = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        except ImportError:
            devices = []
    if devices and len(devices) < workers * gpus_per_worker:
        raise UserError(
            f"--data-parallel-size {workers} x --tensor-parallel-size {gpus_per_worker} needs "
            f"{workers * gpus_per_worker} GPUs, {len(devices)} are visible"
        )
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[i * gpus_per_worker : (i + 1) * gpus_per_worker])
        cmd = [sys.executable, "-m", module, *argv, "--num-shards", str(workers), "--shard-index", str(i)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        raise ShardError(
            f"data-parallel worker(s) {failed} failed (exit {codes[failed[0]]}); rerun: the shards resume"
        )


def read_manifest_ids(manifest: Path) -> list[str] | None:
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("shard", {}).get("ids")
    except ValueError:
        return None
