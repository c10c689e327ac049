"""Crash-safe checkpoints: a checkpoint becomes visible only when complete, and resume takes the newest complete one.

Every rank writes ``checkpoint-N`` into ``output_dir/.partial/checkpoint-N`` (same file system, so the final
``os.replace`` is atomic). When all ranks have written their part, rank 0 adds ``qwenvl_preprocessing.json``,
flushes the files to disk and renames the folder to ``output_dir/checkpoint-N``; only then may
``save_total_limit`` delete older checkpoints. A process killed at any moment therefore leaves either the complete
checkpoint or none under its final name; what it left in ``.partial/`` is named in the log on the next start (and
replaced when the same step is saved again).

:func:`find_resume_checkpoint` checks every ``checkpoint-N`` for what a resume needs (weights, optimizer,
scheduler, RNG state, ``trainer_state.json``, ``qwenvl_preprocessing.json``) and skips, naming them, folders that
lack any of it (written by other tools, or copied half-way).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path


logger = logging.getLogger(__name__)

STAGING = ".partial"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
           "pytorch_model.bin.index.json", "adapter_model.bin")  # fmt: skip


FAULT_ENV = "QWENVL_FAULT_INJECT"
FAULT_POINTS = ("step_end", "save_begin", "after_model", "after_optimizer", "after_rng", "before_publish",
                "after_publish", "after_rotate", "rollout")  # fmt: skip


def crash_point(point: str, step: int, rank: int = 0) -> None:
    """Fault injection for the crash tests: ``QWENVL_FAULT_INJECT=after_model@3`` (or ``...@3:1`` for rank 1, ``:*``
    for whichever rank this process is)
    SIGKILLs this process when it reaches ``point`` at global step ``step``. Unset (always, outside tests): no-op."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, at = spec.partition("@")
    at_step, _, at_rank = at.partition(":")
    if where not in FAULT_POINTS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: the point must be one of {', '.join(FAULT_POINTS)}")
    if where == point and int(at_step) == step and (at_rank == "*" or int(at_rank or 0) == rank):
        import signal

        logger.warning("fault injection: SIGKILL at %s, step %d, rank %d", point, step, rank)
        os.kill(os.getpid(), signal.SIGKILL)


def staging_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / STAGING


def missing_parts(folder: str | Path) -> list[str]:
    """What ``folder`` lacks to be resumed from (empty when it is complete). A DeepSpeed checkpoint keeps weights and
    optimizer in its ``global_step*`` folder."""
    folder = Path(folder)
    names = set(os.listdir(folder)) if folder.is_dir() else set()
    deepspeed = any(n.startswith("global_step") for n in names)
    missing = []
    if not deepspeed and not names & set(WEIGHTS):
        missing.append("model weights")
    if not deepspeed and "optimizer.pt" not in names:
        missing.append("optimizer.pt")
    for required in ("trainer_state.json", "qwenvl_preprocessing.json", "scheduler.pt"):
        if required not in names:
            missing.append(required)
    if not any(n.startswith("rng_state") for n in names):
        missing.append("rng_state*.pth")
    return missing


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` folder, newest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match[1]), entry))
    return sorted(found, reverse=True)


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or None. Incomplete ones and staged leftovers of a crash
    are named in the log, never deleted here."""
    partial = staging_dir(output_dir)
    if partial.is_dir():
        for leftover in sorted(partial.iterdir()):
            logger.warning(
                "ignoring %s: a checkpoint whose save was interrupted (it is replaced if that step is saved again; "
                "delete it to free the disk)",
                leftover,
            )
    for step, path in list_checkpoints(output_dir):
        missing = missing_parts(path)
        if not missing:
            return path
        logger.warning("skipping %s: incomplete, lacks %s", path, ", ".join(missing))
    return None


def clear_stale(path: Path) -> None:
    """Remove a staged checkpoint left by a crashed save of the same step (logged)."""
    if path.exists():
        logger.warning("removing %s, left by an interrupted save of the same step", path)
        shutil.rmtree(path)


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk (so a power loss cannot leave a renamed but
    empty checkpoint)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, final: Path) -> None:
    """Atomically make ``staged`` visible as ``final`` (an older folder of that name is replaced)."""
    fsync_tree(staged)
    if final.exists():  # the same step saved again (e.g. a run resumed with other save settings)
        old = staged.parent / f"{final.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)


# What the final save of a run writes (besides the weights) and a checkpoint holds too; optimizer, scheduler and RNG
# state are for resuming only.
RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "latest", "zero_to_fp32.py")


def checkpoint_step(folder: str | Path) -> tuple[int, float]:
    """``(global_step, epoch)`` recorded in ``folder/trainer_state.json``."""
    state = json.loads((Path(folder) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0)), float(state.get("epoch") or 0.0)


def reached_end(folder: str | Path, max_steps: int, num_train_epochs: float) -> bool:
    """Whether the checkpoint ``folder`` is the end of a run with these ``--max_steps`` / ``--num_train_epochs``
    (``max_steps`` wins when positive, as in transformers). Resuming from it would train past the end: transformers
    checks the step limit only after a step."""
    if not (Path(folder) / "trainer_state.json").is_file():
        return False  # not ours to judge: transformers says what is missing when it resumes
    step, epoch = checkpoint_step(folder)
    if max_steps > 0:
        return step >= max_steps
    return epoch >= num_train_epochs - 1e-6


def finished_output(output_dir: str | Path, step: int) -> bool:
    """Whether ``output_dir`` holds the final save of a run that ended at ``step`` (written after training:
    trainer_state.json at that step and train_summary.json)."""
    output_dir = Path(output_dir)
    if not (output_dir / "train_summary.json").is_file() or not (output_dir / "trainer_state.json").is_file():
        return False
    return checkpoint_step(output_dir)[0] >= step


def publish_final_from_checkpoint(checkpoint: str | Path, output_dir: str | Path) -> list[str]:
    """The final save of a run stopped after its last checkpoint but before the final save: copy the checkpoint's
    model, processor, preprocessing and trainer state files (what the final save writes; the same weights) into
    ``output_dir``. Returns the names copied; an empty list when the checkpoint has no loadable weights (a ZeRO-3
    checkpoint saved without gathering)."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    names = sorted(os.listdir(checkpoint))
    if not set(names) & set(WEIGHTS):
        return []
    copied = []
    for name in names:
        source = checkpoint / name
        if source.is_dir() or name in RESUME_ONLY or name.startswith("rng_state"):
            continue
        shutil.copy2(source, output_dir / name)
        copied.append(name)
    return copied
