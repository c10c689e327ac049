"""fetch_image on every source type (http through a real local server), colour modes, JPEG draft decoding, bad input."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from qwen_vl_utils import VisionInputError, configure_http, fetch_image, http_config, process_vision_info
from qwen_vl_utils.image_io import decode_image, open_image


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients + blobs), so JPEG behaves as it does on photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        img[..., c] = 128 + 60 * np.sin(x / (40 + 30 * c) + rng.uniform(0, 6)) * np.cos(y / (55 + 20 * c))
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 200)
        mask = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        img[mask] = img[mask] * 0.5 + rng.uniform(0, 255, 3) * 0.5
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = urllib.parse.urlparse(self.path).path
        _Handler.hits[path] = _Handler.hits.get(path, 0) + 1
        if path == "/img.png":
            self._send(200, _Handler.payload)
        elif path == "/flaky.png":  # fails twice with 503, then works: retries must absorb it
            if _Handler.hits[path] <= 2:
                self._send(503, b"busy")
            else:
                self._send(200, _Handler.payload)
        elif path == "/slow.png":
            time.sleep(2.0)
            self._send(200, _Handler.payload)
        elif path == "/trickle.png":  # one byte every 0.3 s: each read is quick, the whole never ends
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        elif path == "/redirect-local.png":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big.png":
            self._send(200, b"\0" * (2 * 1024 * 1024))
        elif path == "/big-nolength.png":
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    _Handler.payload = _png_bytes(_photo(200, 100))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def fast_http():
    before = http_config()
    configure_http(connect_timeout=2.0, read_timeout=0.5, retries=3, backoff=0.01, max_bytes=1024 * 1024)
    yield
    configure_http(**before.__dict__)


def test_all_source_types_give_the_same_image(tmp_path, server, fast_http):
    image = _photo(200, 100)
    png = _png_bytes(image)
    path = tmp_path / "a b.png"  # a space: file:// URLs are percent-decoded
    path.write_bytes(png)
    b64 = base64.b64encode(png).decode()
    sources = [
        {"image": str(path)},
        {"image": path.as_uri()},
        {"image": f"{server}/img.png"},
        {"image": f"data:image/png;base64,{b64}"},
        {"image": "data:image/png," + urllib.parse.quote_from_bytes(png)},
        {"image": image},
        {"image": png},
        {"image_url": str(path)},
        {"image_url": {"url": f"data:image/png;base64,{b64}"}},
        {"type": "image_url", "image_url": {"url": f"{server}/img.png"}},
    ]
    expected = fetch_image({"image": image})
    assert expected.size == (196, 112)  # 200x100 on the 28 grid: round(7.14)=7 -> 196, round(3.57)=4 -> 112
    for ele in sources:
        out = fetch_image(ele)
        assert out.mode == "RGB"
        assert out.size == expected.size, ele
        assert np.array_equal(np.asarray(out), np.asarray(expected)), ele
    assert fetch_image({"image": image}) is not image


def test_http_retries_on_5xx(server, fast_http):
    _Handler.hits.pop("/flaky.png", None)
    assert fetch_image({"image": f"{server}/flaky.png"}).size == (196, 112)
    assert _Handler.hits["/flaky.png"] == 3


def test_http_errors_name_the_url(server, fast_http):
    with pytest.raises(VisionInputError, match=r"404.*|.*/missing.png"):
        fetch_image({"image": f"{server}/missing.png"})
    with pytest.raises(VisionInputError, match="timed out fetching .*/slow.png"):
        fetch_image({"image": f"{server}/slow.png"})
    with pytest.raises(VisionInputError, match="over the limit"):
        fetch_image({"image": f"{server}/big.png"})
    with pytest.raises(VisionInputError, match="more than 1048576 bytes"):
        fetch_image({"image": f"{server}/big-nolength.png"})
    with pytest.raises(VisionInputError, match="could not fetch http://127.0.0.1:9/"):
        configure_http(retries=0)
        fetch_image({"image": "http://127.0.0.1:9/x.png"})


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    la = Image.new("LA", (64, 64), (0, 0))
    p = Image.new("P", (64, 64), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    for image in (rgba, la, p):
        out = np.asarray(fetch_image({"image": image}))
        assert out.min() == 255, image.mode


def test_colour_modes_become_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # red in CMYK
    assert np.asarray(fetch_image({"image": cmyk}))[0, 0].tolist() == [255, 0, 0]
    gray = Image.new("L", (64, 64), 77)
    assert np.asarray(fetch_image({"image": gray}))[0, 0].tolist() == [77, 77, 77]
    deep = Image.fromarray(np.full((64, 64), 32768, np.uint16))  # mid-grey in 16 bits
    assert deep.mode.startswith("I;16")
    value = np.asarray(fetch_image({"image": _png_roundtrip(deep)}))[0, 0]
    assert abs(int(value[0]) - 128) <= 1 and len(set(value.tolist())) == 1


def _png_roundtrip(image: Image.Image) -> bytes:
    return _png_bytes(image)


def test_jpeg_draft_decoding_matches_full_decode(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg_bytes(_photo(2400, 1800, seed=1)))
    ele = {"image": str(path), "max_pixels": 256 * 28 * 28}
    fast = fetch_image(ele)
    full = Image.open(path).convert("RGB").resize(fast.size, Image.Resampling.BICUBIC)
    assert fast.size == full.size == (504, 364)
    mad = np.abs(np.asarray(fast, np.float32) - np.asarray(full, np.float32)).mean()
    assert mad <= 1.0, mad
    # It really decoded at reduced scale: the decoded image is smaller than the file.
    drafted = decode_image(open_image(str(path)), str(path), fast.size)
    assert drafted.size[0] < 2400 and drafted.size[0] >= fast.size[0]
    # No draft when the target is more than half the source.
    assert decode_image(open_image(str(path)), str(path), (1300, 1000)).size == (2400, 1800)


def test_patch_16_and_budgets():
    image = _photo(640, 480)
    assert fetch_image({"image": image}, image_patch_size=16).size == (640, 480)
    assert fetch_image({"image": image, "max_pixels": 64 * 32 * 32}, image_patch_size=16).size == (288, 192)
    assert fetch_image({"image": image, "resized_height": 100, "resized_width": 130}).size == (140, 112)
    assert fetch_image({"image": Image.new("RGB", (10, 10))}).size == (56, 56)


def test_bad_inputs_raise_naming_the_input(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(VisionInputError, match="not found.*nope.jpg"):
        fetch_image({"image": str(missing)})
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(VisionInputError, match="cannot identify image.*junk.jpg"):
        fetch_image({"image": str(junk)})
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(_jpeg_bytes(_photo(400, 300))[:3000])
    with pytest.raises(VisionInputError, match="trunc.jpg.*(corrupt or truncated|truncated)"):
        fetch_image({"image": str(truncated)})
    with pytest.raises(VisionInputError, match="Unrecognized image input 42"):
        fetch_image({"image": 42})
    with pytest.raises(VisionInputError, match="aspect ratio must be smaller than 200"):
        fetch_image({"image": Image.new("RGB", (4000, 10))})
    with pytest.raises(VisionInputError, match="invalid base64|cannot identify"):
        fetch_image({"image": "data:image/png;base64,@@@@"})
    with pytest.raises(VisionInputError, match="neither 'image' nor 'image_url'"):
        fetch_image({"type": "image"})
    with pytest.raises(VisionInputError, match="'url' key"):
        fetch_image({"image_url": {"href": "x"}})


def test_a_callers_lazy_jpeg_is_not_mutated(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg_bytes(_photo(640, 480)))
    lazy = Image.open(path)  # not loaded yet: draft() would shrink this very object
    first = fetch_image({"image": lazy, "max_pixels": 160 * 120})
    assert lazy.size == (640, 480)
    second = fetch_image({"image": lazy, "max_pixels": 160 * 120})
    assert first.size == second.size and np.array_equal(np.asarray(first), np.asarray(second))
    assert fetch_image({"image": lazy}).size == fetch_image({"image": str(path)}).size == (644, 476)


def test_a_trickling_server_is_cut_off_at_the_total_deadline(server):
    before = http_config()
    configure_http(connect_timeout=2.0, read_timeout=5.0, total_timeout=1.5, retries=0)
    try:
        started = time.monotonic()
        with pytest.raises(VisionInputError, match="timed out fetching .*trickle.png.*1.5 s in all"):
            fetch_image({"image": f"{server}/trickle.png"})
        assert time.monotonic() - started < 5.0  # per-read timeouts alone would never end it
    finally:
        configure_http(**before.__dict__)


def test_default_total_deadline_is_30_seconds_and_set_by_the_environment(monkeypatch):
    import qwen_vl_utils.image_io as image_io

    assert image_io.HttpConfig().total_timeout == 30.0
    monkeypatch.setenv("QWENVL_HTTP_TOTAL_TIMEOUT", "7")
    monkeypatch.setenv("QWENVL_HTTP_BLOCK_PRIVATE", "1")
    cfg = image_io._env_http_config()
    assert cfg.total_timeout == 7.0 and cfg.block_private is True


def test_private_addresses_can_be_refused_redirects_included(server, fast_http):
    assert fetch_image({"image": f"{server}/img.png"}).size == (196, 112)  # off by default (a drop-in)
    configure_http(block_private=True)
    with pytest.raises(VisionInputError, match="non-public address 127.0.0.1"):
        fetch_image({"image": f"{server}/img.png"})
    with pytest.raises(VisionInputError, match="non-public address 127.0.0.1"):
        fetch_image({"image": f"{server}/redirect-local.png"})
    with pytest.raises(VisionInputError, match="non-public address"):
        fetch_image({"image": "http://169.254.169.254/latest/meta-data"})
    configure_http(block_private=False)
    assert fetch_image({"image": f"{server}/redirect-local.png"}).size == (196, 112)  # redirects still followed


def test_decompression_bombs_are_vision_input_errors(tmp_path):
    from qwen_vl_utils import ImageTooLargeError

    bomb = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(bomb)  # a small file that claims 900 megapixels
    assert bomb.stat().st_size < 500_000
    with pytest.raises(ImageTooLargeError, match="bomb.png.*too large to decode safely.*MAX_IMAGE_PIXELS"):
        fetch_image({"image": str(bomb)})
    header = bytearray(_jpeg_bytes(_photo(16, 16)))
    sof = header.index(b"\xff\xc0")  # baseline frame header: height and width follow the precision byte
    header[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") * 2
    with pytest.raises(VisionInputError, match="too large to decode safely|cannot"):
        fetch_image({"image": bytes(header)})


@pytest.mark.slow
def test_many_huge_images_stay_bounded_in_memory(tmp_path):
    """8 copies of a 12000x12000 PNG (a few KB each) through process_vision_info with the default settings: the
    decoded-pixel gate keeps the peak under 2 GB (8 concurrent full decodes took 7.3 GB), same outputs."""
    import subprocess
    import sys

    Image.new("RGB", (12000, 12000), (200, 30, 60)).save(tmp_path / "huge.png")
    script = f"""
import numpy as np
path = {str(tmp_path / "huge.png")!r}
from qwen_vl_utils import process_vision_info, fetch_image
messages = [{{"role": "user", "content": [{{"type": "image", "image": path}} for _ in range(8)]}}]
images, _ = process_vision_info(messages)
alone = fetch_image({{"image": path}})
assert len(images) == 8 and all(np.array_equal(np.asarray(i), np.asarray(alone)) for i in images)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent (pytest, gigabytes after other tests)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_MB", peak // 1024)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "QWENVL_FETCH_WORKERS": "8"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    peak = int(result.stdout.split("PEAK_MB")[1])
    assert peak < 2048, f"peak RSS {peak} MB"


def test_a_batch_reuses_freed_image_blocks_and_releases_them_at_the_end(tmp_path):
    """Inside process_vision_info, the blocks of one decoded photo are handed to the next (PIL's block cache), and
    the caller's setting (no cache) is back afterwards, with nothing left cached."""
    from qwen_vl_utils.image_io import reuse_image_blocks

    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}.jpg"
        path.write_bytes(_jpeg_bytes(_photo(2400, 1800, seed=i)))
        paths.append(str(path))
    core = Image.core
    core.set_blocks_max(0)
    before = core.get_stats()
    messages = [{"role": "user", "content": [{"type": "image", "image": p, "max_pixels": 200_000} for p in paths]}]
    images, _ = process_vision_info(messages)
    after = core.get_stats()
    assert after["reused_blocks"] > before["reused_blocks"]  # the second and third photo took freed blocks
    assert core.get_blocks_max() == 0 and after["blocks_cached"] == 0  # released, setting restored
    alone = [fetch_image({"image": p, "max_pixels": 200_000}) for p in paths]
    assert [np.asarray(a).tobytes() for a in images] == [np.asarray(a).tobytes() for a in alone]

    # Nested and overlapping users share one setting; the last to leave restores the caller's own value.
    core.set_blocks_max(3)
    with reuse_image_blocks():
        inside = core.get_blocks_max()
        with reuse_image_blocks():
            assert core.get_blocks_max() == inside
        assert core.get_blocks_max() == inside
    assert inside >= 16 and core.get_blocks_max() == 3
    core.set_blocks_max(0)


def test_local_batches_start_the_largest_item_first_and_keep_their_order(tmp_path, monkeypatch):
    """Largest-first scheduling (network items and videos, then images by encoded size) with one thread per core
    for local media; the results still come back in the conversation's order."""
    from qwen_vl_utils import vision_process

    small, big = tmp_path / "small.jpg", tmp_path / "big.jpg"
    small.write_bytes(_jpeg_bytes(_photo(300, 200, seed=1)))
    big.write_bytes(_jpeg_bytes(_photo(1600, 1200, seed=2)))
    infos = [{"image": str(small)}, {"image": f"file://{big}"}, {"image": "https://example.com/x.jpg"},
             {"video": str(small)}, {"image": big.read_bytes()}]  # fmt: skip
    order = sorted(range(len(infos)), key=lambda i: vision_process._fetch_cost(infos[i]))
    assert order == [2, 3, 1, 4, 0]  # remote and video first (input order), then by size (the two bigs tie)
    monkeypatch.delenv("QWENVL_FETCH_WORKERS", raising=False)
    cores = __import__("os").cpu_count() or 2
    local = [{"image": str(small)}] * 20
    assert vision_process._fetch_workers(local) == min(cores, 20)
    assert vision_process._fetch_workers([*local, infos[2]]) == min(8, cores + 2)

    monkeypatch.setenv("QWENVL_FETCH_WORKERS", "2")
    messages = [{"role": "user", "content": [{"type": "image", "image": str(p)} for p in (small, big, small, big)]}]
    images, _ = process_vision_info(messages)
    assert [im.size for im in images] == [fetch_image({"image": str(p)}).size for p in (small, big, small, big)]
