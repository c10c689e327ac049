"""The media cache: bit-identical model inputs, no stale entries, corrupt entries rebuilt, LRU size bound,
exact palette storage of the patches, compression where it pays, several writers at once, and
``qwenvl cache build``."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.data.encode import SampleEncoder
from qwenvl.data.media_cache import MediaCache, ProcessedItem, fetch_item, process_media
from qwenvl.data.registry import DEMO_DIR
from qwenvl.model.budget import TRAINING_BUDGET
from qwenvl.model.families import FAMILIES
from qwenvl.model.loader import load_processor
from qwenvl.model.preprocessing import PreprocessingSettings


ROOT = Path(__file__).resolve().parents[3]


def _settings(family: str = "qwen3_vl", budget=TRAINING_BUDGET) -> PreprocessingSettings:
    return PreprocessingSettings(family, FAMILIES[family].patch_size, budget)


def _photo(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> Path:
    """A noisy photo-like JPEG (smooth gradient + noise), different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([(x * 255 // size[0]), (y * 255 // size[1]), ((x + y) * 127 // sum(size))], -1)
    pixels = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture
def media(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    for name in ("moving_red.mp4", "moving_blue.mp4"):
        shutil.copy(DEMO_DIR / "videos" / name, folder / name)
    return {
        "a": _photo(folder / "a.jpg", 0),
        "b": _photo(folder / "b.jpg", 1, (200, 300)),
        "video": folder / "moving_red.mp4",
        "video2": folder / "moving_blue.mp4",
    }


def _messages(media):
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(media["a"])},
                {"type": "image", "image": str(media["b"])},
                {"type": "video", "video": str(media["video"])},
                {"type": "text", "text": "What do you see?"},
            ],
        },
        {"role": "assistant", "content": "Two photos and a red circle."},
    ]


def _assert_same(a, b):
    assert set(a) - {"media_cache"} == set(b) - {"media_cache"}
    for key, value in a.items():
        if key == "media_cache":
            continue
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.fixture(scope="module")
def processors(tiny_checkpoints):
    return {f: load_processor(str(tiny_checkpoints[f])) for f in FAMILIES}


def _cache(root, processors, family="qwen3_vl", budget=TRAINING_BUDGET, **kwargs):
    return MediaCache(root, _settings(family, budget), processors[family], **kwargs)


def test_model_inputs_bit_identical_with_and_without_cache(processors, media, tmp_path, family):
    processor = processors[family]
    plain = SampleEncoder(processor, FAMILIES[family], TRAINING_BUDGET)
    cache = _cache(tmp_path / "cache", processors, family)
    cached = SampleEncoder(processor, FAMILIES[family], TRAINING_BUDGET, media_cache=cache)
    expected = plain(_messages(media), "s0")
    assert "media_cache" not in expected
    first = cached(_messages(media), "s0")
    assert first["media_cache"] == [0, 3]
    second = cached(_messages(media), "s0")
    assert second["media_cache"] == [3, 0]
    _assert_same(expected, first)
    _assert_same(expected, second)
    assert "pixel_values_videos" in second and "pixel_values" in second
    # A fresh process's view: a new cache object on the same folder (no in-memory state) reads the same.
    again = SampleEncoder(processor, FAMILIES[family], TRAINING_BUDGET,
                          media_cache=_cache(tmp_path / "cache", processors, family))(_messages(media), "s0")  # fmt: skip
    assert again["media_cache"] == [3, 0]
    _assert_same(expected, again)


def _item(kind, path, budget=TRAINING_BUDGET):
    item = {"type": kind, kind: str(path)}
    return budget.image_item(item) if kind == "image" else budget.video_item(item)


def _load(cache, kind, path, budget=TRAINING_BUDGET):
    """``(patches, metadata, outcome)`` of one item through the cache."""
    processed, outcome = cache.load(kind, _item(kind, path, budget))
    return processed.pixels, processed.metadata, outcome


def _plain(processors, kind, path, family="qwen3_vl", budget=TRAINING_BUDGET):
    """Oracle: qwen_vl_utils' resize and the processor's image or video processor on that item, no cache."""
    media, metadata = fetch_item(kind, _item(kind, path, budget), FAMILIES[family].patch_size)
    return process_media(processors[family], kind, media, metadata).pixels


def _same(a, b):
    """Bit for bit (``torch.equal`` takes -0.0 for 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_changed_file_budget_or_family_never_reads_a_stale_entry(processors, media, tmp_path):
    cache = _cache(tmp_path / "cache", processors)
    image, _, outcome = _load(cache, "image", media["a"])
    assert outcome == "miss" and _load(cache, "image", media["a"])[2] == "hit"

    # The file changes (same name, same size, mtime moved): its content is hashed again and the old entry unused.
    old = media["a"].read_bytes()
    _photo(media["a"], 7)
    assert media["a"].read_bytes() != old
    changed, _, outcome = _load(cache, "image", media["a"])
    assert outcome == "miss"
    assert _same(changed, _plain(processors, "image", media["a"]))
    assert not _same(changed, image)
    # The file replaced by another (rename) with its mtime put back, seen by a new cache object (another process,
    # reading the stat index on disk): the inode differs, so the content is hashed again.
    st = media["a"].stat()
    replacement = media["a"].with_name("a.new.jpg")
    _photo(replacement, 8)
    os.replace(replacement, media["a"])
    os.utime(media["a"], ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = _cache(tmp_path / "cache", processors)
    third, _, outcome = _load(fresh, "image", media["a"])
    assert outcome == "miss" and _same(third, _plain(processors, "image", media["a"]))

    # Restoring the original bytes (new mtime) finds the original entry again: entries are keyed by content.
    media["a"].write_bytes(old)
    restored, _, outcome = _load(cache, "image", media["a"])
    assert outcome == "hit" and _same(restored, image)

    # Another budget: a different entry, resized differently.
    small = TRAINING_BUDGET.overridden(max_pixels=32 * 32 * 16, min_pixels=32 * 32 * 4)
    resized, _, outcome = _load(cache, "image", media["a"], small)
    assert outcome == "miss" and resized.shape != image.shape
    assert _same(resized, _plain(processors, "image", media["a"], budget=small))

    # Another family (another patch size): a different entry, and so is the same patch size under another name.
    qwen25 = _cache(tmp_path / "cache", processors, "qwen2_5_vl")
    other, _, outcome = _load(qwen25, "image", media["a"])
    assert outcome == "miss" and _same(other, _plain(processors, "image", media["a"], "qwen2_5_vl"))
    assert _load(_cache(tmp_path / "cache", processors, "qwen3_vl_moe"), "image", media["a"])[2] == "miss"

    # Another normalisation in the processor (same family and budget): a different entry with its own patches.
    import copy

    renormed = copy.deepcopy(processors["qwen3_vl"])
    renormed.image_processor.image_mean = [0.4, 0.5, 0.6]
    other_norm = MediaCache(tmp_path / "cache", _settings(), renormed)
    patches, _, outcome = _load(other_norm, "image", media["a"])
    assert outcome == "miss" and not _same(patches, image)
    media_a, _ = fetch_item("image", _item("image", media["a"]), 16)
    assert _same(patches, process_media(renormed, "image", media_a, None).pixels)

    # Videos: a different video at the same path is a miss, with the new frames.
    frames, _, _ = _load(cache, "video", media["video"])
    shutil.copy(media["video2"], media["video"])
    new_frames, _, outcome = _load(cache, "video", media["video"])
    assert outcome == "miss" and not _same(frames, new_frames)
    assert _same(new_frames, _plain(processors, "video", media["video"]))


def _entries(cache):
    return sorted((cache.root / "entries").glob("*/*.qvm"))


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "empty"])
def test_corrupt_or_truncated_entry_is_detected_and_rebuilt(processors, media, tmp_path, damage, caplog):
    cache = _cache(tmp_path / "cache", processors)
    frames, metadata, _ = _load(cache, "video", media["video"])
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    if damage == "flip_payload":
        data[-10] ^= 0x01
    elif damage == "flip_header":
        data[20] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    entry.write_bytes(bytes(data))
    again, meta2, outcome = _load(cache, "video", media["video"])
    assert outcome == "miss" and cache.stats.corrupt == 1
    assert "corrupt" in caplog.text
    assert _same(again, frames) and meta2 == metadata
    # Rebuilt: the next read is a clean hit.
    hit, meta3, outcome = _load(cache, "video", media["video"])
    assert outcome == "hit" and _same(hit, frames) and meta3 == metadata and cache.stats.corrupt == 1


def test_size_bound_evicts_least_recently_used(processors, media, tmp_path):
    folder = media["a"].parent
    photos = [_photo(folder / f"p{i}.jpg", 100 + i) for i in range(6)]
    probe = _cache(tmp_path / "probe", processors, codec="none")
    _load(probe, "image", photos[0])
    one = probe.disk_usage()
    cache = _cache(tmp_path / "cache", processors, max_bytes=int(one * 3.5), codec="none")
    for i, photo in enumerate(photos[:3]):
        _load(cache, "image", photo)
    # Age the entries: p0 oldest ... p2 newest, all older than the touch interval.
    now = time.time()
    for age, entry in zip((3000, 2000, 1000), [cache.entry_path(cache.key("image", TRAINING_BUDGET.image_item(
            {"type": "image", "image": str(p)}), cache.content_hash(str(p)))) for p in photos[:3]]):  # fmt: skip
        os.utime(entry, (now - age, now - age))
    assert _load(cache, "image", photos[0])[2] == "hit"  # p0 used again: now the most recent
    _load(cache, "image", photos[3])  # 4 entries > 3.5: evict down to 90% of the bound -> 3 left, p1 goes
    assert cache.disk_usage() <= cache.max_bytes and cache.stats.evicted == 1
    assert _load(cache, "image", photos[0])[2] == "hit"
    assert _load(cache, "image", photos[2])[2] == "hit"
    assert _load(cache, "image", photos[1])[2] == "miss"


def _header(data):
    return json.loads(data[16 : 16 + int.from_bytes(data[8:12], "little")])


def test_compression_only_where_it_pays(processors, tmp_path):
    cache = _cache(tmp_path / "cache", processors, codec="zlib")
    flat = Image.new("RGB", (256, 256), (10, 200, 30))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    for image, codec in ((flat, "zlib"), (noise, "none")):
        processed = process_media(processors["qwen3_vl"], "image", image, None)
        data = cache.encode_entry("k", processed)
        entry = tmp_path / f"{codec}.qvm"
        entry.write_bytes(data)
        assert _header(data)["codec"] == codec
        back = cache.read(entry, "k")
        assert _same(back.pixels, processed.pixels) and torch.equal(back.grid, processed.grid)
    assert len((tmp_path / "zlib.qvm").read_bytes()) < 256 * 256 * 3 * 0.1


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])  # CLIP's per-channel normalisation; Qwen3's 0.5
def test_patches_stored_exactly_as_a_palette_or_else_as_float32(processors, media, tmp_path, family):
    cache = _cache(tmp_path / "cache", processors, family, codec="none")
    media_video, metadata = fetch_item("video", _item("video", media["video"]), FAMILIES[family].patch_size)
    processed = process_media(processors[family], "video", media_video, metadata)
    rows, width = processed.pixels.shape
    data = cache.encode_entry("k", processed)
    # One byte per value (the resized pixels' size) and a 256-level table per channel.
    assert _header(data)["layout"] == "palette" and len(data) < rows * width + 3 * 256 * 4 + 2048
    (tmp_path / "p.qvm").write_bytes(data)
    back = cache.read(tmp_path / "p.qvm", "k")
    assert _same(back.pixels, processed.pixels) and back.metadata == json.loads(json.dumps(metadata, default=int))
    # An image's patches hold it once per temporal slot: one set of indices is stored, half the values.
    photo, _ = fetch_item("image", _item("image", media["a"]), FAMILIES[family].patch_size)
    image = process_media(processors[family], "image", photo, None)
    data = cache.encode_entry("i", image)
    assert _header(data)["repeat"] == 2 and len(data) < image.pixels.numel() // 2 + 3 * 256 * 4 + 2048
    assert image.pixels.numel() // 2 == photo.width * photo.height * 3
    (tmp_path / "i.qvm").write_bytes(data)
    assert _same(cache.read(tmp_path / "i.qvm", "i").pixels, image.pixels)
    assert _header(data)["affine"] is not None  # the processor's own normalisation: decoded arithmetically
    # 256 levels per channel that are not that normalisation (every value one ulp up): a table of levels, exact.
    shifted = ProcessedItem("video", torch.nextafter(processed.pixels, torch.tensor(10.0)), processed.grid, metadata)
    data = cache.encode_entry("k", shifted)
    assert _header(data)["layout"] == "palette" and _header(data)["affine"] is None
    (tmp_path / "t.qvm").write_bytes(data)
    assert _same(cache.read(tmp_path / "t.qvm", "k").pixels, shifted.pixels)
    # Values that are not 256 levels per channel (one value nudged by one ulp) cannot be a palette: float32.
    nudged = processed.pixels.clone()
    nudged[3, 5] = torch.nextafter(nudged[3, 5], torch.tensor(10.0))
    odd = ProcessedItem("video", nudged, processed.grid, processed.metadata)
    data = cache.encode_entry("k", odd)
    assert _header(data)["layout"] == "float32" and len(data) > rows * width * 4
    (tmp_path / "f.qvm").write_bytes(data)
    assert _same(cache.read(tmp_path / "f.qvm", "k").pixels, nudged)


def _worker(args):
    root, paths, processor = args
    cache = MediaCache(root, _settings(), processor)
    return [_load(cache, "image", p)[2] for p in paths]


def test_several_processes_fill_one_cache(processors, media, tmp_path):
    folder = media["a"].parent
    photos = [str(_photo(folder / f"w{i}.jpg", 200 + i)) for i in range(4)]
    root = tmp_path / "cache"
    _cache(root, processors)
    processor = processors["qwen3_vl"]
    with multiprocessing.get_context("fork").Pool(3) as pool:
        pool.map(_worker, [(root, photos, processor), (root, photos[::-1], processor), (root, photos, processor)])
    cache = _cache(root, processors)
    assert len(_entries(cache)) == 4
    assert not list(root.rglob("*.tmp"))
    for p in photos:
        image, _, outcome = _load(cache, "image", p)
        assert outcome == "hit" and _same(image, _plain(processors, "image", p))


def test_cache_build_cli_fills_what_training_reads(tiny_checkpoints, processors, tmp_path):
    paths = [str(ROOT / "qwen-vl-finetune"), str(ROOT / "qwen-vl-utils" / "src"), str(ROOT)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    cmd = [sys.executable, "-m", "qwenvl.cli", "cache", "build", "--media_cache", str(tmp_path / "c"),
           "--model_name_or_path", str(tiny_checkpoints["qwen3_vl"]), "--dataset_use", "demo_images,demo_video",
           "--workers", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "7 built" in out.stdout and "0 failed" in out.stdout
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert "0 built" in out.stdout and "7 already cached" in out.stdout, out.stdout
    bad = subprocess.run(cmd[:5] + ["--max_pixel", "5"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--max_pixels" in bad.stderr and "Traceback" not in bad.stderr
    # Training's encoder finds every demo item built.
    from qwenvl.data.registry import load_records

    cache = _cache(tmp_path / "c", processors)
    encoder = SampleEncoder(processors["qwen3_vl"], FAMILIES["qwen3_vl"], TRAINING_BUDGET, media_cache=cache)
    records = load_records("demo_images,demo_video")
    for record in records:
        assert encoder(record.messages, record.id)["media_cache"][1] == 0
    assert cache.stats.misses == 0 and cache.stats.hits == sum(len(r.media()) for r in records) > 7


def test_parallel_loading_keeps_the_items_order(processors, media):
    # Oracle: qwen_vl_utils' fetch_image one at a time, in order, and the processor on those images.
    from qwen_vl_utils import fetch_image

    processor = processors["qwen3_vl"]
    messages = _messages(media)
    messages[0]["content"] = [messages[0]["content"][i] for i in (1, 0)] + messages[0]["content"][3:]
    sample = SampleEncoder(processor, FAMILIES["qwen3_vl"], TRAINING_BUDGET)(messages, "s")
    images = [fetch_image(TRAINING_BUDGET.image_item({"image": str(media[k])}), image_patch_size=16) for k in "ba"]
    expected = processor.image_processor(images=images, do_resize=False, return_tensors="pt")
    assert images[0].size != images[1].size
    assert torch.equal(sample["image_grid_thw"], expected["image_grid_thw"])
    assert torch.equal(sample["pixel_values"], expected["pixel_values"])
