"""What a benchmark declares: one :class:`Benchmark` object per benchmark module, and the typed options every
benchmark shares.

A benchmark states only what is its own (lmms-eval's task pattern)::

    BENCHMARK = Benchmark(
        name="realworldqa", description="RealWorldQA: multiple-choice questions on real-world photos",
        options=Options,                       # a dataclass: its fields are the data flags (``option(...)``)
        question_ids=..., rows=...,            # every selected id, in order; the rows of some ids, read lazily
        conversation=..., record=...,          # one question's turn; its results line
        settings=..., answer_settings=(...),   # its manifest entries; those that change answers
        pixels=PixelPolicy(image=...),         # upstream's pixel values (what ``--preset`` takes)
        presets=..., scoring={"official": Scoring(...), ...},
        from_upstream=..., judge=...,          # upstream's results lines; the LLM judge's re-check
    )

and :mod:`qwenvl.evaluation.runner` gives it ``infer`` / ``evaluate`` / ``merge`` / ``compare`` / ``export``
(shards, resume, lock, manifest, presets, the pixel policy, the judge), :mod:`qwenvl.evaluation.command` its
command line. Nothing here imports torch or parses flags.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Literal


def option(help: str, *aliases: str, default: Any = None, **kwargs: Any) -> Any:
    """A field of an options dataclass: its flag is ``--field-name`` (plus ``aliases``), documented by ``help``;
    ``kwargs`` are argparse's (``choices``, ``required``)."""
    if kwargs.get("required"):
        default = None
    return field(default=default, metadata={"help": help, "aliases": aliases, **kwargs})


# ----------------------------------------------------------------------------------------------- pixels


PolicyName = Literal["checkpoint", "upstream", "flags"]
IMAGE_KEYS = ("min_pixels", "max_pixels")
VIDEO_KEYS = ("fps", "min_pixels", "max_pixels", "min_frames", "max_frames", "total_pixels")


@dataclass(frozen=True)
class PixelPolicy:
    """Upstream's pixel values of a benchmark, per kind of media it asks about: ``image`` (``min_pixels``,
    ``max_pixels``) and / or ``video`` (``fps``, ``min_pixels`` / ``max_pixels`` per frame, ``min_frames``,
    ``max_frames``, ``total_pixels``). ``None`` for a kind the benchmark has but upstream sets nothing for (its
    ``--preset`` then keeps the checkpoint's budget); ``media`` names the kinds the benchmark sends."""

    media: tuple[Literal["image", "video"], ...] = ("image",)
    image: dict[str, int] | None = None
    video: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        assert set(self.image or {}) <= set(IMAGE_KEYS), self.image
        assert set(self.video or {}) <= set(VIDEO_KEYS), self.video


# ----------------------------------------------------------------------------------------------- options


@dataclass
class InferOptions:
    """How ``infer`` runs, whatever the benchmark: output, shards, batch, decoding, sample limit, pixels."""

    output_file: str
    batch_size: int | None = None  # None: the benchmark's default
    data_parallel_size: int = 1
    num_shards: int | None = None
    shard_index: int | None = None
    preset: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None  # None: the benchmark's default
    allow_settings_change: bool = False
    limit: int | None = None  # the first N questions (a benchmark may count per group: MMMU per subject)
    # The pixel flags: over the preset's and the checkpoint's values (see the runner's pixel policy).
    min_pixels: int | None = None
    max_pixels: int | None = None
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    total_pixels: int | None = None


PIXEL_FLAGS = ("min_pixels", "max_pixels", "fps", "min_frames", "max_frames", "total_pixels")


@dataclass
class JudgeOptions:
    """The LLM judge of ``eval`` (an OpenAI-compatible server), and upstream's judge flags mapped onto it."""

    judge: Literal["openai", "all"] | None = None
    judge_model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 8
    eval_model: str | None = None
    api_type: Literal["dash", "mit"] | None = None


@dataclass
class NoOptions:
    """A benchmark without options of its own."""


# ----------------------------------------------------------------------------------------------- run context


@dataclass
class Run:
    """What the benchmark's ``conversation`` and ``record`` may ask about the run: its options, backend, and the
    pixel budget in effect (``budget``: a :class:`qwenvl.model.budget.MediaBudget`; ``video_total_pixels``)."""

    options: InferOptions
    backend: Any  # BackendConfig
    budget: Any
    video_total_pixels: int | None = None

    @cached_property
    def family(self) -> Any:
        """The model's family entry (``--family``, else read from the checkpoint)."""
        from qwenvl.model.families import get_family
        from qwenvl.model.loader import read_family

        if self.backend.family:
            return get_family(self.backend.family)
        return read_family(self.backend.model_path or self.backend.model)

    def image_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` with the budget's image keys, as the backend will resize it."""
        return self.budget.image_item(item)


@dataclass
class EvalContext:
    """What scoring may ask about an ``eval`` / ``compare`` / ``export``: the file, the mode, the options."""

    input_file: Path
    mode: str
    options: Any  # the benchmark's eval options (``Benchmark.eval_options``), or NoOptions()


# ----------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Scoring:
    """One scoring mode: per-question results, their aggregate (the report's body), and its printed table."""

    help: str
    score: Callable[[list[Any], EvalContext], list[dict[str, Any]]]
    aggregate: Callable[[list[dict[str, Any]], EvalContext], dict[str, Any]]
    format_report: Callable[[dict[str, Any], EvalContext], str]


@dataclass
class JudgeResult:
    """What a benchmark's judge hook returns: the summary for the report (``judge``), entries added to the scores
    body, and lines printed after the report."""

    summary: dict[str, Any]
    body: dict[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass
class Scored:
    """A results file scored in one mode (what ``compare`` and ``export`` hooks receive)."""

    path: Path
    records: list[Any]
    scored: list[dict[str, Any]]
    context: EvalContext


# ----------------------------------------------------------------------------------------------- the benchmark


def first_n(ids: list[str], n: int) -> list[str]:
    return ids[:n]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark, declared (see the module doc). ``O`` below is its ``options`` dataclass."""

    name: str
    description: str
    options: type  # the data options: a dataclass whose fields are flags (``option(...)``)
    question_ids: Callable[[Any], list[str]]  # (O) -> every selected question, in order
    rows: Callable[[Any, set[str]], Iterator[dict[str, Any]]]  # (O, ids) -> the rows of these ids, in order
    conversation: Callable[[Any, dict[str, Any], Run], list[dict[str, Any]]]
    record: Callable[[Any, dict[str, Any], list[dict[str, Any]], Any, Run], dict[str, Any]]  # (O, row, conv, text)
    scoring: dict[str, Scoring]  # the first is the default
    presets: dict[str, dict[str, Any]]
    pixels: PixelPolicy = PixelPolicy()
    settings: Callable[[Any], dict[str, Any]] = lambda options: {}  # its own manifest entries
    answer_settings: tuple[str, ...] = ()  # the manifest entries that change answers (compared on resume)
    limit_flags: tuple[str, ...] = ("--limit",)  # the sample limit's flag names (upstream's kept)
    limit_help: str = "the first N questions only"
    limit: Callable[[list[str], int], list[str]] = first_n  # how the limit cuts the ids
    seed: int = 42
    batch_size: int = 8
    tool: str = ""  # what its results files are called in messages (upstream's script name), default its name
    # eval side
    required: tuple[str, ...] = ("id", "options", "answer", "response")  # fields every results line has
    from_upstream: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # upstream's results line -> ours
    upstream_fields: tuple[str, ...] = ("question_id", "annotation", "result")  # how upstream's lines look
    load: Callable[[Path, Any], list[Any]] | None = None  # a reader of its own (default: the JSONL, checked)
    eval_options: type = NoOptions  # eval / compare / export options (``--data-dir`` where scoring reads data)
    judge: Callable[..., JudgeResult] | None = None  # (Judge, JudgeOptions, records, scored, EvalContext)
    judge_unread: str = "the answers the rules cannot read"  # what ``--judge openai`` re-checks
    per_question: bool = True  # the body lists per-question results (``questions``); ODinW: per dataset
    unscorable: Callable[[list[Any], Path], str | None] | None = None  # a message when a file has nothing to score
    compare: Callable[[Scored, Scored], str] | None = None  # default: accuracies, paired test, changed questions
    export: Callable[[Scored], Any] | None = None  # default: {id: extracted answer}
    export_help: str = "the {id: extracted answer} JSON of a results file"
    doc: str = ""  # the module's doc, for --help

    def __post_init__(self) -> None:
        assert self.scoring and "default" in self.presets, self.name

    @property
    def tool_name(self) -> str:
        return self.tool or f"qwenvl eval {self.name}"


def is_required(f: Any) -> bool:
    return bool(f.metadata.get("required")) or (f.default is MISSING and f.default_factory is MISSING)
