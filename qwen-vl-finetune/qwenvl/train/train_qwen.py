"""Fine-tune a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE) with the HF Trainer.

Run (one GPU, several GPUs, or CPU with --use_cpu True)::

    torchrun --nproc_per_node=8 qwenvl/train/train_qwen.py \\
        --model_name_or_path Qwen/Qwen3-VL-8B-Instruct --dataset_use my_data --dataset_registry data.yaml \\
        --output_dir out --bf16 True --per_device_train_batch_size 4 --learning_rate 1e-5 \\
        [--deepspeed scripts/zero3.json] [--lora_enable True] [--data_packing True] [--config recipe.yaml]

also as ``python -m qwenvl.train.train_qwen ...``. The run resumes automatically from the newest
``output_dir/checkpoint-*`` (or from ``--resume_from_checkpoint``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from qwenvl.cli import UserError, report_error
from qwenvl.train.arguments import DataArguments, parse_args


logger = logging.getLogger("qwenvl.train")


def _init_deepspeed_comm(training_args: Any) -> None:
    """ZeRO-3 enters ``deepspeed.zero.Init`` inside ``from_pretrained``; it needs deepspeed.comm set up. On GPU
    accelerate does this; on CPU (gloo) it does not, so wrap the existing process group (a no-op otherwise)."""
    import torch

    if not training_args.deepspeed or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def build_datasets(
    data_args: DataArguments, training_args: Any, encoder: Any, quarantine: Any, report: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """The train (and eval) datasets; ``report`` receives the record counts of the train set."""
    from qwenvl.data.dataset import LengthCache, PackedDataset, SupervisedDataset, prefilter_overlong
    from qwenvl.data.packing import plan_packs
    from qwenvl.data.registry import load_records

    def make(dataset_use: str, packed: bool, report: dict[str, Any] | None) -> Any:
        invalid: list[tuple[str, str]] = []
        records = load_records(
            dataset_use, data_args.dataset_registry, seed=data_args.data_seed_sampling,
            bad_records=data_args.bad_records, media_root=data_args.media_root, invalid=invalid,
        )  # fmt: skip
        read = len(records)
        # One cache per output dir: a resumed run skips reading every media header again.
        cache = LengthCache(Path(training_args.output_dir) / "length_cache.json", encoder)
        estimates = cache.estimates(records)
        records, estimates = prefilter_overlong(
            records, estimates, training_args.model_max_length, data_args.overlong, quarantine
        )
        if report is not None:
            report.update(records_read=read + len(invalid), invalid_records=[{"where": w, "reason": r} for w, r in invalid],
                          usable_records=len(records))  # fmt: skip
        if not records:
            raise UserError(f"no usable records in --dataset_use {dataset_use!r}")
        base = SupervisedDataset(
            records, encoder, training_args.model_max_length, data_args.bad_media, data_args.overlong, quarantine,
            seed=data_args.data_seed_sampling,
        )  # fmt: skip
        if not packed:
            return base
        lengths = [min(e.total, training_args.model_max_length) for e in estimates]
        # Upstream's pre-packed files: each inner list stays one pack; the other records are planned.
        fixed: dict[int, list[int]] = {}
        free = []
        for i, record in enumerate(records):
            (fixed.setdefault(record.pack, []) if record.pack is not None else free).append(i)
        if not fixed:
            return PackedDataset(base, lengths, data_args.max_packed_tokens)
        for members in fixed.values():
            total = sum(lengths[i] for i in members)
            if total > data_args.max_packed_tokens:
                raise UserError(
                    f"a pre-packed group starting at {records[members[0]].id} has {total} tokens, more than "
                    f"--max_packed_tokens {data_args.max_packed_tokens}; raise it or re-pack the file"
                )
        planned = plan_packs([lengths[i] for i in free], data_args.max_packed_tokens)
        packs = list(fixed.values()) + [[free[j] for j in pack] for pack in planned]
        return PackedDataset(base, lengths, data_args.max_packed_tokens, packs=packs)

    train = make(data_args.dataset_use, data_args.data_packing, report)
    evaluation = make(data_args.eval_dataset_use, data_args.data_packing, None) if data_args.eval_dataset_use else None
    return train, evaluation


# What a run writes into --output_dir before its first checkpoint: a failed run that leaves only these (in a folder
# it created) removes the folder again, so that a failure does not leave an empty run behind.
SCRATCH = ("length_cache.json", "quarantine.jsonl", ".partial")


def _remove_failed_output(output_dir: Path) -> None:
    """Remove ``output_dir`` (created by this run) if it holds nothing but :data:`SCRATCH` files; on rank 0 only."""
    if os.environ.get("RANK", "0") != "0" or not output_dir.is_dir():
        return
    entries = list(output_dir.iterdir())
    if any(e.name not in SCRATCH or (e.is_dir() and any(e.iterdir())) for e in entries):
        return
    import shutil

    shutil.rmtree(output_dir, ignore_errors=True)


def train(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags and run training; returns the final metrics. A run that fails before writing anything but
    scratch files removes the ``--output_dir`` it created."""
    model_args, data_args, training_args = parse_args(argv, launch=True)
    output_dir = Path(training_args.output_dir)
    created = not output_dir.exists()
    try:
        return _train(model_args, data_args, training_args)
    except BaseException:
        if created:
            _remove_failed_output(output_dir)
        raise


def _train(model_args: Any, data_args: DataArguments, training_args: Any) -> dict[str, Any]:
    import torch
    import transformers

    from qwenvl.data.collate import DummyMedia, PackedCollator, PaddedCollator
    from qwenvl.data.dataset import Quarantine
    from qwenvl.data.encode import SampleEncoder
    from qwenvl.model.budget import MediaBudget
    from qwenvl.model.freeze import format_summary, set_trainable, trainable_summary
    from qwenvl.model.loader import load_model, load_processor, read_family
    from qwenvl.model.preprocessing import PreprocessingSettings, save_preprocessing
    from qwenvl.train.checkpoints import find_resume_checkpoint, reached_end
    from qwenvl.train.trainer import QwenVLTrainer, causal_lm_loss

    logging.basicConfig(
        level=logging.INFO if training_args.should_log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    transformers.set_seed(training_args.seed)  # before LoRA init, which Trainer would leave unseeded
    try:
        os.makedirs(training_args.output_dir, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"--output_dir {training_args.output_dir}: cannot create the folder ({e.strerror}); give a writable folder"
        ) from None

    resume = training_args.resume_from_checkpoint
    if resume is None:
        found = find_resume_checkpoint(training_args.output_dir)
        resume = None if found is None else str(found)
    elif not os.path.isdir(resume):
        raise UserError(f"--resume_from_checkpoint {resume}: no such folder")
    if resume is not None and reached_end(resume, training_args.max_steps, training_args.num_train_epochs):
        return _run_complete(Path(resume), training_args)
    if resume is not None and training_args.resume_from_checkpoint is None:
        logger.warning("found %s: resuming from it (pass a new --output_dir to start over)", resume)
    _init_deepspeed_comm(training_args)

    family = read_family(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    model = load_model(
        model_args.model_name_or_path,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        cache_dir=training_args.cache_dir,
    )
    # Packed rows are only isolated without a KV cache, and Trainer's use_cache=False does not reach text_config.
    model.config.use_cache = False
    if hasattr(model.config, "text_config"):
        model.config.text_config.use_cache = False
    processor = load_processor(model_args.model_name_or_path, cache_dir=training_args.cache_dir)

    set_trainable(
        model, vision_tower=model_args.tune_mm_vision, merger=model_args.tune_mm_mlp, llm=model_args.tune_mm_llm
    )
    if training_args.lora_enable:
        from qwenvl.train.lora import apply_lora

        model = apply_lora(model, training_args, model_args.tune_mm_vision, model_args.tune_mm_mlp)
    if training_args.gradient_checkpointing:
        if training_args.gradient_checkpointing_kwargs is None:
            training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}
        model.enable_input_require_grads()

    lrs = {
        "vision_tower": training_args.vision_tower_lr
        if training_args.vision_tower_lr is not None
        else training_args.learning_rate,
        "merger": training_args.mm_projector_lr
        if training_args.mm_projector_lr is not None
        else training_args.learning_rate,
        "llm": training_args.learning_rate,
    }
    summary = trainable_summary(model, lrs)
    wanted = {
        "vision_tower": model_args.tune_mm_vision or training_args.lora_vision,
        "merger": model_args.tune_mm_mlp or training_args.lora_merger,
        "llm": model_args.tune_mm_llm or training_args.lora_enable,
    }
    empty = [r["component"] for r in summary if wanted[r["component"]] and r["trainable"] == 0]
    if empty:
        raise UserError(f"asked to train {empty} but they have no trainable parameters in this model")
    if training_args.should_log:
        logger.info("trainable parameters:\n%s", format_summary(summary))

    tokens_per_second = getattr(getattr(model.config, "vision_config", None), "tokens_per_second", 2)
    budget = MediaBudget.from_attrs(data_args)
    media_cache = None
    if data_args.media_cache:
        from qwenvl.data.media_cache import MediaCache

        max_gb = data_args.media_cache_max_gb
        media_cache = MediaCache(
            data_args.media_cache,
            PreprocessingSettings(family.model_type, family.patch_size, budget),
            processor,
            max_bytes=int(max_gb * 1e9) if max_gb is not None else None,
        )
    encoder = SampleEncoder(processor, family, budget, tokens_per_second, media_cache=media_cache)
    quarantine = Quarantine(Path(training_args.output_dir) / "quarantine.jsonl")
    data_report: dict[str, Any] = {}
    train_dataset, eval_dataset = build_datasets(data_args, training_args, encoder, quarantine, data_report)
    packed = data_args.data_packing or data_args.data_flatten
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Distributed ranks must all run the vision tower every step (ZeRO-3 hangs otherwise): see DummyMedia.
    dummy = DummyMedia.from_processor(processor, family) if world > 1 or training_args.deepspeed else None
    if packed:
        collator = PackedCollator(dummy=dummy, with_ids=True)
    else:
        collator = PaddedCollator(pad_token_id=processor.tokenizer.pad_token_id, dummy=dummy, with_ids=True)

    settings = PreprocessingSettings(
        model_type=family.model_type,
        patch_size=family.patch_size,
        budget=budget,
        model_max_length=training_args.model_max_length,
    )
    trainer = QwenVLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        compute_loss_func=causal_lm_loss,
        component_lrs=lrs,
        packed_capacity=data_args.max_packed_tokens if data_args.data_packing else None,
        preprocessing=settings,
    )

    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None:
            config.use_cache = True  # the saved model is for inference
    trainer.save_model(training_args.output_dir)
    metrics = dict(result.metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trained = trainer.gathered_trained_ids()
    base = getattr(train_dataset, "base", train_dataset)
    # Entries of records no longer in the data (edited since) are not counted; the others are named by where the
    # record is now (an edit above it moves it).
    current = {key: record.id for key, record in zip(base.keys, base.records)}
    entries = [{**e, "id": current[e["key"]]} for e in quarantine.entries() if e["key"] in current]
    skipped = dict(Counter(e["kind"] for e in entries))
    metrics["skipped_samples"] = skipped
    metrics.update(trainer.data_summary())  # data_wait_s, data_wait_share, media_cache hits / misses per epoch
    data_report.update(
        quarantined=skipped,
        quarantined_records=[{"id": e["id"], "kind": e["kind"], "reason": e["reason"]} for e in entries],
        replaced=len(quarantine.replacement_events()),
        resumed_from=resume,
        trained_records_this_run=len(trained),
        trained_samples_this_run=sum(trained.values()),
        # {times trained: records}, over all ranks: {epochs: n} when the ranks' shards are disjoint and complete
        trained_counts_histogram={str(k): v for k, v in sorted(Counter(trained.values()).items())},
        skipped_ids=sorted({e["id"] for e in entries} | {i["where"] for i in data_report.get("invalid_records", [])}),
    )
    if trainer.is_world_process_zero():
        save_preprocessing(settings, training_args.output_dir)
        staging = Path(training_args.output_dir) / ".partial"
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()  # every checkpoint was published: a finished run leaves no empty staging folder
        (Path(training_args.output_dir) / "train_summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (Path(training_args.output_dir) / "data_report.json").write_text(json.dumps(data_report, indent=2) + "\n")
        invalid = len(data_report.get("invalid_records", []))
        logger.warning(
            "data: %d records read, %d invalid, %d usable, quarantined %s, %d replacement(s), %d distinct records "
            "trained in this run (see %s)",
            data_report.get("records_read", 0), invalid, data_report.get("usable_records", 0), skipped or "none",
            data_report["replaced"], len(trained), Path(training_args.output_dir) / "data_report.json",
        )  # fmt: skip
    return metrics


def _run_complete(checkpoint: Path, training_args: Any) -> dict[str, Any]:
    """The run ended at ``checkpoint``: train nothing and leave the checkpoints as they are. If the run was stopped
    between its last checkpoint and its final save, the final save is made from that checkpoint."""
    from qwenvl.train.checkpoints import checkpoint_step, finished_output, publish_final_from_checkpoint

    step, epoch = checkpoint_step(checkpoint)
    output_dir = Path(training_args.output_dir)
    limit = f"--max_steps {training_args.max_steps}" if training_args.max_steps > 0 else (
        f"--num_train_epochs {training_args.num_train_epochs:g}"
    )  # fmt: skip
    if training_args.process_index == 0:
        if not finished_output(output_dir, step):
            copied = publish_final_from_checkpoint(checkpoint, output_dir)
            if not copied:
                raise UserError(
                    f"{checkpoint} ends the run ({limit}) but holds no model weights to publish as the final model; "
                    f"recover them with {checkpoint}/zero_to_fp32.py"
                )
            summary = {"global_step": step, "epoch": epoch, "final_model_from": str(checkpoint)}
            (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            logger.warning("the run stopped after %s, before its final save: final model published from it", checkpoint)
        logger.warning(
            "the run in %s is complete: %s is at step %d, the end for %s; nothing to train (raise %s to train on, "
            "or pass a new --output_dir to start over)",
            output_dir, checkpoint.name, step, limit, limit.split()[0],
        )  # fmt: skip
    return {"run_complete": True, "global_step": step, "epoch": epoch}


def _lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank (or node) went away."""
    import torch

    text = str(error)
    dist_error = getattr(torch.distributed, "DistBackendError", ())
    return isinstance(error, dist_error) or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                      "NCCL communicator was aborted", "Timed out waiting", "Socket Timeout")
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        train(argv)
    except UserError as e:
        report_error(f"error: {e}")
        return 2
    except RuntimeError as e:
        import torch

        if not (torch.distributed.is_available() and torch.distributed.is_initialized() and _lost_peer(e)):
            raise
        rank = torch.distributed.get_rank()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        report_error(
            f"error: rank {rank} lost contact with another rank ({first}); a process or node died or the network "
            "failed. Rerun the same command on every node: training resumes from the newest complete checkpoint.",
            code=3,
        )
        return 3
    import torch

    # Join the communication threads (gloo / DeepSpeed) before interpreter teardown: left to static destructors
    # they can abort a rank that finished cleanly ("terminate called without an active exception"). Only after
    # success: a rank that raised must exit at once so torchrun stops the others, not wait in a barrier.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        # Even so, a gloo thread's destructor at interpreter exit still aborted a finished rank now and then
        # (SIGABRT, seen once in ~20 two-process runs): the run is complete and saved, so leave without teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
