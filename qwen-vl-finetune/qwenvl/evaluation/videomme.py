"""Video-MME: inference and scoring (``evaluation/VideoMME/run_videomme.py`` is the entry point).

Run::

    python evaluation/VideoMME/run_videomme.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir Video-MME \\
        --duration short --output-file out/videomme_short.jsonl [--use-subtitle] [--preset instruct|think]
    python evaluation/VideoMME/run_videomme.py eval --input-file out/videomme_short.jsonl --output-file out/s.json \\
        [--scoring official|upstream]

Data (``--data-dir``): the hub's ``lmms-lab/Video-MME`` layout, offline: ``videomme/test-*.parquet`` (any
``test-*.parquet`` below the folder), ``videos/<videoID>.mp4`` and, for ``--use-subtitle``,
``subtitle/<videoID>.srt``. ``--duration short|medium|long|all`` (upstream runs one per call).

Frames: sampled by qwen_vl_utils under the runner's pixel policy (``qwenvl.evaluation.runner``): the checkpoint's
saved video budget; with ``--preset`` upstream's (fps 2, 4..512 frames, 3584..512·28² pixels per frame, 19267584
pixels in all); ``--fps``, ``--min-frames``, ``--max-frames``, ``--min-pixels`` / ``--max-pixels`` (per frame) and
``--total-pixels`` over both; so training, the demo and this benchmark sample a video the same way. Subtitles
(``--use-subtitle``):
the cues shown at the frames the model sees (a cue counts when a frame's time is strictly inside it), joined with
spaces, before the question, as the official prompt asks ("only the subtitles matching the sampled frames";
upstream samples a second, different frame grid for them).

Prompt: ``--prompt upstream`` (default: the official sentence with upstream's ``Question:`` prefix) or
``official`` (the README's, without the prefix).

Scoring:

* ``official``: Video-MME's scorer (``eval_your_results.py``): answer prefixes removed, then the first capital
  A-D anywhere; more than 10 words without one is unanswered; accuracy is correct / **answered**, per duration,
  domain, sub-category and task type, and overall over the task types;
* ``upstream``: upstream's token matcher over the option texts, unresolved answers a seeded random letter or Z
  (upstream asks a GPT judge 25 times first; ``--judge openai`` does that here), accuracy over all questions,
  per domain and sub-category.
"""

from __future__ import annotations

import glob
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from qwenvl.cli import UserError
from qwenvl.evaluation import command
from qwenvl.evaluation.benchmark import Benchmark, JudgeResult, PixelPolicy, Run, Scoring, option
from qwenvl.evaluation.reports import judge_choices, upstream_result
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.evaluation.stats import ci_text, wilson_interval
from qwenvl.inference.base import strip_reasoning
from qwenvl.scoring.mcq import can_infer


DURATIONS = ("short", "medium", "long")
PRESETS = upstream_presets(default_tokens=128, think_temperature=0.6, think_tokens=32768)
VIDEO_DEFAULTS = dict(fps=2.0, min_pixels=128 * 28 * 28, max_pixels=512 * 28 * 28, min_frames=4, max_frames=512,
                      total_pixels=24576 * 28 * 28)  # fmt: skip
PRESET_VIDEO = dict(min_pixels=3584, total_pixels=19267584)  # upstream's infer_*.sh
INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. Respond with only the "
    "letter (A, B, C, or D) of the correct option."
)
# The official scorer deletes these (case-sensitive, in this order). Two pairs are glued together in its source
# (a missing comma), so "The best option is" and "Best answer:" alone are never removed: kept as it is.
OFFICIAL_PREFIXES = [
    "The best answer is", "The correct answer is", "The answer is", "The answer",
    "The best option isThe correct option is", "Best answer:Best option:", "Answer:", "Option:",
    "The correct answer", "The correct option",
]  # fmt: skip


# ----------------------------------------------------------------------------------------------- data


def _parquet_files(data_dir: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(data_dir, "**", "test-*.parquet"), recursive=True))
    if not files:
        raise UserError(
            f"--data-dir {data_dir}: no test-*.parquet below it; expected the lmms-lab/Video-MME layout "
            "(videomme/test-00000-of-00001.parquet, videos/, subtitle/)"
        )
    return files


def read_questions(data_dir: str, durations: list[str]) -> list[dict[str, Any]]:
    """The questions of the wanted durations (file order), each with its video path (checked to exist)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for file in _parquet_files(data_dir):
        rows += pq.read_table(file).to_pylist()
    needed = ("videoID", "duration", "question_id", "question", "options", "answer")
    if rows and any(k not in rows[0] for k in needed):
        raise UserError(f"{data_dir}: the parquet lacks {[k for k in needed if k not in rows[0]]} (Video-MME columns)")
    out = []
    for row in rows:
        if row["duration"] not in durations:
            continue
        if row["answer"] not in "ABCDE" or len(row["answer"]) != 1:
            raise UserError(f"{row['question_id']}: answer {row['answer']!r} is not a letter A-E")
        video = os.path.join(data_dir, "videos", f"{row['videoID']}.mp4")
        if not os.path.isfile(video):
            raise UserError(f"{row['question_id']}: {video} does not exist (unpack the videos_chunked zips there)")
        out.append({**row, "video": video, "options": list(row["options"])})
    return out


def parse_srt(path: str) -> list[tuple[float, float, str]]:
    """``(start s, end s, text)`` of each cue of an SRT file (lines of a cue and ``\\N`` joined by spaces)."""
    stamp = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)\s*-->\s*(\d+):(\d+):(\d+)[,.](\d+)")
    cues = []
    for block in re.split(r"\n\s*\n", Path(path).read_text(encoding="utf-8-sig", errors="replace")):
        lines = block.strip().splitlines()
        for i, line in enumerate(lines):
            m = stamp.search(line)
            if m:
                g = [int(x) for x in m.groups()]
                start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
                end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
                text = " ".join(lines[i + 1 :]).replace("\\N", " ").strip()
                cues.append((start, end, text))
                break
    return cues


def subtitles_at(cues: list[tuple[float, float, str]], times: list[float]) -> str:
    """The non-blank cues (file order) shown at any of ``times`` (strictly inside), joined with spaces."""
    return " ".join(text for start, end, text in cues if text.strip() and any(start < t < end for t in times))


# ----------------------------------------------------------------------------------------------- prompt


def prompt_text(row: dict[str, Any], style: str, subtitles: str = "") -> str:
    text = f"This video's subtitles are listed below:\n{subtitles}\n" if subtitles else ""
    question = f"Question: {row['question']}" if style == "upstream" else row["question"]
    return text + INSTRUCTION + f"\n{question}\n" + "\n".join(row["options"]) + "\nThe best answer is:"


def _subtitles(options: Options, row: dict[str, Any], item: dict[str, Any], family: Any) -> str:
    if not options.use_subtitle:
        return ""
    srt = os.path.join(options.data_dir, "subtitle", f"{row['videoID']}.srt")
    if not os.path.isfile(srt):
        return ""
    from qwen_vl_utils.video_io import plan_video

    plan = plan_video(row["video"], {k: v for k, v in item.items() if k != "type"}, family.patch_size)
    times = [i / plan.probe.fps for i in plan.indices]
    return subtitles_at(parse_srt(srt), times)


@dataclass
class Options:
    """Video-MME's data and prompt."""

    data_dir: str = option("the Video-MME folder (parquet, videos/, subtitle/)", required=True)
    duration: Literal["short", "medium", "long", "all"] = option(
        "the videos asked (upstream: one duration per run)", default="short"
    )
    use_subtitle: bool = option("show the subtitle cues at the sampled frames", default=False)
    prompt: Literal["upstream", "official"] = option(
        "upstream: the official sentence with upstream's 'Question:' prefix; official: without it", default="upstream"
    )
    sys_prompt: str | None = option("a text file with a system prompt")
    max_videos_per_prompt: int = option(
        "upstream's vLLM limit; accepted for its command line (one video per question here)", default=1
    )


def _conversation(options: Options, row: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    item = {"type": "video", "video": row["video"]}
    subs = ""
    if options.use_subtitle:  # the cues at the frames the backend will sample: the same budget, the same plan
        planned = run.budget.video_item(item)
        if run.video_total_pixels is not None:
            planned = {"total_pixels": run.video_total_pixels, **planned}
        subs = _subtitles(options, row, planned, run.family)
    row["_subtitles"] = bool(subs)
    messages: list[dict[str, Any]] = []
    if options.sys_prompt:
        messages.append({"role": "system", "content": Path(options.sys_prompt).read_text()})
    messages.append(
        {"role": "user", "content": [item, {"type": "text", "text": prompt_text(row, options.prompt, subs)}]}
    )
    return messages


def _durations(options: Options) -> list[str]:
    return list(DURATIONS) if options.duration == "all" else [options.duration]


def _ids(options: Options) -> list[str]:
    return [r["question_id"] for r in read_questions(options.data_dir, _durations(options))]


def _rows(options: Options, ids: set[str]) -> Iterator[dict[str, Any]]:
    for row in read_questions(options.data_dir, _durations(options)):
        if row["question_id"] in ids:
            yield row


def _record(options: Options, row: dict[str, Any], conversation: list[dict[str, Any]], text: Any, run: Run) -> dict:
    return {
        "id": row["question_id"],
        "video_id": row["videoID"],
        "duration": row["duration"],
        "domain": row.get("domain"),
        "sub_category": row.get("sub_category"),
        "task_type": row.get("task_type"),
        "question": row["question"],
        "options": row["options"],
        "answer": row["answer"],
        "subtitles": row.get("_subtitles", False),
        "response": strip_reasoning(text),
        "raw_response": str(text),
    }


# ----------------------------------------------------------------------------------------------- scoring


def official_extract(response: str) -> str:
    """Video-MME's ``extract_characters_regex``: the letter, or '' (unanswered)."""
    s = response.strip()
    for prefix in OFFICIAL_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search("[ABCD]", s)
    return match[0] if match else ""


def option_texts(options: list[str]) -> dict[str, str]:
    """``["A. Black.", ...]`` -> ``{"A": "Black.", ...}`` (the text after the first period, as upstream)."""
    out = {}
    for i, text in enumerate(options):
        letter = chr(ord("A") + i)
        out[letter] = text.split(".", 1)[1].strip() if "." in text else text.strip()
    return out


def score(records: list[dict[str, Any]], mode: str = "official", seed: int = 42) -> list[dict[str, Any]]:
    if mode not in ("official", "upstream"):
        raise UserError(f"--scoring must be official or upstream, got {mode!r}")
    rng = random.Random(seed)
    out = []
    for r in sorted(records, key=lambda r: r["id"]):
        base = {k: r.get(k) for k in ("id", "duration", "domain", "sub_category", "task_type", "answer")}
        if mode == "official":
            letter = official_extract(r["response"])
            out.append({**base, "extracted": letter, "answered": bool(letter), "correct": letter == r["answer"],
                        "method": "rule" if letter else "unanswered"})  # fmt: skip
            continue
        options = option_texts(r["options"])
        letter = can_infer(r["response"], options, "upstream")
        how = "rule"
        if letter is None:
            letter, how = rng.choice([*options, "Z"]), "random"
        out.append({**base, "extracted": letter, "answered": True, "correct": letter == r["answer"], "method": how})
    return out


def aggregate(scored: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        answered = [r for r in rs if r["answered"]]
        correct = sum(r["correct"] for r in answered)
        denominator = len(answered) if mode == "official" else len(rs)
        return {"num": len(rs), "answered": len(answered), "correct": correct, "acc": correct / max(denominator, 1),
                "ci95": wilson_interval(correct, denominator)}  # fmt: skip

    report: dict[str, Any] = {"overall": summary(scored), "denominator": "answered" if mode == "official" else "all"}
    keys = ("duration", "domain", "sub_category", "task_type") if mode == "official" else ("domain", "sub_category")
    for key in keys:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in scored:
            if r.get(key):
                groups.setdefault(r[key], []).append(r)
        report[key] = {k: summary(v) for k, v in sorted(groups.items())}
    if mode == "official" and report.get("task_type"):
        # The official overall sums correct and answered over the task types.
        parts = report["task_type"].values()
        answered = sum(p["answered"] for p in parts)
        report["overall"]["acc"] = sum(p["correct"] for p in parts) / max(answered, 1)
        report["overall"]["ci95"] = wilson_interval(sum(p["correct"] for p in parts), answered)
    return report


def format_report(report: dict[str, Any], mode: str) -> str:
    lines = [f"accuracy over {report['denominator']} questions" + (" (official: unanswered ones leave the "
             "denominator)" if mode == "official" else ""),
             f"{'':44} {'num':>5} {'answered':>8} {'acc %':>7} {'95% CI':>14}"]  # fmt: skip

    def row(name: str, s: dict[str, Any]) -> str:
        return f"{name:44} {s['num']:>5} {s['answered']:>8} {100 * s['acc']:>7.1f} {ci_text(s, 100, 1):>14}"

    lines.append(row("Overall", report["overall"]))
    for key in ("duration", "domain", "sub_category", "task_type"):
        for name, s in report.get(key, {}).items():
            lines.append(row(f"  {key}: {name}", s))
    return "\n".join(lines)


def from_upstream(line: dict[str, Any]) -> dict[str, Any]:
    """A record of upstream's ``run_videomme.py infer`` (its compact annotation) as ours."""
    a = line["annotation"]
    task = str(line.get("task") or "")
    duration = next((d for d in DURATIONS if f"_{d}_" in f"{task}_"), None)
    return {"id": str(a["question_id"]), "video_id": Path(str(a.get("video_path") or "")).stem or None,
            "duration": duration, "domain": a.get("domain"), "sub_category": a.get("sub_category"),
            "task_type": a.get("task_type"), "question": a["question"],
            "options": [f"{k}. {v}" for k, v in a["choices"].items()], "answer": str(a["answer"]).strip(),
            "subtitles": task.endswith("_w_subtitle"), **upstream_result(line)}  # fmt: skip


def _judge(judge: Any, options: Any, records: list[dict[str, Any]], scored: list[dict[str, Any]],
           context: Any) -> JudgeResult:  # fmt: skip
    by_id = {r["id"]: r for r in records}
    return JudgeResult(judge_choices(judge, options, scored, ("random", "unanswered"), lambda s: (
        s["id"], by_id[s["id"]]["question"], list(option_texts(by_id[s["id"]]["options"]).values()),
        by_id[s["id"]]["response"])))  # fmt: skip


def _mode(mode: str, help: str) -> Scoring:
    return Scoring(help, lambda records, context: score(records, mode), lambda scored, context: aggregate(scored, mode),
                   lambda report, context: format_report(report, mode))  # fmt: skip


BENCHMARK = Benchmark(
    name="videomme",
    description="Video-MME: multiple-choice questions on short/medium/long videos",
    doc=__doc__,
    tool="run_videomme.py",
    options=Options,
    question_ids=_ids,
    rows=_rows,
    conversation=_conversation,
    record=_record,
    settings=lambda options: {
        "data_dir": options.data_dir,
        "duration": options.duration,
        "use_subtitle": options.use_subtitle,
        "prompt": options.prompt,
        "sys_prompt": options.sys_prompt,
    },  # fmt: skip
    answer_settings=("prompt", "use_subtitle", "sys_prompt"),
    limit_flags=("--limit", "--max-samples"),
    pixels=PixelPolicy(media=("video",), video={**VIDEO_DEFAULTS, **PRESET_VIDEO}),
    presets=PRESETS,
    seed=3407,
    batch_size=1,
    scoring={
        "official": _mode("official", "Video-MME's eval_your_results.py (accuracy over the answered questions)"),
        "upstream": _mode("upstream", "upstream's matcher, an unreadable answer a seeded random letter or Z"),
    },
    from_upstream=from_upstream,
    judge=_judge,
)


def main(argv: list[str] | None = None) -> int:
    return command.main(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
