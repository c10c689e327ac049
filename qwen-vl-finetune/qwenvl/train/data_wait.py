"""How long each optimizer step waited for its batches, and the media cache's hits and misses per epoch.

A step starts when the Trainer asks for its batches (``get_batch_samples``) and ends when it has run forward,
backward and the optimizer (``_maybe_log_save_evaluate``, before logging, saving or evaluating). Only the calls
that return a batch (``next`` on the epoch iterator) count as waiting, so the share is::

    data_wait_share = sum(time in next(batch iterator)) / sum(step time)

Near zero means the dataloader workers have the next batches ready before the step needs them; a share that grows
means the GPU idles for data (more ``--dataloader_num_workers``, a ``--media_cache``, or smaller media budgets).
The first step of each epoch also waits for the workers to start (and to build their first batches), a cost paid
once per epoch however long the epoch is: ``data_wait_share_steady`` leaves those steps out.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Iterator


class _TimedIterator:
    def __init__(self, iterator: Iterator[Any], clock: DataWaitClock) -> None:
        self.iterator = iterator
        self.clock = clock

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.monotonic()
        try:
            return next(self.iterator)
        finally:
            self.clock.waited(time.monotonic() - start)


class DataWaitClock:
    """Data wait and step time, in total and since the last log."""

    def __init__(self) -> None:
        self.total_wait = 0.0
        self.total_time = 0.0
        self.steps = 0
        self._window = [0.0, 0.0, 0]  # wait, time, steps since the last log
        self._start: float | None = None
        self._step_wait = 0.0
        self._iterator: Any = None  # the epoch's batch iterator: a new one starts an epoch
        self._first = False
        self.startup_wait = 0.0  # of the first step of each epoch
        self.startup_time = 0.0

    def begin(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """A step starts: ``iterator`` wrapped so that the time spent getting batches from it is counted."""
        self._start = time.monotonic()
        self._step_wait = 0.0
        self._first = iterator is not self._iterator
        self._iterator = iterator
        return _TimedIterator(iterator, self)

    def waited(self, seconds: float) -> None:
        self._step_wait += seconds

    def end(self) -> None:
        """The step's forward, backward and optimizer step are done."""
        if self._start is None:
            return
        elapsed = time.monotonic() - self._start
        self._start = None
        self.total_wait += self._step_wait
        self.total_time += elapsed
        self.steps += 1
        if self._first:
            self.startup_wait += self._step_wait
            self.startup_time += elapsed
        self._window[0] += self._step_wait
        self._window[1] += elapsed
        self._window[2] += 1

    def window_logs(self) -> dict[str, float]:
        """``data_wait_s`` (mean per step) and ``data_wait_share`` since the last call; empty without steps."""
        wait, elapsed, steps = self._window
        self._window = [0.0, 0.0, 0]
        if not steps:
            return {}
        return {"data_wait_s": round(wait / steps, 4), "data_wait_share": round(wait / max(elapsed, 1e-9), 4)}

    def summary(self) -> dict[str, float]:
        return {
            "data_wait_s": round(self.total_wait, 3),
            "data_wait_s_per_step": round(self.total_wait / max(self.steps, 1), 4),
            "data_wait_share": round(self.total_wait / max(self.total_time, 1e-9), 4),
            "data_wait_share_steady": round(
                (self.total_wait - self.startup_wait) / max(self.total_time - self.startup_time, 1e-9), 4
            ),
            "step_time_s": round(self.total_time, 3),
            "timed_steps": self.steps,
        }


class MediaCacheCounter:
    """Hits and misses of the media cache per epoch, from the ``media_cache`` entry the collators put in batches."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, epoch: int, counts: list[int] | None) -> None:
        if counts:
            entry = self.by_epoch[epoch]
            entry[0] += int(counts[0])
            entry[1] += int(counts[1])

    def as_dict(self) -> dict[str, list[int]]:
        return {str(e): list(v) for e, v in sorted(self.by_epoch.items())}


def merge_media_cache(parts: list[dict[str, list[int]]]) -> dict[str, Any]:
    """The counts of several ranks summed: ``{"hits", "misses", "by_epoch": {epoch: {"hits", "misses"}}}``."""
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for part in parts:
        for epoch, (hits, misses) in part.items():
            total[epoch][0] += hits
            total[epoch][1] += misses
    return {
        "hits": sum(v[0] for v in total.values()),
        "misses": sum(v[1] for v in total.values()),
        "by_epoch": {e: {"hits": v[0], "misses": v[1]} for e, v in sorted(total.items(), key=lambda x: int(x[0]))},
    }
