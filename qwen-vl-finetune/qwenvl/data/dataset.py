"""Lazy supervised datasets (one sample or one pack per item), token-length estimates from media headers, and the
policies for bad media and over-long samples.

* Bad media (``bad_media``): ``error`` (default) raises naming the sample; ``skip`` quarantines the sample (a line
  ``{"key", "id", "path", "kind", "reason"}`` in ``quarantine.jsonl`` in the output dir) and puts a replacement in
  its place: another sample drawn with a seed of (data seed, index), so the choice is the same on every rank, in
  every epoch and after a resume, and steps keep their size (a pack is refilled with a sample that fits its free
  room). Each replacement is logged and counted in ``replacements.jsonl``.
* The quarantine is keyed by the record's content (its messages, and each local media file's path, size and
  mtime), not by its place in a file: an edited or re-ordered annotation file keeps its good records, and a
  repaired image is tried again. It is the skip list of later epochs and resumed runs: a known-bad record is not
  decoded again (a file that hung a decoder until its timeout costs that time once), and each one skipped that way
  is logged once with its reason.
* Over-long samples (``overlong``, longer than ``model_max_length``): ``error`` raises; ``skip`` drops and
  quarantines them; ``truncate_text`` cuts text after the last vision token and skips samples where that is
  impossible. Vision tokens are never cut.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from qwenvl.data.annotations import Record
from qwenvl.data.encode import EncodedSample, MediaLoadError, SampleEncoder, truncate_text_only
from qwenvl.data.packing import plan_packs


logger = logging.getLogger(__name__)

BadMediaPolicy = Literal["error", "skip"]
OverlongPolicy = Literal["error", "skip", "truncate_text"]


class _JsonlLog:
    """Append-only JSONL, one ``O_APPEND`` write per line (lines from several processes do not interleave), read
    incrementally (a torn last line is read once complete)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._read_upto = 0

    def read_new(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        try:
            if os.stat(self.path).st_size <= self._read_upto:
                return []
        except FileNotFoundError:
            return []
        with self.path.open("rb") as f:
            f.seek(self._read_upto)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._read_upto += len(complete)
        out = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                logger.warning("%s: ignoring an unreadable line", self.path)
        return out

    def append(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)


class Quarantine:
    """Records skipped for a reason (``kind``: bad_media, overlong), keyed by ``Record.key``, shared by threads,
    dataloader workers and later runs through ``quarantine.jsonl``; replacements are counted in
    ``replacements.jsonl`` beside it."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._log = _JsonlLog(self.path)
        self._events = _JsonlLog(self.path.with_name("replacements.jsonl") if self.path else None)
        self._known: dict[tuple[str, str], dict[str, Any]] = {}
        self._announced: set[tuple[str, str]] = set()
        self.replacements = 0
        self._refresh()
        if self._known:
            logger.warning(
                "%s lists %d quarantined record(s) from an earlier run; they stay skipped while unchanged (an edited "
                "record or repaired media file is tried again; delete the file to retry all)",
                self.path,
                len(self._known),
            )

    def _refresh(self) -> None:
        for entry in self._log.read_new():
            if "key" in entry and "kind" in entry:  # lines of older versions (keyed by place) are ignored
                self._known.setdefault((entry["key"], entry["kind"]), entry)

    def is_known(self, key: str, kind: str) -> bool:
        """Whether the record with ``key`` was quarantined for ``kind`` (here, in another process or earlier)."""
        return self.known_kind(key, (kind,)) is not None

    def known_kind(self, key: str, kinds: tuple[str, ...]) -> str | None:
        """The first of ``kinds`` the record with ``key`` is quarantined for, or None; the file is checked for new
        lines once (one ``stat`` per good sample)."""
        with self._lock:
            if not any((key, k) in self._known for k in kinds):
                self._refresh()
            return next((k for k in kinds if (key, k) in self._known), None)

    def announce(self, key: str, kind: str, sample_id: str) -> None:
        """Log, once per process, that a record is skipped because the quarantine lists it."""
        with self._lock:
            if (key, kind) in self._announced:
                return
            self._announced.add((key, kind))
            entry = self._known.get((key, kind), {})
        logger.warning("skipping %s: quarantined (%s: %s)", sample_id, kind, entry.get("reason", "?"))

    def add(self, key: str, sample_id: str, path: str, reason: str, kind: str) -> None:
        if self.is_known(key, kind):
            return
        logger.warning("skipping %s (%s): %s", sample_id, kind, reason)
        entry = {"key": key, "id": sample_id, "path": path, "kind": kind, "reason": reason}
        with self._lock:
            self._announced.add((key, kind))
            if self.path is None:
                self._known[(key, kind)] = entry
                return
            self._log.append(entry)
            self._refresh()

    def add_replacement(self, index: int, sample_id: str, by_index: int, by_id: str) -> None:
        logger.warning("replaced skipped sample %s with %s", sample_id, by_id)
        with self._lock:
            self.replacements += 1
            self._events.append({"index": index, "id": sample_id, "by_index": by_index, "by": by_id})

    def entries(self) -> list[dict[str, Any]]:
        """Every quarantined record (one entry per record and kind)."""
        with self._lock:
            self._refresh()
            return list(self._known.values())

    def summary(self) -> dict[str, int]:
        """Skipped records by kind, each counted once, read from the file (so it includes what dataloader workers
        and earlier runs wrote)."""
        return dict(Counter(entry["kind"] for entry in self.entries()))

    def replacement_events(self) -> list[dict[str, Any]]:
        """Every replacement written to ``replacements.jsonl`` (all processes, all runs in this output dir)."""
        if self._events.path is None:
            return []
        return _JsonlLog(self._events.path).read_new()


# ----------------------------------------------------------------------------------------------- length estimates


@dataclass
class LengthEstimate:
    """Token budget of one record, from the chat template and media headers (no pixel decoding)."""

    text_tokens: int
    image_tokens: int
    video_tokens: int
    media_error: str | None = None

    @property
    def total(self) -> int:
        return self.text_tokens + self.image_tokens + self.video_tokens


def estimate_length(record: Record, encoder: SampleEncoder) -> LengthEstimate:
    """Tokens of ``record`` under ``encoder``'s budgets, read from image headers and a video probe.

    Matches the encoded length exactly (checked by tests) for local media.
    """
    from qwenvl.data.encode import media_cost

    family = encoder.family
    text = encoder.processor.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=False)
    ids = encoder.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_media = 0
    image_tokens = video_tokens = 0
    error = None
    for item in record.media():
        n_media += 1
        try:
            cost = media_cost(item, family, encoder.budget)
            if cost.kind == "image":
                image_tokens += cost.tokens
            else:
                plan = cost.plan
                merge_t = family.temporal_patch_size
                groups = plan.nframes // merge_t
                video_tokens += cost.tokens
                if family.video_timestamps:
                    # Per temporal patch: "<t seconds><|vision_start|>...<|vision_end|>", t the mean time of its frames.
                    indices, fps = plan.indices, plan.probe.fps
                    tok = encoder.processor.tokenizer
                    for g in range(groups):
                        t = (indices[g * merge_t] + indices[g * merge_t + merge_t - 1]) / 2 / fps
                        video_tokens += len(tok(f"<{t:.1f} seconds>", add_special_tokens=False)["input_ids"]) + 2
        except Exception as e:  # noqa: BLE001 - reported per record by the caller
            error = f"{item.get(item['type'])}: {e}"
    return LengthEstimate(len(ids) - n_media, image_tokens, video_tokens, error)


class LengthCache:
    """Length estimates kept in a JSON file, so a resumed run (or a second run on the same data) does not read
    every media header again: on a large video mix that is minutes on every rank.

    An entry is keyed by the record's messages and, for each local media file, its path, size and modification
    time, so an edited annotation or a replaced file is measured again. The file also stores what the estimates
    depend on (budgets, family, chat template, tokenizer); when that changes the whole cache is ignored.
    """

    def __init__(self, path: str | Path | None, encoder: SampleEncoder) -> None:
        self.path = Path(path) if path else None
        self.encoder = encoder
        tok = encoder.processor.tokenizer
        context = {
            "budget": asdict(encoder.budget),
            "family": encoder.family.model_type,
            "template": getattr(encoder.processor, "chat_template", None) or getattr(tok, "chat_template", None),
            "vocab": len(tok),
            "version": 1,
        }
        self.context = hashlib.sha256(json.dumps(context, sort_keys=True, default=str).encode()).hexdigest()
        self.entries: dict[str, list[Any]] = {}
        self.loaded = 0
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable length cache %s: %s", self.path, e)
                data = {}
            if data.get("context") == self.context:
                self.entries = data.get("entries", {})
                self.loaded = len(self.entries)

    def estimates(self, records: list[Record]) -> list[LengthEstimate]:
        """Estimates of ``records``: from the cache where valid, measured (and added) otherwise."""
        out, measured = [], 0
        for record in records:
            key = record.key
            cached = self.entries.get(key)
            if cached is None:
                est = estimate_length(record, self.encoder)
                measured += 1
                if est.media_error is None:  # failures are measured again next time (the file may be fixed)
                    self.entries[key] = [est.text_tokens, est.image_tokens, est.video_tokens]
            else:
                est = LengthEstimate(*cached)
            out.append(est)
        if self.path is not None and measured:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"context": self.context, "entries": self.entries}))
            os.replace(tmp, self.path)  # atomic: ranks writing at once leave one whole file
        logger.info("length estimates: %d from %s, %d measured", len(records) - measured, self.path, measured)
        return out


# ----------------------------------------------------------------------------------------------- datasets


class SupervisedDataset(torch.utils.data.Dataset):
    """Encodes one record per item, lazily (media are decoded in ``__getitem__``, i.e. in dataloader workers).

    With a ``skip`` policy, an item whose record is skipped is replaced (see the module doc); ``encode`` is the
    raw per-record step that returns ``None`` for a skipped record."""

    def __init__(
        self,
        records: list[Record],
        encoder: SampleEncoder,
        model_max_length: int | None = None,
        bad_media: BadMediaPolicy = "error",
        overlong: OverlongPolicy = "error",
        quarantine: Quarantine | None = None,
        seed: int = 0,
        max_replacement_tries: int = 64,
    ) -> None:
        if bad_media not in ("error", "skip"):
            raise ValueError(f"--bad_media must be error or skip, got {bad_media!r}")
        if overlong not in ("error", "skip", "truncate_text"):
            raise ValueError(f"--overlong must be error, skip or truncate_text, got {overlong!r}")
        self.records = records
        self.keys = [r.key for r in records]
        self.encoder = encoder
        self.model_max_length = model_max_length
        self.bad_media = bad_media
        self.overlong = overlong
        self.quarantine = quarantine or Quarantine(None)
        self.seed = seed
        self.max_replacement_tries = max_replacement_tries

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, index: int) -> EncodedSample | None:
        record, key = self.records[index], self.keys[index]
        kinds = ("bad_media", "overlong") if self.bad_media == "skip" else ("overlong",)
        kind = self.quarantine.known_kind(key, kinds)
        if kind is not None:
            self.quarantine.announce(key, kind, record.id)
            return None  # quarantined earlier (this run, another worker, or the run this one resumes)
        try:
            sample = self.encoder(record.messages, record.id)
        except MediaLoadError as e:
            if self.bad_media == "error":
                raise MediaLoadError(
                    e.sample_id,
                    e.path,
                    f"{e.reason}; fix or remove the record, or pass --bad_media skip to quarantine such samples",
                ) from e
            self.quarantine.add(key, record.id, e.path, e.reason, "bad_media")
            return None
        return self.apply_length_policy(sample, key)

    def apply_length_policy(self, sample: EncodedSample, key: str = "") -> EncodedSample | None:
        limit = self.model_max_length
        length = len(sample["input_ids"])
        if limit is None or length <= limit:
            return sample
        sample_id = sample["sample_id"]
        if self.overlong == "error":
            raise ValueError(
                f"{sample_id}: {length} tokens exceeds --model_max_length {limit}; lower the pixel budgets, raise "
                "the limit, or pass --overlong skip|truncate_text"
            )
        if self.overlong == "truncate_text":
            cut = truncate_text_only(sample, limit)
            if cut is not None:
                return cut
            reason = f"{length} tokens > {limit} and truncation would cut vision tokens or all answer tokens"
        else:
            reason = f"{length} tokens > {limit}"
        self.quarantine.add(key or sample_id, sample_id, "", reason, "overlong")
        return None

    def replacement(self, index: int, fits: Callable[[int], bool] | None = None) -> EncodedSample | None:
        """A good sample in place of the skipped item ``index``: candidates drawn with the seed (data seed, index),
        so every rank, epoch and resumed run picks the same; ``fits(j)`` restricts the candidates (a pack's free
        room). None when ``max_replacement_tries`` candidates fail."""
        rng = random.Random(f"{self.seed}:replace:{index}")
        n = len(self.records)
        for _ in range(self.max_replacement_tries):
            j = rng.randrange(n)
            if j == index or (fits is not None and not fits(j)):
                continue
            sample = self.encode(j)
            if sample is not None:
                self.quarantine.add_replacement(index, self.records[index].id, j, self.records[j].id)
                return sample
        return None

    def __getitem__(self, index: int) -> EncodedSample:
        sample = self.encode(index)
        if sample is not None:
            return sample
        sample = self.replacement(index)
        if sample is None:
            raise RuntimeError(
                f"{self.records[index].id} was skipped and {self.max_replacement_tries} seeded replacement candidates "
                f"were bad too: most of the data fails; see {self.quarantine.path}"
            )
        return sample


class PackedDataset(torch.utils.data.Dataset):
    """One item per pack planned over estimated lengths; each item is the list of that pack's samples. ``packs``
    may be given (upstream's pre-packed files); a skipped sample is replaced by one that fits the pack's room."""

    def __init__(
        self,
        base: SupervisedDataset,
        lengths: list[int],
        max_packed_tokens: int,
        window: int = 4096,
        packs: list[list[int]] | None = None,
    ) -> None:
        self.base = base
        self.lengths = lengths
        self.capacity = max_packed_tokens
        self.packs = packs if packs is not None else plan_packs(lengths, max_packed_tokens, window)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> list[EncodedSample]:
        members = self.packs[index]
        out: list[EncodedSample] = []
        used = sum(self.lengths[i] for i in members)
        for i in members:
            sample = self.base.encode(i)
            if sample is None:
                room = self.capacity - used + self.lengths[i]
                # Not a member of this pack: with everything in one pack, a pack trains each good record once.
                sample = self.base.replacement(i, fits=lambda j: j not in members and self.lengths[j] <= room)
                if sample is not None:
                    used += len(sample["input_ids"]) - self.lengths[i]
            if sample is not None:
                out.append(sample)
        if not out:
            raise RuntimeError(
                f"every sample of pack {index} was skipped and no replacement fits; see {self.base.quarantine.path}"
            )
        return out


def prefilter_overlong(
    records: list[Record],
    estimates: list[LengthEstimate],
    limit: int | None,
    policy: OverlongPolicy,
    quarantine: Quarantine,
) -> tuple[list[Record], list[LengthEstimate]]:
    """Apply the over-length policy before training from the estimates, so errors come before step 0."""
    if limit is None:
        return records, estimates
    keep_r, keep_e, too_long = [], [], []
    for record, est in zip(records, estimates):
        if est.total > limit and policy != "truncate_text":
            too_long.append((record, est))
        else:
            keep_r.append(record)
            keep_e.append(est)
    if too_long and policy == "error":
        listed = "; ".join(f"{r.id} ({e.total} tokens)" for r, e in too_long[:10])
        raise ValueError(
            f"{len(too_long)} sample(s) exceed --model_max_length {limit}: {listed}. Lower the pixel budgets, raise "
            "the limit, or pass --overlong skip|truncate_text"
        )
    for record, est in too_long:
        quarantine.add(record.key, record.id, "", f"estimated {est.total} tokens > {limit}", "overlong")
    return keep_r, keep_e
