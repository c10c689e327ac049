"""The command line of a declared benchmark: ``infer``, ``eval``, ``merge``, ``compare``, ``export``, built from its
:class:`~qwenvl.evaluation.benchmark.Benchmark` (its options dataclasses are its flags) over the in-process
:mod:`qwenvl.evaluation.runner`. ``qwenvl eval <benchmark> ...`` and upstream's ``evaluation/<Name>/run_*.py``
both end here; a user's mistake (:class:`qwenvl.cli.UserError`) is one ``error:`` line (exit 2), anything else a
bug with its traceback. Parsing imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Literal

from qwenvl.cli import UserError
from qwenvl.evaluation.benchmark import Benchmark, InferOptions, JudgeOptions, is_required
from qwenvl.inference.config import BackendConfig


# ----------------------------------------------------------------------------------------------- dataclass flags


def _kind(annotation: Any) -> tuple[Any, list[Any] | None, bool]:
    """``(type, choices, is_bool)`` of a field's annotation (``int | None``, ``Literal[...]``, ``bool``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation)), False
    if args and typing.get_origin(annotation) is not Literal and len(args) == 1:
        return _kind(args[0])
    if annotation is bool:
        return bool, None, True
    if annotation in (int, float, str):
        return annotation, None, False
    return str, None, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls``: ``--field-name`` plus its ``aliases``, help, choices, required, from the
    field's ``metadata`` (see :func:`qwenvl.evaluation.benchmark.option`) and its annotation."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        kind, choices, flag = _kind(hints[f.name])
        names = [f"--{f.name.replace('_', '-')}", *meta.pop("aliases", ())]
        help_text = meta.pop("help", None)
        required = is_required(f)
        meta.pop("required", None)
        default = None if f.default is MISSING else f.default
        if flag:
            parser.add_argument(*names, dest=f.name, action="store_true", help=help_text)
            continue
        if choices is not None:
            meta.setdefault("choices", choices)
        parser.add_argument(*names, dest=f.name, type=kind, default=default, required=required, help=help_text,
                            **meta)  # fmt: skip


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def dataclass_argv(obj: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that give ``obj`` (a dataclass of flags) again, defaults left out."""
    out: list[str] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = None if f.default is MISSING else f.default
        if f.name in skip or value is None or value == default:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        out += [flag] if value is True else [flag, str(value)]
    return out


def infer_argv(benchmark: Benchmark, options: Any, backend: BackendConfig, run: InferOptions) -> list[str]:
    """The ``infer`` command line of these options (a data-parallel run's workers)."""
    argv = dataclass_argv(options) + dataclass_argv(backend) + dataclass_argv(run, skip=("limit",))
    if run.limit is not None:
        argv += [benchmark.limit_flags[0], str(run.limit)]
    return argv


# ----------------------------------------------------------------------------------------------- the parser


def _infer_flags(p: argparse.ArgumentParser, benchmark: Benchmark) -> None:
    presets = benchmark.presets
    p.add_argument("--output-file", required=True,
                   help="results JSONL (appended to: a rerun resumes), with <name>.manifest.json beside it")  # fmt: skip
    BackendConfig.add_arguments(p)
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="run N shard processes (each --tensor-parallel-size GPUs) and merge them")  # fmt: skip
    p.add_argument("--num-shards", type=int, default=None, help="this process answers one of N shards")
    p.add_argument("--shard-index", type=int, default=None, help="which shard (0..N-1); torchrun sets both")
    p.add_argument("--batch-size", type=int, default=benchmark.batch_size,
                   help="questions per generate call (and per write); default %(default)s")  # fmt: skip
    named = [k for k in presets if k != "default"]
    described = "; ".join(
        f"{k}: " + ("the default greedy decoding" if v == presets["default"] else
                    f"T {v['temperature']}, top-p {v['top_p']}, top-k {v['top_k']}, presence {v['presence_penalty']}, "
                    f"{v['max_new_tokens']} tokens")
        for k, v in presets.items()
        if k != "default"
    )  # fmt: skip
    pixels = _upstream_pixels_text(benchmark)
    p.add_argument("--preset", default=None, choices=named,
                   help=f"upstream's settings ({described}); each also takes upstream's pixels: {pixels}")  # fmt: skip
    default = presets["default"]
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default {default['max_new_tokens']}")
    p.add_argument("--temperature", type=float, default=None, help=f"default {default['temperature']} (0 = greedy)")
    p.add_argument("--top-p", type=float, default=None, help=f"default {default['top_p']}")
    p.add_argument("--top-k", type=int, default=None, help=f"default {default['top_k']} (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"default {default['repetition_penalty']}")
    p.add_argument("--presence-penalty", type=float, default=None, help=f"default {default['presence_penalty']}")
    p.add_argument("--seed", type=int, default=benchmark.seed, help="sampling seed (default %(default)s)")
    p.add_argument("--allow-settings-change", action="store_true",
                   help="resume into a file whose answers were made with other answer-changing settings (recorded "
                        "per segment)")  # fmt: skip
    names = benchmark.limit_flags
    alias = f" ({', '.join(names[1:])}: upstream's name)" if len(names) > 1 else ""
    p.add_argument(*names, dest="limit", type=int, default=None, help=benchmark.limit_help + alias)
    per = "per frame" if benchmark.pixels.media == ("video",) else "per image"
    policy = "default: the checkpoint's saved budget; with --preset upstream's"
    p.add_argument("--min-pixels", type=int, default=None, help=f"{per} ({policy})")
    p.add_argument("--max-pixels", type=int, default=None, help=f"{per} ({policy})")
    if "video" in benchmark.pixels.media:
        p.add_argument("--fps", type=float, default=None, help=f"video frames per second ({policy})")
        p.add_argument("--min-frames", type=int, default=None, help=f"frames per video at least ({policy})")
        p.add_argument("--max-frames", type=int, default=None, help=f"frames per video at most ({policy})")
        p.add_argument("--total-pixels", type=int, default=None, help=f"pixels of all frames of a video ({policy})")
    add_dataclass_arguments(p, benchmark.options)


def _upstream_pixels_text(benchmark: Benchmark) -> str:
    parts = []
    for kind in benchmark.pixels.media:
        values = getattr(benchmark.pixels, kind)
        if values:
            parts.append(f"{kind} " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "; ".join(parts).replace("%", "%%") if parts else "none (the checkpoint's budget stays)"


def _judge_flags(e: argparse.ArgumentParser, benchmark: Benchmark) -> None:
    from qwenvl.evaluation.reports import UPSTREAM_API_TYPES

    e.add_argument("--judge", default=None, choices=["openai", "all"],
                   help=f"re-check with an LLM judge on an OpenAI-compatible server: openai = "
                        f"{benchmark.judge_unread}; all = every answer")  # fmt: skip
    e.add_argument("--judge-model", default=None, help="the judge's model name on that server")
    e.add_argument("--base-url", default=None, help="the judge's server, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable of the judge's key")
    e.add_argument("--judge-concurrency", "--nproc", type=int, default=8,
                   help="judge requests in flight (--nproc: upstream's name)")  # fmt: skip
    e.add_argument("--eval-model", default=None,
                   help="upstream's judge flag: --judge-model, and --judge openai when a server is known (--base-url, "
                        "or the one --api-type names)")  # fmt: skip
    e.add_argument("--api-type", default=None, choices=list(UPSTREAM_API_TYPES),
                   help="upstream's judge flag: the server of --eval-model is read from "
                        + "; ".join(f"{k}: ${u} (key ${v})" for k, (u, v) in UPSTREAM_API_TYPES.items())
                        + " (an OpenAI-compatible base URL); default dash")  # fmt: skip


def _scoring_flag(p: argparse.ArgumentParser, benchmark: Benchmark, what: str = "") -> None:
    modes = benchmark.scoring
    p.add_argument("--scoring", default=next(iter(modes)), choices=list(modes),
                   help=what + "; ".join(f"{k}: {v.help}" for k, v in modes.items()))  # fmt: skip


def build_parser(benchmark: Benchmark, prog: str | None = None) -> argparse.ArgumentParser:
    """The whole command line of ``benchmark`` (named ``prog``: default its upstream script's name)."""
    from qwenvl.cli import StrictParser
    from qwenvl.evaluation.reports import SCORES_HELP, scores_file

    parser = StrictParser(prog=prog or benchmark.tool or f"qwenvl eval {benchmark.name}",
                          description=benchmark.doc or benchmark.description)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help=f"answer {benchmark.name} and write results.jsonl (resumable)")
    _infer_flags(p, benchmark)
    p.set_defaults(func=_run_infer)

    e = sub.add_parser("eval", help="score results.jsonl (ours, or upstream's results file of the same benchmark)")
    upstream = " or upstream's results JSONL, read as they are" if benchmark.from_upstream or benchmark.load else ""
    e.add_argument("--input-file", required=True, help=f"the results of infer{upstream}")
    e.add_argument("--output-file", required=True, type=scores_file, help=SCORES_HELP)
    _scoring_flag(e, benchmark)
    add_dataclass_arguments(e, benchmark.eval_options)
    own = {f.name for f in fields(benchmark.eval_options)}
    if "data_dir" not in own:
        e.add_argument("--data-dir", default=None,
                       help="accepted for upstream's command line; not needed: the results carry what scoring "
                            "needs")  # fmt: skip
    if "dataset" not in own:
        e.add_argument("--dataset", default=None, help="accepted for upstream's command line (not needed)")
    if benchmark.judge is not None:
        _judge_flags(e, benchmark)
    e.set_defaults(func=_run_eval)

    m = sub.add_parser("merge", help="join the shard files of an infer run into --output-file")
    m.add_argument("--output-file", required=True, help="the --output-file the shards were run with")
    m.add_argument("--num-shards", type=int, required=True, help="the --num-shards the shards were run with")
    m.set_defaults(func=lambda b, args: _merged(args))

    c = sub.add_parser("compare", help="two results files on their common questions: accuracies with 95%% CI, a "
                                       "paired test, and the questions whose correctness differs")  # fmt: skip
    c.add_argument("a", help="results file A (the baseline)")
    c.add_argument("b", help="results file B")
    _scoring_flag(c, benchmark, "as eval's --scoring: ")
    add_dataclass_arguments(c, benchmark.eval_options)
    c.set_defaults(func=_run_compare)

    x = sub.add_parser("export", help=benchmark.export_help)
    x.add_argument("--input-file", required=True, help="results of infer (ours or upstream's)")
    x.add_argument("--output-file", required=True, help="the JSON written")
    _scoring_flag(x, benchmark, "the answer extraction of eval's --scoring: ")
    add_dataclass_arguments(x, benchmark.eval_options)
    x.set_defaults(func=_run_export)
    return parser


# ----------------------------------------------------------------------------------------------- commands


def _run_infer(benchmark: Benchmark, args: argparse.Namespace) -> int:
    from qwenvl.evaluation import runner

    run = dataclass_from_args(InferOptions, args)
    runner.infer(benchmark, dataclass_from_args(benchmark.options, args), BackendConfig.from_args(args), run)
    return 0


def _run_eval(benchmark: Benchmark, args: argparse.Namespace) -> int:
    from qwenvl.evaluation import runner

    judge = dataclass_from_args(JudgeOptions, args) if benchmark.judge is not None else None
    runner.evaluate(benchmark, args.input_file, args.output_file, args.scoring, judge,
                    dataclass_from_args(benchmark.eval_options, args), verbose=True)  # fmt: skip
    return 0


def _merged(args: argparse.Namespace) -> int:
    from qwenvl.evaluation import runner

    runner.merge(args.output_file, args.num_shards)
    return 0


def _run_compare(benchmark: Benchmark, args: argparse.Namespace) -> int:
    from qwenvl.evaluation import runner

    print(runner.compare(benchmark, args.a, args.b, args.scoring, dataclass_from_args(benchmark.eval_options, args)))
    return 0


def _run_export(benchmark: Benchmark, args: argparse.Namespace) -> int:
    from qwenvl.evaluation import runner

    options = dataclass_from_args(benchmark.eval_options, args)
    output = runner.export(benchmark, args.input_file, args.output_file, args.scoring, options)
    count = len(json.loads(Path(output).read_text()))
    print(f"{count} entr{'y' if count == 1 else 'ies'} ({benchmark.export_help}) -> {output}")
    return 0


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        missing.append(path)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): it and its parents stay
            break


def run_main(build: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], int],
             argv: list[str] | None = None) -> int:  # fmt: skip
    """Parse, run, and turn a user's mistake (a :class:`qwenvl.cli.UserError`) into one ``error:`` line (exit 2);
    any other exception is a bug and keeps its traceback. Folders made for a run that failed are removed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build().parse_args(argv)
    output = getattr(args, "output_file", None)
    created = missing_folders(Path(output).parent) if output else []
    try:
        return int(run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        remove_empty_folders(created)  # a run that failed (or wrote nothing) leaves no empty folders behind


def main(benchmark: Benchmark, argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line of ``benchmark`` (``argv`` without the program name; ``prog`` names it in usage and errors)."""
    return run_main(lambda: build_parser(benchmark, prog), lambda args: args.func(benchmark, args), argv)
