"""The benchmarks of ``qwenvl eval <benchmark> <subcommand>``: one line per benchmark, its name and the module that
declares it (its ``BENCHMARK``, a :class:`qwenvl.evaluation.benchmark.Benchmark`).

The runner gives every benchmark the subcommands ``infer``, ``eval``, ``merge``, ``compare`` and ``export``
(``--help`` on each lists its flags); upstream's ``evaluation/<Benchmark>/run_*.py`` scripts run the same command
line. Adding a benchmark adds its line here. Modules are imported only when asked for (help stays light).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


BENCHMARKS: dict[str, str] = {
    "mmmu": "qwenvl.evaluation.mmmu.cli",
    "mathvision": "qwenvl.evaluation.mathvision",
    "realworldqa": "qwenvl.evaluation.realworldqa",
    "videomme": "qwenvl.evaluation.videomme",
    "odinw13": "qwenvl.evaluation.odinw",
    "mmmu_pro": "qwenvl.evaluation.mmmu_pro",
}


def get(name: str) -> Any:
    """The declared benchmark ``name`` (its module's ``BENCHMARK``)."""
    return importlib.import_module(BENCHMARKS[name]).BENCHMARK


def usage() -> str:
    lines = []
    for name, path in BENCHMARKS.items():
        module = importlib.import_module(path)
        text = module.BENCHMARK.description if hasattr(module, "BENCHMARK") else (module.__doc__ or "").split("\n")[0]
        lines.append(f"  {name:12} {text}")
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
    from qwenvl.evaluation import command

    sys.argv = [f"qwenvl eval {name}", *rest]
    module = importlib.import_module(BENCHMARKS[name])
    if not hasattr(module, "BENCHMARK"):  # not declared yet: its own command line
        return int(module.main(rest) or 0)
    return command.main(module.BENCHMARK, rest, prog=f"qwenvl eval {name}")


if __name__ == "__main__":
    sys.exit(main())
