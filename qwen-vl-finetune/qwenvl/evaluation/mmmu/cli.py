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

import argparse
import json
import os
from pathlib import Path
from typing import Any, Iterator

from qwenvl.cli import UserError
from qwenvl.evaluation.core import (
    SCORES_HELP,
    Task,
    add_infer_arguments,
    add_judge_arguments,
    format_comparison,
    merge_outputs,
    paired_comparison,
    read_results,
    run_infer,
    run_main,
    scores_file,
    strip_reasoning,
    upstream_presets,
    write_manifest,
    write_scores,
)
from qwenvl.evaluation.core import generation_settings as _generation_settings
from qwenvl.evaluation.mmmu.data import build_messages, gold_answer, iter_questions, question_options, resolve_subjects
from qwenvl.evaluation.mmmu.scoring import (
    ScoringInputError,
    aggregate,
    format_report,
    score,
    subject_of,
    validate_line,
)


# Upstream's shell presets (spec: evaluation/mmmu infer_instruct.sh / infer_think.sh) and our defaults.
PRESETS = upstream_presets(default_tokens=128, think_temperature=1.0, think_tokens=40960)
# Upstream's --use-cot sentence, appended to the question text.
COT_PROMPT = (
    " If you are uncertain or the problem is too complex, make a reasoned guess based on the information provided. "
    "Avoid repeating steps indefinitely\u2014provide your best guess even if unsure. Determine whether to think step "
    "by step based on the difficulty of the question, considering all relevant information before answering."
)


def generation_settings(args: argparse.Namespace) -> Any:
    """Decoding settings: the preset's values, each replaced by its flag when given."""
    return _generation_settings(args, PRESETS)


def _selected_ids(args: argparse.Namespace) -> list[str]:
    ids: list[str] = []
    per_subject: dict[str, int] = {}
    source = args.data_file or args.data_dir
    subjects = resolve_subjects(args.subjects)  # every subject by default: those a local copy lacks are skipped
    for row in iter_questions(source, args.split, subjects, images=False, required=bool(args.subjects)):
        subject = subject_of(row["id"])
        if args.limit is not None and per_subject.get(subject, 0) >= args.limit:
            continue
        per_subject[subject] = per_subject.get(subject, 0) + 1
        ids.append(row["id"])
    return ids


def _rows(args: argparse.Namespace, ids: set[str]) -> Iterator[dict[str, Any]]:
    source, subjects = args.data_file or args.data_dir, resolve_subjects(args.subjects)
    for row in iter_questions(source, args.split, subjects, required=bool(args.subjects)):
        if row["id"] in ids:
            yield row


def _cot(args: argparse.Namespace) -> str:
    return (args.cot_prompt or COT_PROMPT) if args.use_cot else ""


def _conversation(args: argparse.Namespace, row: dict[str, Any]) -> list[dict[str, Any]]:
    conversation = build_messages(row, args.prompt, args.image_placement)[0]
    if args.use_cot:
        conversation[0]["content"][-1]["text"] += _cot(args)
    return conversation


def _prompt_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"prompt": args.prompt, "image_placement": args.image_placement, "cot": _cot(args) or None}


def _record(args: argparse.Namespace, row: dict[str, Any], conversation: list[dict[str, Any]], text: Any) -> dict:
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
        **_prompt_settings(args),
    }


TASK = Task(
    name="mmmu",
    module="qwenvl.evaluation.mmmu.cli",
    question_ids=_selected_ids,
    rows=_rows,
    conversation=_conversation,
    record=_record,
    settings=lambda args: {
        "data_dir": args.data_file or args.data_dir,
        "split": args.split,
        "subjects": resolve_subjects(args.subjects),
        "limit_per_subject": args.limit,
        **_prompt_settings(args),
    },
    presets=PRESETS,
    budget_overrides=lambda args: {"max_pixels": args.max_pixels, "min_pixels": args.min_pixels},
    answer_settings=("prompt", "image_placement", "cot"),
)


def infer(args: argparse.Namespace) -> int:
    resolve_subjects(args.subjects)  # a typo in --subjects is reported before any model loads
    return run_infer(args, TASK)


def merge(args: argparse.Namespace) -> int:
    return merge_outputs(Path(args.output_file), args.num_shards)


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


def export(args: argparse.Namespace) -> int:
    from qwenvl.evaluation.mmmu.formats import export_predictions

    questions = load_questions(Path(args.input_file), args.answers)
    predictions = export_predictions(score(questions, args.scoring), questions)
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(predictions, indent=1, ensure_ascii=False) + "\n")
    write_manifest(output, {"mode": "export", "input_file": args.input_file, "scoring": args.scoring, "seed": 42})
    guesses = sum(1 for q in questions if q.is_mc and predictions[q.id] is None)
    print(f"{len(predictions)} prediction(s) -> {output} (official {{id: prediction}} format)")
    if guesses:
        print(f"warning: {guesses} multiple-choice answer(s) unparsed and exported as null (--scoring {args.scoring})")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    questions = load_questions(Path(args.input_file), args.answers)
    if all(q.gold_problem and q.gold_problem.startswith("no gold") for q in questions):
        print(
            f"{args.input_file}: none of its {len(questions)} answers has a gold answer (the test split): nothing to "
            "score here. Make the submission file with: run_mmmu.py export --input-file "
            f"{args.input_file} --output-file predictions.json, and submit it to the MMMU evaluation server"
        )
        return 0
    records = score(questions, args.scoring)
    report = aggregate(records)
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if args.judge:
        judged, judge_summary = judge_records(args, questions, records, output)
        extra = {"judged": aggregate(judged), "judge": judge_summary, "judged_questions": judged}
    body = {"scoring": args.scoring, "input_file": args.input_file, **report, "questions": records, **extra}
    settings = {"input_file": args.input_file, "scoring": args.scoring, "seed": 42}
    write_scores(output, body, {**settings, **({"judge": extra["judge"]} if extra else {})})
    print(f"scoring: {args.scoring}")
    print(format_report(report))
    if extra:
        print(format_judged(report, extra["judged"], extra["judge"]))
    print(f"-> {output}")
    return 0


def judge_records(
    args: argparse.Namespace, questions: list, records: list[dict[str, Any]], output: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records with the judge's verdicts applied: ``--judge openai`` re-checks the multiple-choice answers the
    rules could not parse; ``--judge all`` re-checks every answer (open ones as upstream does: option A the gold
    answer, B "Other answers")."""
    from qwenvl.evaluation.judge import Judge

    if not args.base_url or not args.judge_model:
        raise UserError("--judge needs --base-url (an OpenAI-compatible server) and --judge-model (its model name)")
    cache = output.with_name(output.stem + ".judge.jsonl")
    judge = Judge(args.base_url, args.judge_model, cache, os.environ.get(args.api_key_env),
                  concurrency=args.judge_concurrency)  # fmt: skip
    by_id = {q.id: q for q in questions}
    targets = []
    for r in records:
        q = by_id[r["id"]]
        if r.get("gold_problem") or (args.judge == "openai" and not (q.is_mc and r["unparsed"])):
            continue
        if q.is_mc:
            options = q.options
        else:
            gold = q.answer if isinstance(q.answer, list) else [q.answer]
            options = [" / ".join(gold), "Other answers"]
        targets.append((r, (q.id, str(q.extra.get("question", "")), options, q.response)))
    verdicts = judge.choose_all([t[1] for t in targets])
    judged = {r["id"]: dict(r) for r in records}
    changed = failures = 0
    for (r, (_, _, options, _)), verdict in zip(targets, verdicts):
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
        "model": args.judge_model,
        "base_url": args.base_url,
        "scope": "every answer" if args.judge == "all" else "unparsed multiple-choice answers",
        "rechecked": len(targets),
        "changed": changed,
        "failures": failures,
        "requests": judge.requests,
        "cached": sum(v.cached for v in verdicts),
        "cache_file": str(cache),
    }
    return list(judged.values()), summary


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


def compare(args: argparse.Namespace) -> int:
    a_questions, b_questions = load_questions(Path(args.a), args.answers), load_questions(Path(args.b), args.answers)
    a = {r["id"]: r for r in score(a_questions, args.scoring)}
    b = {r["id"]: r for r in score(b_questions, args.scoring)}
    responses_a = {q.id: " ".join(q.response.split()) for q in a_questions}
    responses_b = {q.id: " ".join(q.response.split()) for q in b_questions}
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

    def show(title: str, ids: list[str]) -> None:
        print(f"{title}: {len(ids)}")
        for qid in ids:
            ra, rb = a[qid], b[qid]
            print(f"  {qid}: A {'right' if ra['correct'] else 'wrong'} (parsed {ra['parsed']!r}) -> "
                  f"B {'right' if rb['correct'] else 'wrong'} (parsed {rb['parsed']!r})")  # fmt: skip

    print(format_comparison(paired_comparison({i: r["correct"] for i, r in a.items()},
                                              {i: r["correct"] for i, r in b.items()})))  # fmt: skip
    show("answer changed", answer_changed)
    show("parse changed", parse_changed)
    show("random guess changed (same answer; the seeded guess stream moved)", guess_changed)
    return 0


SCORING_HELP = (
    "official: MMMU's parser (an unparsed multiple-choice answer is a seeded random guess); strict: the official "
    "parser, unparsed answers wrong; lenient: official, plus answers the official parser misses"
)


def build_parser() -> argparse.ArgumentParser:
    from qwenvl.cli import StrictParser

    parser = StrictParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="run a model on MMMU and write results.jsonl (resumable)")
    add_infer_arguments(p, PRESETS)
    p.add_argument("--data-dir", default="MMMU/MMMU", help="hub id or local folder, or a folder with MMMU_DEV_VAL.tsv")
    p.add_argument("--data-file", default=None, help="VLMEvalKit's MMMU_DEV_VAL.tsv (upstream's data file)")
    p.add_argument("--split", default="validation", choices=["dev", "validation", "test"],
                   help="test has no public answers: export its predictions for the MMMU server")  # fmt: skip
    p.add_argument("--subjects", default=None, help="comma-separated short (acc,bio) or full names; default all 30")
    p.add_argument("--limit", type=int, default=None, help="at most N questions per subject")
    p.add_argument("--prompt", default="official", choices=["official", "qwen"],
                   help="official: MMMU's prompt; qwen: upstream Qwen's")  # fmt: skip
    p.add_argument("--image-placement", default="interleaved", choices=["interleaved", "first"],
                   help="images where their <image n> tags are, or all before the text (upstream's)")  # fmt: skip
    p.add_argument("--use-cot", action="store_true", help="append upstream's reasoning hint to each question")
    p.add_argument("--cot-prompt", default=None, help="with --use-cot: this text instead of upstream's")
    p.add_argument("--max-pixels", type=int, default=None, help="default: the checkpoint's saved settings")
    p.add_argument("--min-pixels", type=int, default=None, help="default: the checkpoint's saved settings")
    p.set_defaults(func=infer)
    m = sub.add_parser("merge", help="join the shard files of an infer run into --output-file")
    m.add_argument("--output-file", required=True, help="the --output-file the shards were run with")
    m.add_argument("--num-shards", type=int, required=True, help="the --num-shards the shards were run with")
    m.set_defaults(func=merge)
    answers_help = "gold answers (official answer_dict_val.json) for an {id: prediction} input file"
    e = sub.add_parser("eval", help="score results.jsonl (or an official output.json / {id: prediction} file)")
    e.add_argument("--input-file", required=True, help="results.jsonl, an official output.json or folder of them")
    e.add_argument("--output-file", required=True, type=scores_file, help=SCORES_HELP)
    e.add_argument("--scoring", default="official", choices=["official", "strict", "lenient"], help=SCORING_HELP)
    e.add_argument("--answers", default=None, help=answers_help)
    add_judge_arguments(e, unread="the multiple-choice answers the rules cannot parse")
    e.set_defaults(func=evaluate)
    c = sub.add_parser("compare", help="questions whose correctness differs between two results files")
    c.add_argument("a", help="results file A (the baseline)")
    c.add_argument("b", help="results file B")
    c.add_argument("--scoring", default="official", choices=["official", "strict", "lenient"], help=SCORING_HELP)
    c.add_argument("--answers", default=None, help=answers_help)
    c.set_defaults(func=compare)
    x = sub.add_parser("export", help="write the official {id: prediction} file (MMMU evaluation, test submission)")
    x.add_argument("--input-file", required=True, help="results.jsonl of infer (or an official output.json)")
    x.add_argument("--output-file", required=True, help="the {id: prediction} JSON to submit")
    x.add_argument("--scoring", default="official", choices=["official", "strict", "lenient"], help=SCORING_HELP)
    x.add_argument("--answers", default=None, help=answers_help)
    x.set_defaults(func=export)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
