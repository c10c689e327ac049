"""Lazy supervised datasets (one sample or one pack per item), token-length estimates from media headers, and the
policies for bad media and over-long samples.

* Bad media (``bad_media``): ``error`` (default) raises naming the sample; ``skip`` drops the sample, writes
  ``{"id", "path", "reason"}`` to ``quarantine.jsonl`` in the output dir and counts it. A sample is never retried
  in a loop nor replaced by its neighbour. The file is also the skip list: a run resumed in the same output dir
  (or a later epoch) skips the samples it lists without decoding them again, so a file that hung a decoder until
  its timeout costs that time once; delete the file to retry them.
* Over-long samples (``overlong``, longer than ``model_max_length``): ``error`` raises; ``skip`` drops and
  quarantines them; ``truncate_text`` cuts text after the last vision token and skips samples where that is
  impossible. Vision tokens are never cut.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from qwenvl.data.annotations import Record
from qwenvl.data.encode import EncodedSample, MediaLoadError, SampleEncoder, truncate_text_only
from qwenvl.data.packing import plan_packs


logger = logging.getLogger(__name__)

BadMediaPolicy = Literal["error", "skip"]
OverlongPolicy = Literal["error", "skip", "truncate_text"]


class Quarantine:
    """Append-only JSONL of skipped samples, safe across threads and dataloader worker processes, and the skip list
    of resumed runs: entries already in the file (from an earlier run, an earlier epoch or another worker) are
    known and never written twice."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._known: set[tuple[str, str]] = set()
        self._read_upto = 0
        self._refresh()
        if self._known:
            logger.warning(
                "%s lists %d skipped sample(s) from an earlier run; they stay skipped (delete the file to retry them)",
                self.path,
                len(self._known),
            )

    def _refresh(self) -> None:
        """Read the lines appended to the file since the last read (by this or any other process). Called for every
        sample not known to be bad, so it costs one ``stat`` unless the file grew."""
        if self.path is None:
            return
        try:
            if os.stat(self.path).st_size <= self._read_upto:
                return
        except FileNotFoundError:
            return
        with self.path.open("rb") as f:
            f.seek(self._read_upto)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written by another process is read next time
        self._read_upto += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                self._known.add((entry["id"], entry["kind"]))

    def is_known(self, sample_id: str, kind: str) -> bool:
        """Whether ``sample_id`` was already quarantined for ``kind``."""
        with self._lock:
            if (sample_id, kind) not in self._known:
                self._refresh()
            return (sample_id, kind) in self._known

    def add(self, sample_id: str, path: str, reason: str, kind: str) -> None:
        if self.is_known(sample_id, kind):
            return
        logger.warning("skipping %s (%s): %s", sample_id, kind, reason)
        if self.path is None:
            with self._lock:
                self._known.add((sample_id, kind))
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"id": sample_id, "path": path, "kind": kind, "reason": reason}) + "\n"
        with self._lock:
            # One write of one line with O_APPEND: lines from several processes do not interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            self._refresh()

    def summary(self) -> dict[str, int]:
        """Skipped samples by kind, each counted once, read from the file (so it includes what dataloader workers
        and earlier runs wrote)."""
        with self._lock:
            self._refresh()
            return dict(Counter(kind for _, kind in self._known))


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
    from qwen_vl_utils.image_io import image_source, open_image
    from qwen_vl_utils.resize import image_target_size
    from qwen_vl_utils.video_io import plan_video

    family = encoder.family
    factor = family.image_factor
    text = encoder.processor.apply_chat_template(record.messages, tokenize=False, add_generation_prompt=False)
    ids = encoder.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_media = 0
    image_tokens = video_tokens = 0
    error = None
    for item in record.media():
        n_media += 1
        try:
            if item["type"] == "image":
                ele = encoder.budget.image_item(item)
                width, height = open_image(image_source(ele)).size
                h, w = image_target_size(height, width, ele, family.patch_size)
                image_tokens += (h // factor) * (w // factor)
            else:
                ele = encoder.budget.video_item(item)
                source = ele["video"]
                if not isinstance(source, str) or source.startswith(("http://", "https://")):
                    raise ValueError("only local video files can be measured from headers")
                plan = plan_video(source, ele, family.patch_size)
                merge_t = family.temporal_patch_size
                groups = plan.nframes // merge_t
                video_tokens += groups * (plan.height // factor) * (plan.width // factor)
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

    @staticmethod
    def key(record: Record) -> str:
        stamps = []
        for item in record.media():
            source = item.get(item["type"])
            try:
                st = os.stat(source) if isinstance(source, str) else None
                stamps.append([source, st.st_size, st.st_mtime_ns] if st else [repr(source)])
            except OSError:
                stamps.append([source, None, None])
        blob = json.dumps([record.messages, stamps], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def estimates(self, records: list[Record]) -> list[LengthEstimate]:
        """Estimates of ``records``: from the cache where valid, measured (and added) otherwise."""
        out, measured = [], 0
        for record in records:
            key = self.key(record)
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
    """Encodes one record per item, lazily (media are decoded in ``__getitem__``, i.e. in dataloader workers)."""

    def __init__(
        self,
        records: list[Record],
        encoder: SampleEncoder,
        model_max_length: int | None = None,
        bad_media: BadMediaPolicy = "error",
        overlong: OverlongPolicy = "error",
        quarantine: Quarantine | None = None,
    ) -> None:
        if bad_media not in ("error", "skip"):
            raise ValueError(f"--bad_media must be error or skip, got {bad_media!r}")
        if overlong not in ("error", "skip", "truncate_text"):
            raise ValueError(f"--overlong must be error, skip or truncate_text, got {overlong!r}")
        self.records = records
        self.encoder = encoder
        self.model_max_length = model_max_length
        self.bad_media = bad_media
        self.overlong = overlong
        self.quarantine = quarantine or Quarantine(None)

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, index: int) -> EncodedSample | None:
        record = self.records[index]
        if self.bad_media == "skip" and self.quarantine.is_known(record.id, "bad_media"):
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
            self.quarantine.add(record.id, e.path, e.reason, "bad_media")
            return None
        return self.apply_length_policy(sample)

    def apply_length_policy(self, sample: EncodedSample) -> EncodedSample | None:
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
        self.quarantine.add(sample_id, "", reason, "overlong")
        return None

    def __getitem__(self, index: int) -> EncodedSample | None:
        return self.encode(index)


class PackedDataset(torch.utils.data.Dataset):
    """One item per pack planned over estimated lengths; each item is the list of that pack's samples."""

    def __init__(self, base: SupervisedDataset, lengths: list[int], max_packed_tokens: int, window: int = 4096):
        self.base = base
        self.lengths = lengths
        self.packs = plan_packs(lengths, max_packed_tokens, window)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> list[EncodedSample]:
        return [s for s in (self.base.encode(i) for i in self.packs[index]) if s is not None]


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
        quarantine.add(record.id, "", f"estimated {est.total} tokens > {limit}", "overlong")
    return keep_r, keep_e
