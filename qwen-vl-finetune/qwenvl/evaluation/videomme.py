"""Video-MME: inference and scoring (``evaluation/VideoMME/run_videomme.py`` is the entry point).

Run::

    python evaluation/VideoMME/run_videomme.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir Video-MME \\
        --duration short --output-file out/videomme_short.jsonl [--use-subtitle] [--preset instruct|think]
    python evaluation/VideoMME/run_videomme.py eval --input-file out/videomme_short.jsonl --output-file out/s.json \\
        [--scoring official|upstream]

Data (``--data-dir``): the hub's ``lmms-lab/Video-MME`` layout, offline: ``videomme/test-*.parquet`` (any
``test-*.parquet`` below the folder), ``videos/<videoID>.mp4`` and, for ``--use-subtitle``,
``subtitle/<videoID>.srt``. ``--duration short|medium|long|all`` (upstream runs one per call).

Frames: sampled by qwen_vl_utils (fps 2, 4..512 frames, 128..512·28² pixels per frame, 24576·28² pixels in all:
upstream's defaults, each a flag; ``--preset`` also sets upstream's preset minimum of 3584 pixels and total of
19267584), so training, the demo and this benchmark sample a video the same way. Subtitles (``--use-subtitle``):
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

import argparse
import glob
import os
import random
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from qwenvl.cli import UserError
from qwenvl.evaluation.core import (
    Task,
    add_compare_command,
    add_eval_command,
    add_export_command,
    add_infer_arguments,
    add_merge_command,
    ci_text,
    empty_answers,
    empty_answers_warning,
    judge_choices,
    load_records,
    run_infer,
    run_main,
    strip_reasoning,
    upstream_presets,
    upstream_result,
    wilson_interval,
    write_scores,
)
from qwenvl.evaluation.mcq import can_infer


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


def video_item(args: argparse.Namespace, path: str) -> dict[str, Any]:
    values = dict(VIDEO_DEFAULTS)
    if args.preset:
        values.update(PRESET_VIDEO)
    for key in VIDEO_DEFAULTS:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return {"type": "video", "video": path, **values}


def prompt_text(row: dict[str, Any], style: str, subtitles: str = "") -> str:
    text = f"This video's subtitles are listed below:\n{subtitles}\n" if subtitles else ""
    question = f"Question: {row['question']}" if style == "upstream" else row["question"]
    return text + INSTRUCTION + f"\n{question}\n" + "\n".join(row["options"]) + "\nThe best answer is:"


def _subtitles(args: argparse.Namespace, row: dict[str, Any], item: dict[str, Any], family: Any) -> str:
    if not args.use_subtitle:
        return ""
    srt = os.path.join(args.data_dir, "subtitle", f"{row['videoID']}.srt")
    if not os.path.isfile(srt):
        return ""
    from qwen_vl_utils.video_io import plan_video

    plan = plan_video(row["video"], {k: v for k, v in item.items() if k != "type"}, family.patch_size)
    times = [i / plan.probe.fps for i in plan.indices]
    return subtitles_at(parse_srt(srt), times)


class _Conversations:
    """Builds a question's turn; the family (for the frame plan behind the subtitles) is read once."""

    def __init__(self) -> None:
        self.family: Any = None

    def __call__(self, args: argparse.Namespace, row: dict[str, Any]) -> list[dict[str, Any]]:
        item = video_item(args, row["video"])
        if args.use_subtitle and self.family is None:
            from qwenvl.model.families import get_family
            from qwenvl.model.loader import read_family

            self.family = get_family(args.family) if args.family else read_family(args.model_path)
        subs = _subtitles(args, row, item, self.family) if args.use_subtitle else ""
        row["_subtitles"] = bool(subs)
        messages: list[dict[str, Any]] = []
        if args.sys_prompt:
            messages.append({"role": "system", "content": Path(args.sys_prompt).read_text()})
        messages.append(
            {"role": "user", "content": [item, {"type": "text", "text": prompt_text(row, args.prompt, subs)}]}
        )
        return messages


def _durations(args: argparse.Namespace) -> list[str]:
    return list(DURATIONS) if args.duration == "all" else [args.duration]


def _ids(args: argparse.Namespace) -> list[str]:
    ids = [r["question_id"] for r in read_questions(args.data_dir, _durations(args))]
    return ids[: args.max_samples] if args.max_samples else ids


def _rows(args: argparse.Namespace, ids: set[str]) -> Iterator[dict[str, Any]]:
    for row in read_questions(args.data_dir, _durations(args)):
        if row["question_id"] in ids:
            yield row


def _record(args: argparse.Namespace, row: dict[str, Any], conversation: list[dict[str, Any]], text: Any) -> dict:
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


TASK = Task(
    name="videomme",
    module="qwenvl.evaluation.videomme",
    question_ids=_ids,
    rows=_rows,
    conversation=_Conversations(),
    record=_record,
    settings=lambda args: {
        "data_dir": args.data_dir,
        "duration": args.duration,
        "use_subtitle": args.use_subtitle,
        "prompt": args.prompt,
        "video": {k: v for k, v in video_item(args, "").items() if k not in ("type", "video")},
        "sys_prompt": args.sys_prompt,
    },  # fmt: skip
    presets=PRESETS,
    answer_settings=("prompt", "video", "use_subtitle", "sys_prompt"),
)


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
    for i, option in enumerate(options):
        letter = chr(ord("A") + i)
        out[letter] = option.split(".", 1)[1].strip() if "." in option else option.strip()
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


def _load(path: Path) -> list[dict[str, Any]]:
    return load_records(path, ("id", "options", "answer", "response"), "run_videomme.py", from_upstream)


def evaluate(args: argparse.Namespace) -> int:
    records = _load(Path(args.input_file))
    scored = score(records, args.scoring)
    judge_summary = None
    if args.judge:
        by_id = {r["id"]: r for r in records}
        judge_summary = judge_choices(args, scored, ("random", "unanswered"), lambda s: (
            s["id"], by_id[s["id"]]["question"], list(option_texts(by_id[s["id"]]["options"]).values()),
            by_id[s["id"]]["response"]))  # fmt: skip
    report = aggregate(scored, args.scoring)
    empty = empty_answers(records)
    write_scores(Path(args.output_file), {"scoring": args.scoring, "judge": judge_summary, **report,
                                          "empty_responses": empty, "questions": scored},
                 {"input_file": args.input_file, "scoring": args.scoring, "judge": judge_summary, "seed": 42})  # fmt: skip
    print(f"scoring: {args.scoring}")
    print(format_report(report, args.scoring))
    if warning := empty_answers_warning(empty, len(records)):
        print(warning)
    print(f"-> {args.output_file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from qwenvl.cli import StrictParser

    parser = StrictParser(prog="run_videomme.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="answer Video-MME and write results.jsonl (resumable)")
    add_infer_arguments(p, PRESETS, seed=3407)
    p.set_defaults(batch_size=1)
    p.add_argument("--data-dir", required=True, help="the Video-MME folder (parquet, videos/, subtitle/)")
    p.add_argument("--duration", default="short", choices=[*DURATIONS, "all"],
                   help="the videos asked (upstream: one duration per run)")  # fmt: skip
    p.add_argument("--use-subtitle", action="store_true", help="show the subtitle cues at the sampled frames")
    p.add_argument("--prompt", default="upstream", choices=["upstream", "official"],
                   help="upstream: the official sentence with upstream's 'Question:' prefix; official: without it")  # fmt: skip
    p.add_argument("--sys-prompt", default=None, help="a text file with a system prompt")
    p.add_argument("--limit", "--max-samples", dest="max_samples", type=int, default=None,
                   help="the first N questions only (--max-samples: upstream's name)")  # fmt: skip
    p.add_argument("--fps", type=float, default=None, help=f"default {VIDEO_DEFAULTS['fps']}")
    p.add_argument("--min-pixels", type=int, default=None, help=f"per frame, default {VIDEO_DEFAULTS['min_pixels']}")
    p.add_argument("--max-pixels", type=int, default=None, help=f"per frame, default {VIDEO_DEFAULTS['max_pixels']}")
    p.add_argument("--min-frames", type=int, default=None, help=f"default {VIDEO_DEFAULTS['min_frames']}")
    p.add_argument("--max-frames", type=int, default=None, help=f"default {VIDEO_DEFAULTS['max_frames']}")
    p.add_argument("--total-pixels", type=int, default=None, help=f"default {VIDEO_DEFAULTS['total_pixels']}")
    p.add_argument(
        "--max-videos-per-prompt",
        type=int,
        default=1,
        help="upstream's vLLM limit; accepted for its command line (one video per question here)",
    )
    p.set_defaults(func=lambda args: run_infer(args, TASK))
    add_eval_command(sub, evaluate, tool="run_videomme.py")
    add_merge_command(sub)
    add_compare_command(sub, lambda path, mode: score(_load(path), mode))
    add_export_command(sub, lambda path, mode: score(_load(path), mode))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
