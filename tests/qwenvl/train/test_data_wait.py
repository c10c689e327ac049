"""Training with ``--media_cache``: the second epoch reads every media item from the cache; the data wait and the
cache's hits and misses are logged and written to ``train_summary.json``; the DataLoader defaults."""

from __future__ import annotations

import json

import pytest

from qwenvl.data.registry import load_records
from qwenvl.train.arguments import parse_args


def _flags(model, out, *extra):
    return [
        "--model_name_or_path", str(model), "--dataset_use", "demo_images,demo_video", "--output_dir", str(out),
        "--use_cpu", "True", "--report_to", "none", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--model_max_length", "2048", "--logging_steps", "1", "--seed", "3", "--save_strategy", "no", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("workers", ["0", "2"])
def test_two_epochs_with_media_cache_second_epoch_all_hits(tiny_checkpoints, tmp_path, workers):
    from qwenvl.train.train_qwen import train

    out, cache = tmp_path / "out", tmp_path / "cache"
    flags = _flags(tiny_checkpoints["qwen3_vl"], out, "--num_train_epochs", "2", "--media_cache", str(cache),
                   "--dataloader_num_workers", workers)  # fmt: skip
    metrics = train(flags)
    media = sum(len(r.media()) for r in load_records("demo_images,demo_video"))
    summary = json.loads((out / "train_summary.json").read_text())
    by_epoch = summary["media_cache"]["by_epoch"]
    assert sorted(by_epoch) == ["0", "1"]
    # The first epoch fills the cache (an image used by two records is built once, the other use may be a hit).
    assert by_epoch["0"]["hits"] + by_epoch["0"]["misses"] == media and by_epoch["0"]["misses"] > 0
    assert by_epoch["1"] == {"hits": media, "misses": 0}
    assert summary["media_cache"]["hits"] + summary["media_cache"]["misses"] == 2 * media
    assert metrics["media_cache"] == summary["media_cache"]
    assert 0 <= summary["data_wait_s"] <= summary["step_time_s"] and 0 <= summary["data_wait_share"] <= 1
    state = json.loads((out / "trainer_state.json").read_text())
    assert summary["timed_steps"] == state["global_step"]
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged and all("data_wait_s" in h and 0 <= h["data_wait_share"] <= 1 for h in logged)
    assert any(p.suffix == ".qvm" for p in cache.rglob("*"))


def test_without_media_cache_no_cache_counts(tiny_checkpoints, tmp_path):
    from qwenvl.train.train_qwen import train

    out = tmp_path / "out"
    train(_flags(tiny_checkpoints["qwen3_vl"], out, "--max_steps", "2", "--dataloader_num_workers", "0"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert "media_cache" not in summary and summary["timed_steps"] == 2


def test_dataloader_defaults_and_flag_checks(tmp_path):
    _, _, args = parse_args(_flags("m", tmp_path))
    assert args.dataloader_num_workers == 4 and args.dataloader_persistent_workers
    _, _, args = parse_args(_flags("m", tmp_path, "--dataloader_num_workers", "0"))
    assert not args.dataloader_persistent_workers  # torch refuses persistent workers without workers
    with pytest.raises(ValueError, match="--media_cache_max_gb is set without --media_cache"):
        parse_args(_flags("m", tmp_path, "--media_cache_max_gb", "5"))
    _, data_args, _ = parse_args(_flags("m", tmp_path, "--media_cache", "c", "--media_cache_max_gb", "0.5"))
    assert data_args.media_cache == "c" and data_args.media_cache_max_gb == 0.5


def test_steady_share_leaves_out_each_epochs_start(monkeypatch):
    """Worked numbers on a fake clock: per epoch, the first step waits 3 s for the workers to start, the other two
    wait 0.1 s; every step computes for 1 s. All steps: (3 + 0.1 + 0.1) x 2 / 12.4 = 0.5161; steady (the first
    step of each epoch left out): 0.4 / 4.4 = 0.0909."""
    from qwenvl.train import data_wait

    now = [0.0]
    monkeypatch.setattr(data_wait.time, "monotonic", lambda: now[0])
    clock = data_wait.DataWaitClock()

    class Batches:
        def __init__(self) -> None:
            self.first = True

        def __next__(self):
            now[0] += 3.0 if self.first else 0.1
            self.first = False
            return {}

        def __iter__(self):
            return self

    for _ in range(2):  # epochs: a new iterator each
        batches = Batches()
        for _ in range(3):
            next(clock.begin(batches))
            now[0] += 1.0  # forward, backward, optimizer
            clock.end()
    summary = clock.summary()
    assert summary["timed_steps"] == 6
    assert summary["data_wait_share"] == round(6.4 / 12.4, 4)
    assert summary["data_wait_share_steady"] == round(0.4 / 4.4, 4)
