"""MMMU inference and scoring with the official rules, resumable and explained.

Run::

    python evaluation/mmmu/run_mmmu.py infer --model-path Qwen/Qwen3-VL-8B-Instruct --data-dir MMMU/MMMU \\
        --output-file results.jsonl [--split validation] [--subjects acc,bio] [--limit N] [--batch-size 8] \\
        [--prompt official|qwen] [--image-placement interleaved|first] [--max-pixels N] [--min-pixels N] \\
        [--max-new-tokens 128] [--temperature 0] [--top-p 1] [--top-k 0] [--repetition-penalty 1] [--seed 42] \\
        [--backend hf|vllm] [--tensor-parallel-size N]
    python evaluation/mmmu/run_mmmu.py eval --input-file results.jsonl --output-file scores.json \\
        [--scoring official|strict|lenient]
    python evaluation/mmmu/run_mmmu.py compare A.jsonl B.jsonl [--scoring official]
    python evaluation/mmmu/run_mmmu.py export --input-file results.jsonl --output-file predictions.json

``infer`` appends one JSON line per question (id, subject, question_type, options, gold answer, raw and
stripped response, prompt settings; never images) and resumes: re-running with the same output file skips the
ids already there. ``--limit N`` takes at most N questions per subject. Every output gets a
``<output>.manifest.json`` with the settings, the model's config hash and the package versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from qwenvl.evaluation import command
from qwenvl.evaluation.benchmark import Benchmark, JudgeResult, PixelPolicy, Run, Scored, Scoring, option
from qwenvl.evaluation.mmmu.data import build_messages, gold_answer, iter_questions, question_options, resolve_subjects
from qwenvl.evaluation.mmmu.scoring import (
    ScoringInputError,
    aggregate,
    format_report,
    score,
    subject_of,
    validate_line,
)
from qwenvl.evaluation.results import read_results
from qwenvl.evaluation.runner import upstream_presets
from qwenvl.evaluation.stats import format_comparison, paired_comparison
from qwenvl.inference.base import strip_reasoning


# Upstream's shell presets (spec: evaluation/mmmu infer_instruct.sh / infer_think.sh) and our defaults.
PRESETS = upstream_presets(default_tokens=128, think_temperature=1.0, think_tokens=40960)
# Upstream's --use-cot sentence, appended to the question text.
COT_PROMPT = (
    " If you are uncertain or the problem is too complex, make a reasoned guess based on the information provided. "
    "Avoid repeating steps indefinitely\u2014provide your best guess even if unsure. Determine whether to think step "
    "by step based on the difficulty of the question, considering all relevant information before answering."
)


@dataclass
class Options:
    """MMMU's data and prompt."""

    data_dir: str = option("hub id or local folder, or a folder with MMMU_DEV_VAL.tsv", default="MMMU/MMMU")
    data_file: str | None = option("VLMEvalKit's MMMU_DEV_VAL.tsv (upstream's data file)")
    split: Literal["dev", "validation", "test"] = option(
        "test has no public answers: export its predictions for the MMMU server", default="validation"
    )
    subjects: str | None = option("comma-separated short (acc,bio) or full names; default all 30")
    prompt: Literal["official", "qwen"] = option("official: MMMU's prompt; qwen: upstream Qwen's", default="official")
    image_placement: Literal["interleaved", "first"] = option(
        "images where their <image n> tags are, or all before the text (upstream's)", default="interleaved"
    )
    use_cot: bool = option("append upstream's reasoning hint to each question", default=False)
    cot_prompt: str | None = option("with --use-cot: this text instead of upstream's")


@dataclass
class EvalOptions:
    """What MMMU's scoring may read besides the results."""

    answers: str | None = option("gold answers (official answer_dict_val.json) for an {id: prediction} input file")


def _all_ids(options: Options) -> list[str]:
    source = options.data_file or options.data_dir
    subjects = resolve_subjects(options.subjects)  # every subject by default: those a local copy lacks are skipped
    rows = iter_questions(source, options.split, subjects, images=False, required=bool(options.subjects))
    return [row["id"] for row in rows]


def per_subject(ids: list[str], limit: int) -> list[str]:
    """At most ``limit`` questions of each subject, in order."""
    counts: dict[str, int] = {}
    out = []
    for qid in ids:
        subject = subject_of(qid)
        if counts.get(subject, 0) < limit:
            counts[subject] = counts.get(subject, 0) + 1
            out.append(qid)
    return out


def _rows(options: Options, ids: set[str]) -> Iterator[dict[str, Any]]:
    source, subjects = options.data_file or options.data_dir, resolve_subjects(options.subjects)
    for row in iter_questions(source, options.split, subjects, required=bool(options.subjects)):
        if row["id"] in ids:
            yield row


def _cot(options: Options) -> str:
    return (options.cot_prompt or COT_PROMPT) if options.use_cot else ""


def _conversation(options: Options, row: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    conversation = build_messages(row, options.prompt, options.image_placement)[0]
    if options.use_cot:
        conversation[0]["content"][-1]["text"] += _cot(options)
    return conversation


def _prompt_settings(options: Options) -> dict[str, Any]:
    return {"prompt": options.prompt, "image_placement": options.image_placement, "cot": _cot(options) or None}


def _record(options: Options, row: dict[str, Any], conversation: list[dict[str, Any]], text: Any, run: Run) -> dict:
    return {
        "id": row["id"],
        "subject": subject_of(row["id"]),
        "question_type": row["question_type"],
        "options": question_options(row),
        "answer": gold_answer(row),
        "question": row["question"],
        "response": strip_reasoning(text),
        "raw_response": str(text),
        "num_images": sum(1 for item in conversation[0]["content"] if item["type"] == "image"),
        **_prompt_settings(options),
    }


# ----------------------------------------------------------------------------------------------- eval / compare


def load_questions(path: Path, answers: str | None = None) -> list:
    """The questions of a results file: our JSONL, or an official layout (see ``formats``)."""
    from qwenvl.evaluation.mmmu.formats import load_official

    if not path.exists():
        raise ScoringInputError(f"{path}: no such file or folder")
    questions = load_official(path, answers)
    if questions is None:
        lines = read_results(path)
        questions = [validate_line(line, i) for i, line in enumerate(lines)]
    if not questions:
        raise ScoringInputError(f"{path}: no results to score")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise ScoringInputError(f"{q.id}: appears twice in {path}")
        seen.add(q.id)
    return questions


def export(scored: Scored) -> dict[str, Any]:
    """The official ``{id: prediction}`` file (MMMU evaluation, test submission)."""
    from qwenvl.evaluation.mmmu.formats import export_predictions

    return export_predictions(scored.scored, scored.records)


def unscorable(questions: list, path: Path) -> str | None:
    """The test split has no gold answers: say how to make the submission file instead."""
    if not all(q.gold_problem and q.gold_problem.startswith("no gold") for q in questions):
        return None
    return (f"{path}: none of its {len(questions)} answers has a gold answer (the test split): nothing to score "
            f"here. Make the submission file with: run_mmmu.py export --input-file {path} --output-file "
            "predictions.json, and submit it to the MMMU evaluation server")  # fmt: skip


def judge_records(judge: Any, options: Any, questions: list, records: list[dict[str, Any]],
                  context: Any) -> JudgeResult:  # fmt: skip
    """The records with the judge's verdicts applied: ``--judge openai`` re-checks the multiple-choice answers the
    rules could not parse; ``--judge all`` re-checks every answer (open ones as upstream does: option A the gold
    answer, B "Other answers"). The judged records and their aggregate go beside the rule-based ones."""
    by_id = {q.id: q for q in questions}
    targets = []
    for r in records:
        q = by_id[r["id"]]
        if r.get("gold_problem") or (options.judge == "openai" and not (q.is_mc and r["unparsed"])):
            continue
        if q.is_mc:
            choices = q.options
        else:
            gold = q.answer if isinstance(q.answer, list) else [q.answer]
            choices = [" / ".join(gold), "Other answers"]
        targets.append((r, (q.id, str(q.extra.get("question", "")), choices, q.response)))
    verdicts = judge.choose_all([t[1] for t in targets])
    judged = {r["id"]: dict(r) for r in records}
    changed = failures = 0
    for (r, _), verdict in zip(targets, verdicts):
        record = judged[r["id"]]
        record.update(judge=verdict.letter, judge_reply=verdict.reply)
        if verdict.letter is None:
            failures += 1  # the rule-based result stands
            continue
        q = by_id[r["id"]]
        if q.is_mc:
            golds = q.answer if isinstance(q.answer, list) else [q.answer]
            correct = verdict.letter in golds
            record.update(parsed=verdict.letter, random_guess=False, unparsed=verdict.letter == "Z")
        else:
            correct = verdict.letter == "A"
        changed += correct != r["correct"]
        record["correct"] = correct
    summary = {
        "model": options.judge_model,
        "base_url": options.base_url,
        "scope": "every answer" if options.judge == "all" else "unparsed multiple-choice answers",
        "rechecked": len(targets),
        "changed": changed,
        "failures": failures,
        "requests": judge.requests,
        "cached": sum(v.cached for v in verdicts),
        "cache_file": str(judge.cache_path),
    }
    judged_records = list(judged.values())
    aggregated = aggregate(judged_records)
    return JudgeResult(summary, {"judged": aggregated, "judged_questions": judged_records},
                       format_judged(aggregate(records), aggregated, summary))  # fmt: skip


def format_judged(rule: dict[str, Any], judged: dict[str, Any], summary: dict[str, Any]) -> str:
    """Rule-based and judged accuracy side by side (Overall and each discipline)."""
    lines = [
        f"judge {summary['model']} ({summary['scope']}): {summary['rechecked']} re-checked, {summary['changed']} "
        f"changed, {summary['failures']} without a usable verdict (rule result kept); {summary['requests']} "
        f"request(s), {summary['cached']} from the cache",
        f"{'':44} {'rule':>7} {'judged':>7}",
    ]
    for name in rule["disciplines"]:
        lines.append(f"{'Overall-' + name:44} {round(rule['disciplines'][name]['acc'], 3):>7.3f} "
                     f"{round(judged['disciplines'][name]['acc'], 3):>7.3f}")  # fmt: skip
    lines.append(f"{'Overall':44} {round(rule['overall']['acc'], 3):>7.3f} {round(judged['overall']['acc'], 3):>7.3f}")
    return "\n".join(lines)


def compare(left: Scored, right: Scored) -> str:
    """The paired test, and the questions whose correctness differs, split by why: the answer changed, the same
    answer was parsed differently, or the seeded guess stream moved."""
    a = {r["id"]: r for r in left.scored}
    b = {r["id"]: r for r in right.scored}
    responses_a = {q.id: " ".join(q.response.split()) for q in left.records}
    responses_b = {q.id: " ".join(q.response.split()) for q in right.records}
    common = [i for i in a if i in b]
    parse_changed, answer_changed, guess_changed = [], [], []
    for qid in common:
        if a[qid]["correct"] == b[qid]["correct"]:
            continue
        if responses_a[qid] != responses_b[qid]:
            answer_changed.append(qid)  # the model said something else
        elif a[qid]["random_guess"] or b[qid]["random_guess"]:
            guess_changed.append(qid)  # same words, a random guess on a side: the guess stream moved, not the answer
        else:
            parse_changed.append(qid)  # same words, parsed differently (another --scoring, a parser change)
    lines = [format_comparison(paired_comparison({i: r["correct"] for i, r in a.items()},
                                                 {i: r["correct"] for i, r in b.items()}))]  # fmt: skip

    def show(title: str, ids: list[str]) -> None:
        lines.append(f"{title}: {len(ids)}")
        for qid in ids:
            ra, rb = a[qid], b[qid]
            lines.append(f"  {qid}: A {'right' if ra['correct'] else 'wrong'} (parsed {ra['parsed']!r}) -> "
                         f"B {'right' if rb['correct'] else 'wrong'} (parsed {rb['parsed']!r})")  # fmt: skip

    show("answer changed", answer_changed)
    show("parse changed", parse_changed)
    show("random guess changed (same answer; the seeded guess stream moved)", guess_changed)
    return "\n".join(lines)


SCORING_HELP = {
    "official": "MMMU's parser (an unparsed multiple-choice answer is a seeded random guess)",
    "strict": "the official parser, unparsed answers wrong",
    "lenient": "official, plus answers the official parser misses",
}


def _mode(mode: str) -> Scoring:
    return Scoring(SCORING_HELP[mode], lambda questions, context: score(questions, mode),
                   lambda scored, context: aggregate(scored), lambda report, context: format_report(report))  # fmt: skip


BENCHMARK = Benchmark(
    name="mmmu",
    description="MMMU: college-level multiple-choice and open questions, 30 subjects",
    doc=__doc__,
    options=Options,
    question_ids=_all_ids,
    rows=_rows,
    conversation=_conversation,
    record=_record,
    settings=lambda options: {
        "data_dir": options.data_file or options.data_dir,
        "split": options.split,
        "subjects": resolve_subjects(options.subjects),
        **_prompt_settings(options),
    },  # fmt: skip
    answer_settings=("prompt", "image_placement", "cot"),
    limit_help="at most N questions per subject",
    limit=per_subject,
    pixels=PixelPolicy(image=None),  # upstream's MMMU sets no pixels: its preset keeps the checkpoint's
    presets=PRESETS,
    scoring={mode: _mode(mode) for mode in SCORING_HELP},
    load=lambda path, options: load_questions(path, options.answers),
    eval_options=EvalOptions,
    judge=judge_records,
    judge_unread="the multiple-choice answers the rules cannot parse",
    unscorable=unscorable,
    compare=compare,
    export=export,
    export_help="the official {id: prediction} file (MMMU evaluation, test submission)",
)


def main(argv: list[str] | None = None) -> int:
    return command.main(BENCHMARK, argv)


if __name__ == "__main__":
    raise SystemExit(main())
