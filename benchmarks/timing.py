"""The one timing discipline of every benchmark here: warm-up first, the two sides alternated in the same run, at
least 5 timed repetitions, median and spread reported, and the machine's load average at start and end recorded.

A *side* is a callable that runs one measurement and returns a dict with at least ``seconds`` (wall time of the
measured work; other keys, such as peak memory, are kept per repetition). ``compare`` calls every side ``warmup``
times (discarded), then ``repeats`` rounds; round ``r`` calls the sides in rotated order (A B, B A, A B, ...) so
that neither always runs first on a machine whose speed drifts.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable


MIN_REPEATS = 5


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def summary(values: list[float]) -> dict[str, float]:
    """Median, min, max and the spread ((max - min) / median) of ``values``."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else 0.0,
        "n": len(values),
    }


def compare(
    sides: dict[str, Callable[[], dict[str, Any]]],
    repeats: int = MIN_REPEATS,
    warmup: int = 1,
    on_result: Callable[[str, int, dict[str, Any]], None] | None = None,
    smoke: bool = False,
) -> dict[str, Any]:
    """Run ``sides`` alternately; returns ``{"sides": {name: {"runs": [...], "seconds": summary}}, "load_start",
    "load_end", "repeats", "warmup"}``. A side whose run returns ``{"error": ...}`` is not timed further.
    ``smoke=True`` allows fewer repetitions for a code-path check; the result is marked and is not a figure."""
    if repeats < MIN_REPEATS and not smoke:
        raise ValueError(f"at least {MIN_REPEATS} timed repetitions are needed for a median and spread, got {repeats}")
    names = list(sides)
    out: dict[str, Any] = {"load_start": load_average(), "repeats": repeats, "warmup": warmup, "started": time.time()}
    if smoke:
        out["smoke"] = True  # a check that the code runs, not a figure to report
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    failed: dict[str, Any] = {}
    for _ in range(warmup):
        for name in names:
            result = sides[name]()
            if "error" in result:
                failed[name] = result
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if name in failed:
                continue
            result = sides[name]()
            if on_result:
                on_result(name, r, result)
            if "error" in result:
                failed[name] = result
                continue
            runs[name].append(result)
    out["load_end"] = load_average()
    out["sides"] = {}
    for name in names:
        entry: dict[str, Any] = {"runs": runs[name]}
        if name in failed:
            entry["error"] = failed[name].get("error")
            entry["failed_run"] = failed[name]
        if runs[name]:
            entry["seconds"] = summary([x["seconds"] for x in runs[name]])
        out["sides"][name] = entry
    return out


def ratio(result: dict[str, Any], slow: str, fast: str) -> float | None:
    """Median of ``slow`` / median of ``fast`` (a speed-up), or None if either side has no timings."""
    a, b = result["sides"][slow].get("seconds"), result["sides"][fast].get("seconds")
    if not a or not b:
        return None
    return a["median"] / b["median"]


def fmt(summary_: dict[str, float] | None, unit: str = "s") -> str:
    if not summary_:
        return "-"
    return f"{summary_['median']:.3f} {unit} ({summary_['min']:.3f}-{summary_['max']:.3f})"
