"""Statistics of the reports: the 95% interval of an accuracy and the paired test of two runs.

Pure functions (no I/O, no dependencies): every benchmark's accuracy carries ``ci95`` (Wilson score interval) and
every ``compare`` prints :func:`format_comparison` (exact McNemar test on the questions both runs answered).
"""

from __future__ import annotations

import math
from typing import Any


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(correct: int, num: int) -> list[float]:
    """The 95% Wilson score interval of ``correct / num`` (good at small ``num`` and near 0 or 1, unlike the normal
    approximation); ``[0.0, 1.0]`` when ``num`` is 0."""
    if num <= 0:
        return [0.0, 1.0]
    p, z2 = correct / num, Z95 * Z95
    centre = (p + z2 / (2 * num)) / (1 + z2 / num)
    half = Z95 * math.sqrt(p * (1 - p) / num + z2 / (4 * num * num)) / (1 + z2 / num)
    # (exactly 0 / 1 at the ends: the formula's rounding would give 5.6e-17 there)
    return [0.0 if correct == 0 else max(0.0, centre - half), 1.0 if correct == num else min(1.0, centre + half)]


def ci_text(summary: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    """``[lo, hi]`` of a summary's ``ci95``, for the report tables."""
    lo, hi = summary["ci95"]
    return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each question one run got right and the other wrong
    is equally likely to favour either run (a binomial with p = 1/2 over the discordant questions)."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> dict[str, Any]:
    """Two runs' correctness on the questions both answered: each accuracy with its 95% interval, how many
    questions only A / only B got right, and the exact McNemar test of whether they differ beyond noise."""
    common = [i for i in a if i in b]
    a_only = sum(bool(a[i]) and not b[i] for i in common)
    b_only = sum(bool(b[i]) and not a[i] for i in common)
    p = mcnemar_p(a_only, b_only)
    sides = {}
    for name, run in (("a", a), ("b", b)):
        correct = sum(bool(run[i]) for i in common)
        sides[name] = {"correct": correct, "acc": correct / max(len(common), 1),
                       "ci95": wilson_interval(correct, len(common))}  # fmt: skip
    return {"common": len(common), "only_in_one": len(set(a) ^ set(b)), **sides, "a_only_right": a_only,
            "b_only_right": b_only, "p_value": p, "differs": p < 0.05}  # fmt: skip


def format_comparison(c: dict[str, Any]) -> str:
    """The comparison's summary lines (see :func:`paired_comparison`)."""
    verdict = ("the runs differ beyond noise (p < 0.05)" if c["differs"]
               else "no difference beyond noise (p >= 0.05)")  # fmt: skip
    lines = [f"{c['common']} common question(s); accuracy A {c['a']['acc']:.3f} {ci_text(c['a'])}, "
             f"B {c['b']['acc']:.3f} {ci_text(c['b'])} (95% CI)",
             f"only A right: {c['a_only_right']}, only B right: {c['b_only_right']}; exact McNemar p = "
             f"{c['p_value']:.4g}: {verdict}"]  # fmt: skip
    if c["only_in_one"]:
        lines.append(f"{c['only_in_one']} question(s) in only one file (not compared)")
    return "\n".join(lines)
