"""The dataset registry: names to annotation files and media roots, and ``--dataset_use`` parsing.

A registry is a YAML file::

    datasets:
      my_images:
        annotation_path: data/my_images.jsonl   # relative paths are relative to this YAML file
        media_root: data/media                  # upstream's name "data_path" is accepted too

``--dataset_use my_images,demo_video%50`` picks datasets by name; ``%N`` takes ``floor(N% x records)`` of them,
as upstream does, but seeded (the same subset on every rank and every run; upstream's draw was unseeded per rank).
Beyond upstream: N may be a decimal (``%12.5``), and N above 100 repeats the data (``%250`` = every record twice
plus a seeded half), where upstream ignored it. An entry of ``--dataset_use`` may also be a path to a ``.json`` /
``.jsonl`` file; its media root is then ``--media_root`` if given, else the file's folder. The bundled demo
datasets (``demo_images``, ``demo_video``, ``demo_messages``) are always registered.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenvl.data.annotations import AnnotationError, Record, iter_records, normalise_record


logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
BUILTIN_REGISTRY = DEMO_DIR / "registry.yaml"
_RATE_RE = re.compile(r"^(?P<name>.+?)%(?P<pct>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset."""

    name: str
    annotation_path: str
    media_root: str


def load_registry(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """The built-in registry, updated with the entries of ``path`` (a YAML file) if given."""
    import yaml

    specs: dict[str, DatasetSpec] = {}
    for file in [BUILTIN_REGISTRY] + ([Path(path)] if path else []):
        if not file.is_file():
            raise FileNotFoundError(f"dataset registry {file} not found; pass --dataset_registry PATH.yaml")
        data = yaml.safe_load(file.read_text()) or {}
        entries = data.get("datasets", data)
        if not isinstance(entries, dict):
            raise ValueError(f"{file}: expected a mapping 'datasets: {{name: {{annotation_path, media_root}}}}'")
        for name, entry in entries.items():
            if not isinstance(entry, dict) or "annotation_path" not in entry:
                raise ValueError(f"{file}: dataset {name!r} needs an annotation_path")
            base = file.parent
            ann = Path(entry["annotation_path"])
            root = Path(entry.get("media_root", entry.get("data_path", "")) or ".")
            specs[name] = DatasetSpec(
                name=name,
                annotation_path=str(ann if ann.is_absolute() else base / ann),
                media_root=str(root if root.is_absolute() else base / root),
            )
    return specs


def parse_dataset_use(dataset_use: str) -> list[tuple[str, float]]:
    """``"a,b%50"`` to ``[("a", 1.0), ("b", 0.5)]``; a malformed or non-positive percentage is a
    :class:`AnnotationError` naming the entry."""
    out = []
    for part in (p.strip() for p in dataset_use.split(",")):
        if not part:
            continue
        match = _RATE_RE.match(part)
        if match:
            rate = float(match["pct"]) / 100
            if rate <= 0:
                raise AnnotationError(
                    f"--dataset_use {part!r}: the sampling percentage must be positive (e.g. {match['name']}%50), "
                    f"or leave the dataset out"
                )
            out.append((match["name"], rate))
        elif "%" in part and Path(part).suffix not in (".json", ".jsonl"):
            name, _, pct = part.rpartition("%")
            raise AnnotationError(
                f"--dataset_use {part!r}: {pct!r} after % is not a percentage; write {name or 'NAME'}%N with a "
                f"number N (e.g. {name or 'NAME'}%50 for half the records)"
            )
        else:
            out.append((part, 1.0))
    if not out:
        raise AnnotationError("--dataset_use is empty; name at least one dataset (e.g. demo_images)")
    return out


def resolve_spec(name: str, registry: dict[str, DatasetSpec], media_root: str | None = None) -> DatasetSpec:
    if name in registry:
        return registry[name]
    path = Path(name)
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise AnnotationError(f"--dataset_use {name}: annotation file not found")
        return DatasetSpec(name=name, annotation_path=str(path), media_root=media_root or str(path.parent))
    raise AnnotationError(
        f"dataset {name!r} is not registered (known: {', '.join(sorted(registry))}); add it to a registry YAML "
        "passed with --dataset_registry, or give a path to a .json/.jsonl file"
    )


def sample_indices(n: int, rate: float, seed: int, name: str) -> list[int]:
    """Indices for sampling ``rate`` of ``n`` items: seeded by (seed, name) so every rank gets the same."""
    whole, frac = int(rate), rate - int(rate)
    indices = list(range(n)) * whole
    take = int(n * frac + 1e-9)  # floor, as upstream's int(len * rate)
    if take:
        rng = random.Random(f"{seed}:{name}")
        indices += sorted(rng.sample(range(n), take))
    return indices


def load_records(
    dataset_use: str, registry_path: str | Path | None = None, seed: int = 42, check_exists: bool = True,
    bad_records: str = "error", media_root: str | None = None, invalid: list[tuple[str, str]] | None = None,
) -> list[Record]:  # fmt: skip
    """Every record of the datasets named in ``dataset_use``, checked, with sampling applied.

    ``bad_records="error"`` raises one :class:`AnnotationError` listing every invalid record (file:line and
    reason); ``"skip"`` leaves them out, logs each, and appends ``(location, reason)`` to ``invalid``.
    Records of an upstream pre-packed file carry their pack number (``Record.pack``); sampling takes whole packs.
    """
    registry = load_registry(registry_path)
    records: list[Record] = []
    errors: list[tuple[str, str]] = []
    for name, rate in parse_dataset_use(dataset_use):
        spec = resolve_spec(name, registry, media_root)
        units: dict[Any, list[Record]] = {}  # a record, or a whole upstream pack, is the unit of sampling
        for where, raw, pack in iter_records(spec.annotation_path, packed=True):
            try:
                if isinstance(raw, AnnotationError):
                    raise raw
                record = normalise_record(raw, where, spec.media_root, spec.name, check_exists)
            except AnnotationError as e:
                errors.append((where, str(e)))
                continue
            record.pack = pack
            units.setdefault(("pack", pack) if pack is not None else ("record", where), []).append(record)
        unit_list = list(units.values())
        chosen = sample_indices(len(unit_list), rate, seed, name)
        n = sum(len(unit_list[i]) for i in chosen)
        logger.info("dataset %s: %d records, %d used (rate %.2f)", name, sum(map(len, unit_list)), n, rate)
        offset = max((r.pack for r in records if r.pack is not None), default=-1) + 1
        for copy, i in enumerate(chosen):
            for record in unit_list[i]:
                if record.pack is not None:  # packs stay distinct across datasets and repeated copies
                    record = Record(record.id, record.messages, record.dataset, offset + copy)
                records.append(record)
    if errors and bad_records != "skip":
        shown = "\n  ".join(reason for _, reason in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise AnnotationError(
            f"{len(errors)} invalid record(s):\n  {shown}{more}\n"
            "Fix them, pass --bad_records skip to train on the rest, or run python -m qwenvl.data.lint for a full report."
        )
    for where, reason in errors:
        logger.warning("skipping invalid record %s", reason)
    if invalid is not None:
        invalid.extend(errors)
    return records
