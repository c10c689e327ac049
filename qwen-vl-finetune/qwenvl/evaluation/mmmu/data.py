"""MMMU loading and prompt building.

Data sources (``--data-dir``):

* a hub id (``MMMU/MMMU``): one ``datasets`` config per subject;
* a local folder in the hub layout: ``<dir>/<Subject>/<split>-*.parquet``;
* a local mirror with all subjects in one config: ``<dir>/<split>-*.parquet`` or ``<dir>/data/<split>-*.parquet``;
* a ``save_to_disk`` folder (a ``DatasetDict`` with the split, or a ``Dataset``);
* VLMEvalKit's ``MMMU_DEV_VAL.tsv`` (what upstream's ``run_mmmu.py`` reads): ``--data-dir`` holding it, or
  ``--data-file X.tsv``. Its quirks are read safely: base64 images (PNG, JPEG, any mode), an image cell of at most
  64 characters naming another row's ``index`` whose image it shares, several images as a list literal (with a
  list-valued ``image_path``), options in letter columns ``A``..``I`` (or an ``options`` list literal), open
  questions as rows without options; list literals are parsed with ``ast.literal_eval``, never ``eval``.

Prompts: ``official`` is MMMU's ``construct_prompt`` (options as ``(A) text`` lines and the official answer
instructions); ``qwen`` is upstream Qwen-VL's ``Question: ... Options: A. ...`` layout. Images go where their
``<image n>`` tag is (``interleaved``) or all before the text (``first``, tags left in the text as upstream does).
"""

from __future__ import annotations

import ast
import glob
import os
import re
from typing import Any, Iterator, Literal

from qwenvl.cli import UserError
from qwenvl.evaluation.mmmu.scoring import SHORT_NAMES, SUBJECT_ORDER, choice_letters, parse_gold, subject_of


PromptStyle = Literal["official", "qwen"]
Placement = Literal["interleaved", "first"]
IMAGE_TAG = re.compile(r"<image (\d+)>")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."


class DataError(UserError):
    """The MMMU data cannot be used; the message names the question or the path."""


def resolve_subjects(subjects: str | None) -> list[str]:
    """``acc,bio`` or ``Accounting,Biology`` (or None for all) to official subject names, in official order."""
    if not subjects:
        return list(SUBJECT_ORDER)
    out = []
    for name in (s.strip() for s in subjects.split(",") if s.strip()):
        full = SHORT_NAMES.get(name, name)
        if full not in SUBJECT_ORDER:
            raise DataError(f"unknown subject {name!r}; use one of {', '.join(SHORT_NAMES)} or the full names")
        out.append(full)
    return out


def _parquet(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern))


def _check_subjects(wanted: list[str], present: set[str], where: str, split: str, required: bool) -> None:
    """A :class:`DataError` naming the wanted subjects that ``where`` lacks, and the subjects it has (when they are
    ``required``: asked for by name, not the default of every subject)."""
    missing = [s for s in wanted if s not in present]
    if missing and required:
        has = [s for s in SUBJECT_ORDER if s in present] + sorted(present - set(SUBJECT_ORDER))
        raise DataError(
            f"--subjects: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in {where} (split "
            f"{split!r}), which has {', '.join(has) if has else 'no subject'}; pick from those"
        )


TSV_NAME = "MMMU_DEV_VAL.tsv"


def iter_tsv_questions(
    path: str, split: str, subjects: list[str], images: bool = True, required: bool = True
) -> Iterator[dict[str, Any]]:
    """Rows of VLMEvalKit's MMMU TSV for the wanted split and subjects, in the hub's row format (``id``,
    ``question``, ``options``, ``answer``, ``question_type``, ``image_1``.. as PIL images), subject by subject.
    Images are decoded row by row as the rows are yielded (none with ``images=False``). ``required``: a subject the
    file lacks is an error (else it is skipped)."""
    from qwenvl.evaluation import tsv

    try:
        rows = tsv.read_rows(path, ("index", "question"))
    except tsv.TSVError as e:
        raise DataError(f"{e} (a VLMEvalKit MMMU TSV needs the columns index, question, answer, image)") from None
    by_index = {row["index"]: row for row in rows}
    by_subject: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for row in rows:
        qid = row.get("id") or f"{row.get('split', split)}_{row.get('category', 'Unknown')}_{row['index']}"
        if (row.get("split") or qid.split("_", 1)[0]) == split:
            by_subject.setdefault(subject_of(qid), []).append((qid, row))
    _check_subjects(subjects, set(by_subject), path, split, required)
    for subject in subjects:
        for qid, row in by_subject.get(subject, []):
            at = tsv.where(path, row)
            try:
                decoded = tsv.row_images(row, by_index, at) if images else []
                options = list(tsv.letter_options(row).values())
                if not options and row.get("options"):
                    options = tsv.cell_list(row["options"], "options", at)
            except tsv.TSVError as e:
                raise DataError(str(e)) from None
            out: dict[str, Any] = {
                "id": qid,
                "question": row["question"],
                "options": options,
                "answer": row.get("answer", ""),
                "question_type": "multiple-choice" if options else "open",
            }
            if tsv.present(row.get("hint")):
                out["hint"] = row["hint"]
            for n, image in enumerate(decoded[:7], start=1):
                out[f"image_{n}"] = image
            yield out


def _without_images(rows: Any) -> Any:
    return rows.remove_columns([c for c in rows.column_names if c.startswith("image_")])


def iter_questions(
    data_dir: str, split: str, subjects: list[str], images: bool = True, required: bool = True
) -> Iterator[dict[str, Any]]:
    """Rows of the wanted subjects and split, subject by subject (in ``subjects`` order), decoded one at a time as
    they are yielded; ``images=False`` leaves the image fields out (listing the questions costs no decoding).
    ``required``: a subject the data lacks is an error naming the subjects it has (else it is skipped: the default
    of every subject on a local copy of some of them)."""
    import datasets

    if data_dir.endswith(".tsv"):
        if not os.path.isfile(data_dir):
            raise DataError(f"--data-file {data_dir}: no such file")
        yield from iter_tsv_questions(data_dir, split, subjects, images, required)
        return
    if os.path.isfile(os.path.join(data_dir, TSV_NAME)):
        yield from iter_tsv_questions(os.path.join(data_dir, TSV_NAME), split, subjects, images, required)
        return

    def prepared(rows: Any) -> Any:
        return rows if images else _without_images(rows)

    if os.path.isdir(data_dir):
        # The hub layout: one folder per subject (any subject's folder with this split's files tells it apart).
        files = _parquet(os.path.join(data_dir, "*", f"{split}-*.parquet"))
        per_subject = {os.path.basename(os.path.dirname(f)) for f in files} & set(SUBJECT_ORDER)
        if per_subject:
            _check_subjects(subjects, per_subject, data_dir, split, required)
            for subject in subjects:
                files = _parquet(os.path.join(data_dir, subject, f"{split}-*.parquet"))
                if files:
                    yield from prepared(datasets.load_dataset("parquet", data_files=files, split="train"))
            return
        merged = _parquet(os.path.join(data_dir, f"{split}-*.parquet")) or _parquet(
            os.path.join(data_dir, "data", f"{split}-*.parquet")
        )
        if merged:
            rows = datasets.load_dataset("parquet", data_files=merged, split="train")
        elif os.path.isfile(os.path.join(data_dir, "dataset_dict.json")) or os.path.isfile(
            os.path.join(data_dir, "dataset_info.json")
        ):
            loaded = datasets.load_from_disk(data_dir)
            rows = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            raise DataError(
                f"{data_dir} has no MMMU data for split {split!r}: expected <Subject>/{split}-*.parquet, "
                f"{split}-*.parquet, data/{split}-*.parquet or a save_to_disk folder"
            )
        rows = prepared(rows)
        positions: dict[str, list[int]] = {}  # row numbers per subject, from the id column alone
        for i, qid in enumerate(rows["id"]):
            positions.setdefault(subject_of(qid), []).append(i)
        _check_subjects(subjects, set(positions), data_dir, split, required)
        for subject in subjects:
            for i in positions.get(subject, []):
                yield rows[i]
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", "") not in ("", "0")  # fmt: skip
    for subject in subjects:  # a hub id
        try:
            rows = datasets.load_dataset(data_dir, subject, split=split)
        except (ConnectionError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: the hub is not reached)" if offline else ""
            raise DataError(
                f"--data-dir {data_dir}: not a local folder, and the hub dataset could not be loaded{hint}: "
                f"{first[:200]}. Download it once (hf download MMMU/MMMU --repo-type dataset --local-dir MMMU) and "
                "pass --data-dir MMMU"
            ) from None
        yield from prepared(rows)


def question_options(row: dict[str, Any]) -> list[str]:
    raw = row.get("options", "[]")
    if isinstance(raw, list):
        return [str(o) for o in raw]
    try:
        options = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError):
        raise DataError(f"{row.get('id')}: options {raw!r} is not a list literal") from None
    if not isinstance(options, list):
        raise DataError(f"{row.get('id')}: options must be a list, got {type(options).__name__}")
    return [str(o) for o in options]


def prompt_text(row: dict[str, Any], style: PromptStyle) -> str:
    question = row["question"]
    options = question_options(row)
    is_mc = row["question_type"] == "multiple-choice"
    if style == "official":
        if is_mc:
            lines = "".join(f"({letter}) {option}\n" for letter, option in zip(choice_letters(len(options)), options))
            return f"{question}\n{lines}\n{MC_INSTRUCTION}"
        return f"{question}\n{OPEN_INSTRUCTION}"
    text = f"Hint: {row['hint']}\n" if row.get("hint") else ""
    text += f"Question: {question}\n"
    if is_mc:
        text += "Options:\n" + "".join(f"{L}. {o}\n" for L, o in zip(choice_letters(len(options)), options))
        text += "Please select the correct answer from the options above. \n"
    return text.rstrip()


def build_messages(
    row: dict[str, Any], style: PromptStyle, placement: Placement, image_keys: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """One user turn for ``row`` and the number of images in it.

    Raises:
        DataError: a ``<image n>`` tag whose ``image_n`` field is empty.
    """
    text = prompt_text(row, style)
    qid = row.get("id", "?")
    extra = image_keys or {}

    def image(n: int) -> dict[str, Any]:
        value = row.get(f"image_{n}")
        if value is None:
            raise DataError(f"{qid}: the text refers to <image {n}> but image_{n} is empty")
        return {"type": "image", "image": value, **extra}

    tags = [int(n) for n in IMAGE_TAG.findall(text)]
    referenced = list(dict.fromkeys(tags))
    unreferenced = [n for n in range(1, 8) if row.get(f"image_{n}") is not None and n not in referenced]
    content: list[dict[str, Any]] = [image(n) for n in unreferenced]
    if placement == "first":
        content += [image(n) for n in referenced] + [{"type": "text", "text": text}]
    else:
        placed: set[int] = set()
        pos = 0
        for match in IMAGE_TAG.finditer(text):
            n = int(match.group(1))
            if n in placed:
                continue  # a repeated tag stays text; the picture is shown once, at its first mention
            before = text[pos : match.start()]
            if before:
                content.append({"type": "text", "text": before})
            content.append(image(n))
            placed.add(n)
            pos = match.end()
        if text[pos:]:
            content.append({"type": "text", "text": text[pos:]})
    return [{"role": "user", "content": content}], len(referenced) + len(unreferenced)


def gold_answer(row: dict[str, Any]) -> str | list[str]:
    return parse_gold(row["answer"], row.get("id", "?"))
