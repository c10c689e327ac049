"""Command-line plumbing shared by every tool, and the ``qwenvl`` console script.

Every tool parses its flags with :class:`StrictParser` before importing torch or transformers, so ``--help`` and
usage mistakes answer in well under two seconds; abbreviated flags are refused (``--max_pixel`` is not
``--max_pixels``) and an unknown flag names the closest valid one. A :class:`UserError` raised later (a bad path,
a busy port) ends the tool with its one-line message and exit code 2, never a traceback.

``qwenvl`` gathers the tools under one command, as ``llamafactory-cli`` and ``swift`` do::

    qwenvl train examples/qwen3vl_lora.yaml [--flag value ...]      # or: qwenvl train --model_name_or_path ...
    torchrun --nproc_per_node 8 --no-python qwenvl train recipe.yaml
    qwenvl dpo | grpo  recipe.yaml [--flag value ...]                   # preference / RL tuning
    qwenvl lint | verify-packing | inspect-video | merge-lora | tiny | quickstart | cache build  [--help]
    qwenvl eval mmmu|mathvision|realworldqa|videomme|odinw13 infer|eval|merge|compare|export [--help]

The module entry points (``python -m qwenvl.data.lint`` ...) and upstream's ``qwenvl/train/train_qwen.py`` keep
working.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from typing import Any, Callable, NoReturn, Sequence


class UserError(ValueError):
    """A mistake of the user's (input, path, flag, environment) with a message that names it and the fix.

    The tools report it, and only it, as one ``error:`` line (exit 2); any other exception is a bug and keeps its
    traceback."""


class MissingPackage(UserError, ImportError):
    """An optional package the chosen feature needs is not installed; the message says what to install."""


class Unreachable(UserError, ConnectionError):
    """A server the user named cannot be reached; the message says how to start it or fix its URL."""


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The valid choice most like ``word`` (a flag with its dashes, a YAML key), or None."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_flag_message(flags: Sequence[str], known: Sequence[str]) -> str:
    """``unknown flag --max_pixel; did you mean --max_pixels?`` for the first unknown flag of ``flags``."""
    parts = []
    after_unknown_flag = False
    for flag in flags:
        name = flag.split("=", 1)[0]
        if not name.startswith("-") or _is_number(name):
            if not after_unknown_flag:  # the values of an unknown flag are not reported again
                parts.append(f"unexpected argument {flag!r}")
            continue
        after_unknown_flag = True
        hint = closest(name, known)
        parts.append(f"unknown flag {name}" + (f"; did you mean {hint}?" if hint else ""))
    return "; ".join(parts)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class StrictParser(argparse.ArgumentParser):
    """``argparse`` without prefix matching, and with unknown flags answered by the closest valid flag."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def known_flags(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):  # noqa: D102
        # Unknown long flags are named before argparse complains about missing required ones (a typo in a
        # required flag would otherwise read "--model-path is required").
        if not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            args = list(sys.argv[1:] if args is None else args)
            known = self.known_flags()
            words = args[: args.index("--")] if "--" in args else args
            unknown = [a for a in words if a.startswith("--") and a.split("=", 1)[0] not in known]
            if unknown:
                self.error(unknown_flag_message(unknown, known))
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):  # noqa: D102
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(unknown_flag_message(extra, self.known_flags()))
        return parsed

    def error(self, message: str) -> NoReturn:
        report_error(f"{self.prog}: error: {message}\n(see {self.prog} --help)")
        self.exit(2)


TORCHRUN_NOTE = "(torchrun's ChildFailedError report that follows only repeats this error: exit status {code})"


def report_error(text: str, code: int = 2) -> None:
    """Print a user error on stderr, once per node when torchrun started several processes: the local ranks that
    hit the same error (a bad flag, a missing file: all of them) print it once between them, a rank with an error of
    its own prints that. Under torchrun a line follows saying how to read torchrun's own report of the failure
    (a launcher cannot be kept from printing it: any non-zero exit of a worker is raised as ChildFailedError)."""
    import os

    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    _write_elastic_error_file(text)
    if under_torchrun and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        import hashlib
        import tempfile

        # The launcher's pid and restart count name this job on this node; the text names the error.
        job = f"{os.getppid()}:{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}:{text}"
        marker = os.path.join(tempfile.gettempdir(), f"qwenvl-error-{hashlib.sha1(job.encode()).hexdigest()[:16]}")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another rank of this job said it
        except OSError:
            pass
    lines = [text] + ([TORCHRUN_NOTE.format(code=code)] if under_torchrun else [])
    print("\n".join(lines), file=sys.stderr, flush=True)


def _write_elastic_error_file(text: str) -> None:
    """torchrun gives each worker an error file (``TORCHELASTIC_ERROR_FILE``); what is written there is what its
    failure report shows for this rank instead of "To enable traceback see: ..."."""
    import json
    import os
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": text, "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except OSError:
        pass


def run_tool(body: Callable[[], int | None]) -> int:
    """Run a tool's body, turning a :class:`UserError` into its message on stderr and exit code 2."""
    try:
        return int(body() or 0)
    except UserError as e:
        report_error(f"error: {e}")
        return 2


def run_trainer(train: Callable[[list[str] | None], Any], argv: list[str] | None) -> int:
    """A trainer command's ``main`` (``qwenvl dpo``, ``qwenvl grpo``): ``train(argv)`` (which parses its flags
    before importing torch), a user's mistake as one ``error:`` line (exit 2), and a distributed run ended as
    ``qwenvl train`` ends it."""
    code = run_tool(lambda: train(argv) and None)
    if code == 0:
        from qwenvl.train.policy import end_distributed

        end_distributed()
    return code


COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("qwenvl.train.train_qwen", "fine-tune (flags, or a YAML recipe as first argument)"),
    "dpo": ("qwenvl.train.dpo", "preference tuning on chosen/rejected pairs (DPO, IPO, SimPO, ORPO)"),
    "grpo": ("qwenvl.train.grpo", "RL tuning with sampled answers and rewards (GRPO, Dr. GRPO, DAPO)"),
    "lint": ("qwenvl.data.lint", "check annotation files and report lengths, packing and bad records"),
    "verify-packing": ("qwenvl.data.verify_packing", "packed rows vs the model's unpacked path on real data"),
    "inspect-video": ("qwenvl.data.inspect_video", "frame sampling, sizes and tokens of one video"),
    "merge-lora": ("qwenvl.train.merge_lora", "merge a LoRA checkpoint into a full model"),
    "tiny": ("qwenvl.model.tiny", "write a tiny random checkpoint of a family (offline)"),
    "quickstart": ("qwenvl.quickstart", "the main job: tiny Qwen3-VL learns to read colours on CPU"),
    "eval": ("qwenvl.evaluation.registry", "benchmarks: qwenvl eval <benchmark> infer|eval|merge|compare|export"),
    "cache": ("qwenvl.data.cache_cli", "cache build: fill a media cache of resized images and videos"),
}


def main(argv: list[str] | None = None) -> int:
    """``qwenvl <command> [args]``: dispatch to the tool's own ``main`` (which parses the rest)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: qwenvl <command> [--help | args]\n\ncommands:\n" + "\n".join(
        f"  {name:15} {text}" for name, (_, text) in COMMANDS.items()
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = closest(command, list(COMMANDS))
        print(f"qwenvl: error: unknown command {command!r}" + (f"; did you mean {hint!r}?" if hint else ""),
              file=sys.stderr)  # fmt: skip
        print(usage, file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"qwenvl {command}", *rest]
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
