"""The benchmarks of ``qwenvl eval <benchmark> <subcommand>``: a name, the module that runs it, one line about it.

Every benchmark module has ``main(argv)`` with the subcommands ``infer``, ``eval``, ``merge``, ``compare`` and
``export`` (``--help`` on each lists its flags); upstream's ``evaluation/<Benchmark>/run_*.py`` scripts call the
same ``main``. Adding a benchmark adds its line here.
"""

from __future__ import annotations

import importlib
import sys


BENCHMARKS: dict[str, tuple[str, str]] = {
    "mmmu": ("qwenvl.evaluation.mmmu.cli", "MMMU: college-level multiple-choice and open questions, 30 subjects"),
    "mathvision": ("qwenvl.evaluation.mathvision", "MathVision (MATH-V): competition maths with images"),
    "realworldqa": ("qwenvl.evaluation.realworldqa", "RealWorldQA: multiple-choice questions on real-world photos"),
    "videomme": ("qwenvl.evaluation.videomme", "Video-MME: multiple-choice questions on short/medium/long videos"),
    "odinw13": ("qwenvl.evaluation.odinw", "ODinW-13: object detection on 13 datasets, COCO mAP"),
    "mmmu_pro": ("qwenvl.evaluation.mmmu_pro", "MMMU-Pro: 10-option and vision-only MMMU (standard / vision)"),
}


def usage() -> str:
    lines = [f"  {name:12} {text}" for name, (_, text) in BENCHMARKS.items()]
    return ("usage: qwenvl eval <benchmark> {infer,eval,merge,compare,export} [--help | args]\n\nbenchmarks:\n"
            + "\n".join(lines))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``qwenvl eval <benchmark> ...``: run the benchmark module's ``main`` with the rest of the arguments."""
    from qwenvl.cli import closest

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        hint = closest(name, list(BENCHMARKS))
        print(f"qwenvl eval: error: unknown benchmark {name!r}" + (f"; did you mean {hint!r}?" if hint else ""),
              file=sys.stderr)  # fmt: skip
        print(usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    sys.argv = [f"qwenvl eval {name}", *rest]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
