"""The packing planner: groups sample indices into packs of at most ``capacity`` tokens.

Online best-fit-decreasing: the stream of lengths is read in windows of ``window`` samples (so planning a huge
dataset needs no global sort and keeps some of the data order), each window is sorted by decreasing length, and
every sample goes into the open pack with the least room that still fits it, or a new pack. Packs of a window
are closed when the window ends. A sample longer than ``capacity`` is an error here; the over-length policy
decides about those before planning.
"""

from __future__ import annotations

import bisect
from typing import Sequence


def plan_packs(lengths: Sequence[int], capacity: int, window: int = 4096) -> list[list[int]]:
    """Packs (lists of indices into ``lengths``), each with total length <= ``capacity``.

    >>> plan_packs([6, 5, 4, 3, 2], capacity=10)
    [[0, 2], [1, 3, 4]]
    """
    if capacity <= 0:
        raise ValueError(f"--max_packed_tokens must be positive, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s) are longer than --max_packed_tokens={capacity} (first: index {too_long[0]}, "
            f"{lengths[too_long[0]]} tokens); raise the capacity or apply the over-length policy first"
        )
    packs: list[list[int]] = []
    for begin in range(0, len(lengths), window):
        order = sorted(range(begin, min(begin + window, len(lengths))), key=lambda i: (-lengths[i], i))
        free: list[tuple[int, int]] = []  # (room left, pack index), sorted
        window_packs: list[list[int]] = []
        for i in order:
            n = lengths[i]
            pos = bisect.bisect_left(free, (n, -1))
            if pos < len(free):
                room, p = free.pop(pos)
                window_packs[p].append(i)
                bisect.insort(free, (room - n, p))
            else:
                window_packs.append([i])
                bisect.insort(free, (capacity - n, len(window_packs) - 1))
        packs.extend(window_packs)
    return packs


def packing_efficiency(lengths: Sequence[int], packs: list[list[int]], capacity: int) -> float:
    """Share of the packs' token capacity that holds real tokens."""
    if not packs:
        return 0.0
    return sum(lengths[i] for p in packs for i in p) / (len(packs) * capacity)
