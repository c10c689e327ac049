"""web_demo_mm.py: UI building, safety rules, and real runs: Chromium driving the demo (hf backend) and the
openai backend against a real `transformers serve` on 127.0.0.1, both on a tiny checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import web_demo_mm as demo_mod
from qwenvl.inference.base import GenerationSettings
from qwenvl.inference.chat import ColumnAnswer, UploadLimits, check_upload, describe_upload
from qwenvl.inference.config import BackendConfig
from qwenvl.inference.hf import HFBackend
from qwenvl.inference.markup import safe_markdown
from qwenvl.inference.openai_backend import OpenAIBackend
from tests.conftest import missing_prerequisite


CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hf_backend(tiny_checkpoints):
    return HFBackend(str(tiny_checkpoints["qwen3_vl"]), device="cpu")


@pytest.fixture
def image_file(tmp_path) -> str:
    path = tmp_path / "red.png"
    Image.new("RGB", (120, 90), (220, 30, 30)).save(path)
    return str(path)


def test_command_line_offers_every_backend(tiny_checkpoints):
    ckpt = str(tiny_checkpoints["qwen3_vl"])
    for name in ("hf", "vllm", "openai"):
        assert demo_mod.parse_args(["-c", ckpt, "--backend", name]).backend == name
    assert demo_mod.parse_args([]).server_name == "127.0.0.1"  # this machine only unless asked
    with pytest.raises(SystemExit):
        demo_mod.parse_args(["--backend", "sglang"])
    backend = _demo_backend(["-c", ckpt, "--backend", "hf", "--cpu-only"])
    assert isinstance(backend, HFBackend) and backend.family.model_type == "qwen3_vl"
    # (the vllm backend is built from the same command line in tests/test_vllm.py, inside .venv-vllm)


def _demo_backend(argv: list[str]):
    """The backend the demo builds for a command line (as its main does)."""
    from qwenvl.inference import load_backend

    return load_backend(BackendConfig.from_args(demo_mod.parse_args(argv)))


def test_demo_reads_the_evaluations_backend_flags_and_its_own_aliases():
    """One configuration for the demo and the benchmarks: the evaluations' flag names work in the demo, the demo's
    historical names are aliases of the same fields, and only the defaults differ (a hub checkpoint, a local server,
    one answer at a time)."""
    from qwenvl.cli import StrictParser

    def evaluation(argv: list[str]) -> BackendConfig:
        parser = StrictParser()
        BackendConfig.add_arguments(parser)
        return BackendConfig.from_args(parser.parse_args(argv))

    shared = ["--model-path", "ckpt", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--dtype",
              "bfloat16", "--attn-implementation", "eager", "--device", "cpu", "--concurrency", "3"]  # fmt: skip
    assert BackendConfig.from_args(demo_mod.parse_args(shared)) == evaluation(shared)
    historical = ["-c", "ckpt", "--backend", "openai", "--api-base", "http://127.0.0.1:9/v1", "--cpu-only",
                  "--flash-attn2", "--api-key", "k"]  # fmt: skip
    config = BackendConfig.from_args(demo_mod.parse_args(historical))
    assert (config.model_path, config.base_url, config.device, config.attn_implementation) == (
        "ckpt", "http://127.0.0.1:9/v1", "cpu", "flash_attention_2")  # fmt: skip
    assert config.options()["api_key"] == "k"
    defaults = BackendConfig.from_args(demo_mod.parse_args([]))
    assert (defaults.model_path, defaults.base_url, defaults.concurrency) == (
        "Qwen/Qwen3-VL-8B-Instruct", "http://127.0.0.1:8000/v1", 1)  # fmt: skip
    assert not hasattr(demo_mod, "make_backend") and not hasattr(demo_mod, "make_compare_backend")


def test_build_demo_returns_blocks_without_a_server(hf_backend):
    import gradio as gr

    demo = demo_mod.build_demo(hf_backend)
    assert isinstance(demo, gr.Blocks)
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert {"chatbot", "chat_input", "stop_btn", "regen_btn", "clear_btn", "upload_limits", "seed"} <= ids
    assert getattr(demo, "local_url", None) is None and getattr(demo, "server", None) is None  # nothing serves


def test_backend_streams_per_token(hf_backend, image_file):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image_file}, {"type": "text", "text": "Colour?"}]}
    ]
    pieces = list(hf_backend.stream(messages, GenerationSettings(max_new_tokens=8), threading.Event()))
    assert len(pieces) >= 2 and all(pieces)


def test_uploads_are_checked(tmp_path, hf_backend, image_file):
    limits = UploadLimits(max_mb=1)
    assert check_upload(image_file, limits) == ("image", 120 * 90 / 1e6)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    with pytest.raises(ValueError, match="over the 1 MB upload limit"):
        check_upload(str(big), limits)
    with pytest.raises(ValueError, match="unsupported file type .exe"):
        check_upload(str(tmp_path / "x.exe"), limits)
    with pytest.raises(ValueError, match="gone.png: the upload is gone from the server; upload it again"):
        check_upload(str(tmp_path / "gone.png"), limits)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="corrupt.png"):
        describe_upload(str(corrupt), "image", hf_backend)
    assert "visual tokens" in describe_upload(image_file, "image", hf_backend)


def test_history_keeps_raw_text_and_typed_paths_are_never_opened(hf_backend, tmp_path):
    app = demo_mod.ChatApp(hf_backend)
    _, session, chat = app.add_user({"text": "file:///etc/passwd <b>x</b>", "files": []}, demo_mod.ChatSession())
    history = session.columns[0].history
    assert history == [{"role": "user", "content": [{"type": "text", "text": "file:///etc/passwd <b>x</b>"}]}]
    assert demo_mod.last_image(history) is None
    assert safe_markdown("a <b> & c") == "a &lt;b&gt; &amp; c"


# ----------------------------------------------------------------------------------------------- real browser


@pytest.fixture(scope="module")
def running_demo(hf_backend):
    port = _free_port()
    demo = demo_mod.build_demo(
        hf_backend, demo_mod.DemoConfig(max_upload_mb=1, concurrency=2, default_max_new_tokens=400)
    )
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size="1mb")
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        missing_prerequisite(f"{CHROMIUM} not installed (scripts/setup.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()


def _bot_texts(page) -> list[str]:
    return page.locator("[data-testid=bot]").all_inner_texts()


def _ask(page, text: str, image: str | None = None) -> None:
    if image:
        page.locator("#chat_input input[type=file]").set_input_files(image)
        page.locator("#chat_input img").first.wait_for(timeout=20000)
    page.locator("#chat_input textarea").fill(text)
    page.locator("#chat_input textarea").press("Enter")
    # The turn has reached the server once the question shows in the chat: until then the page still looks idle
    # (Regenerate enabled, nothing pending), and a _wait_idle right after Enter returned before the answer began.
    page.wait_for_function(
        "t => [...document.querySelectorAll('#chatbot [data-testid=user]')].some(e => e.innerText.includes(t))",
        arg=text,
        timeout=20000,
    )


def _wait_idle(page, timeout: float = 60) -> None:
    regen = page.locator("#regen_btn")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The input stays locked from the question's arrival to the answer's end (Regenerate is briefly enabled
        # between the two steps of a turn), so all three together mean the turn is over.
        idle = regen.is_enabled() and page.locator("#chat_input textarea").is_editable()
        if idle and not page.locator(".generating, .pending").count():
            return
        time.sleep(0.1)
    raise AssertionError("generation did not finish")


@pytest.mark.browser
def test_browser_upload_ask_stream_regenerate_stop_clear(running_demo, browser, image_file, artifacts_dir, hf_backend):
    page = browser.new_page()
    page.goto(running_demo)
    # The page names the checkpoint (title, heading, the chat's label instead of Gradio's "Chatbot").
    label = f"{hf_backend.label} (hf, qwen3_vl)"
    page.get_by_text(label).first.wait_for(timeout=10000)
    page.wait_for_function(f"() => document.title.includes({hf_backend.label!r})", timeout=10000)
    assert page.get_by_text("Chatbot", exact=True).count() == 0
    assert page.locator("#stop_btn").is_disabled()  # nothing runs yet
    _ask(page, "What colour is it?", image_file)
    page.locator("[data-testid=user] img").first.wait_for(timeout=20000)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        texts = _bot_texts(page)
        if texts and texts[-1] and (not seen or texts[-1] != seen[-1]):
            seen.append(texts[-1])
        if len(seen) >= 3 and page.locator("#regen_btn").is_enabled():
            break
        time.sleep(0.02)
    assert len(seen) >= 3, f"the answer did not stream: {seen}"
    assert all(seen[i + 1].startswith(seen[i][: max(1, len(seen[i]) - 2)]) for i in range(len(seen) - 1))
    _wait_idle(page)
    page.screenshot(path=str(artifacts_dir / "demo_after_answer.png"), full_page=True)
    # The upload's cost is shown in the chat, right after the image it describes.
    user_texts = page.locator("#chatbot [data-testid=user]").all_inner_texts()
    assert any("red.png: " in t and "visual tokens" in t for t in user_texts), user_texts
    assert page.locator("#stop_btn").is_disabled()  # idle again

    # Regenerate: the button goes disabled while it runs, then comes back; one answer remains.
    page.locator("#regen_btn").click()
    page.wait_for_function("() => document.querySelector('#regen_btn').disabled", timeout=10000)
    _wait_idle(page)
    assert len(_bot_texts(page)) == 1

    # Clear empties the chat.
    page.locator("#clear_btn").click()
    time.sleep(1.0)
    assert _bot_texts(page) == [] and page.locator("[data-testid=user]").count() == 0
    page.screenshot(path=str(artifacts_dir / "demo_after_clear.png"), full_page=True)
    page.close()


@pytest.mark.browser
def test_browser_sessions_have_separate_histories(running_demo, browser, image_file):
    a, b = browser.new_context().new_page(), browser.new_context().new_page()
    a.goto(running_demo)
    b.goto(running_demo)
    _ask(a, "Session A question", image_file)
    _ask(b, "Session B question")
    _wait_idle(a)
    _wait_idle(b)
    assert "Session A question" in a.locator("#chatbot").inner_text()
    assert "Session B question" not in a.locator("#chatbot").inner_text()
    assert "Session A question" not in b.locator("#chatbot").inner_text()
    assert a.locator("[data-testid=user] img").count() == 1 and b.locator("[data-testid=user] img").count() == 0


@pytest.mark.browser
def test_browser_refuses_oversized_upload(running_demo, browser, tmp_path):
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)).save(big)  # about 1.5 MB: over the 1 MB limit
    page = browser.new_page()
    page.goto(running_demo)
    page.locator("#chat_input input[type=file]").set_input_files(str(big))
    time.sleep(2)
    page.locator("#chat_input textarea").fill("hi")
    page.locator("#chat_input textarea").press("Enter")
    time.sleep(2)
    assert page.locator("[data-testid=user] img").count() == 0
    # The control: a small upload in the same page does arrive, so the big one was refused, not lost.
    small = tmp_path / "small.png"
    Image.new("RGB", (60, 40), (0, 0, 250)).save(small)
    _ask(page, "and this?", str(small))
    page.locator("[data-testid=user] img").first.wait_for(timeout=20000)
    assert page.locator("[data-testid=user] img").count() == 1
    _wait_idle(page)
    page.close()


# ----------------------------------------------------------------------------------------------- A/B mode


@pytest.fixture(scope="module")
def second_backend(tiny_checkpoints):
    return HFBackend(str(tiny_checkpoints["qwen2_5_vl"]), device="cpu")


def _fns(demo):
    return {fn.name: fn.fn for fn in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns)}


def test_ab_mode_sends_each_message_to_both_and_keeps_two_histories(hf_backend, second_backend, image_file):
    app = demo_mod.ChatApp(hf_backend, compare=second_backend)
    _, session, chat_a, chat_b = app.add_user(
        {"text": "What colour is it?", "files": [image_file]}, demo_mod.ChatSession()
    )
    histories = [c.history for c in session.columns]
    assert histories[0] == histories[1] and len(chat_a) == len(chat_b) == 3  # image, its cost note, text
    assert "visual tokens" in chat_a[1]["content"] and chat_a[1]["content"] != chat_b[1]["content"]  # own costs
    for update in app.answer(session, "", 12, 0.0, 1.0, 0, 1.0, -1):
        pass
    answers = [c.history[-1]["content"][0]["text"] for c in update[0].columns]
    # Each column is its own model answering the very request the single-model demo would send it.
    messages = [{"role": "user", "content": [{"type": "image", "image": image_file},
                                             {"type": "text", "text": "What colour is it?"}]}]  # fmt: skip
    gen = GenerationSettings(max_new_tokens=12)
    for backend, answer in zip((hf_backend, second_backend), answers):
        assert answer == "".join(backend.stream(messages, gen, threading.Event()))
    assert answers[0] != answers[1]  # two different random models
    # Regenerate drops the last answer of both columns; the histories stay separate.
    session, *chats = app.regenerate(session)
    assert [c.history[-1]["role"] for c in session.columns] == ["user", "user"]
    assert all(c[-1]["role"] == "user" for c in chats)


def test_stream_never_sets_the_callers_stop_event(hf_backend, image_file):
    # Shared events (A/B columns, a UI's Stop) must not be tripped by a generation that simply finished.
    messages = [{"role": "user", "content": [{"type": "image", "image": image_file}, {"type": "text", "text": "Hi"}]}]
    stop = threading.Event()
    assert list(hf_backend.stream(messages, GenerationSettings(max_new_tokens=4), stop))
    assert not stop.is_set()
    stop.set()  # a stop set by the caller before the start: at most the first token comes out
    assert len(list(hf_backend.stream(messages, GenerationSettings(max_new_tokens=50), stop))) <= 1


def test_ab_command_line_builds_the_second_column(tiny_checkpoints):
    ckpt, other = str(tiny_checkpoints["qwen3_vl"]), str(tiny_checkpoints["qwen2_5_vl"])
    from qwenvl.inference import load_backend

    args = demo_mod.parse_args(["-c", ckpt, "--cpu-only", "--compare-checkpoint", other])
    second = load_backend(BackendConfig.from_args(args).compared(args.compare_checkpoint, args.compare_backend))
    assert isinstance(second, HFBackend) and second.family.model_type == "qwen2_5_vl"
    assert BackendConfig.from_args(demo_mod.parse_args(["-c", ckpt])).compared(None, None) is None


@pytest.mark.browser
def test_browser_ab_mode_shows_two_columns(hf_backend, second_backend, browser, image_file, artifacts_dir):
    with _demo_page(browser, hf_backend, demo_mod.DemoConfig(default_max_new_tokens=40), compare=second_backend) as page:
        _ask(page, "What colour is it?", image_file)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both columns answered (the bot messages appear when streaming starts)
            a = page.locator("#chatbot [data-testid=bot]").all_inner_texts()
            b = page.locator("#chatbot_b [data-testid=bot]").all_inner_texts()
            if a and b and all(a + b):
                break
            time.sleep(0.1)
        _wait_idle(page)
        a = page.locator("#chatbot [data-testid=bot]").all_inner_texts()
        b = page.locator("#chatbot_b [data-testid=bot]").all_inner_texts()
        assert len(a) == 1 and len(b) == 1 and a[0] and b[0] and a != b
        assert page.locator("#chatbot [data-testid=user] img").count() == 1
        assert page.locator("#chatbot_b [data-testid=user] img").count() == 1
        html = page.content()
        assert (
            f"A: {hf_backend.label} (hf, qwen3_vl)" in html and f"B: {second_backend.label} (hf, qwen2_5_vl)" in html
        )
        assert str(Path(hf_backend.checkpoint).parent) not in html  # no server paths, only the checkpoints' names
        assert page.locator("#stop_a").is_disabled() and page.locator("#stop_b").is_disabled()
        page.screenshot(path=str(artifacts_dir / "demo_ab.png"), full_page=True)
        page.locator("#clear_btn").click()
        time.sleep(1.5)
        assert page.locator("[data-testid=bot]").count() == 0
        url = page.url
        page.close()
        # A phone-sized screen: the two columns stack and the input stays in view without scrolling.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(url)
        phone.locator("#chat_input textarea").wait_for(timeout=10000)
        phone.screenshot(path=str(artifacts_dir / "demo_ab_390px.png"), full_page=True)
        box = phone.locator("#chat_input").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 844, box
        phone.close()


# ----------------------------------------------------------------------------------------------- openai backend


@pytest.mark.slow
def test_openai_backend_against_transformers_serve(transformers_server, tiny_checkpoints, image_file, hf_backend):
    base, model = transformers_server
    backend = OpenAIBackend(base, model=model)  # the family from the served checkpoint, not the name
    assert backend.family.model_type == "qwen3_vl"
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image_file}, {"type": "text", "text": "Colour?"}]}
    ]
    gen = GenerationSettings(max_new_tokens=8)
    pieces = list(backend.stream(messages, gen, threading.Event()))
    assert "".join(pieces)
    # The same resize on both backends: the hf backend's answer to the same request matches.
    assert "".join(pieces).strip() == "".join(hf_backend.stream(messages, gen, threading.Event())).strip()


# ----------------------------------------------------------------------------------------------- hostile input


class _CannedBackend:
    """A backend whose answer is fixed text (the UI is under test here, not the model)."""

    name = "canned"

    def __init__(self, answer: str, family) -> None:
        from qwenvl.model.budget import INFERENCE_BUDGET

        self.answer, self.family, self.checkpoint, self.label = answer, family, None, "canned"
        self.budget, self.budget_source = INFERENCE_BUDGET, "qwen_vl_utils defaults"

    def stream(self, messages, gen, stop=None):
        for word in self.answer.split(" "):
            if stop is not None and stop.is_set():
                return
            time.sleep(0.02)
            yield word + " "


@contextlib.contextmanager
def _demo_page(browser, backend, config=None, compare=None):
    """The demo around ``backend`` served on a free local port, and a browser page opened on it; closed after."""
    port = _free_port()
    demo = demo_mod.build_demo(backend, config, compare=compare)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}")
        yield page
    finally:
        demo.close()


def _handlers(demo) -> dict:
    return {fn.name: fn for fn in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns)}


def test_markdown_images_in_answers_are_links():
    shown = safe_markdown("look ![secret](http://127.0.0.1:9/leak-md?secret=abc) and [a](http://x)")
    assert "![" not in shown and "[secret](http://127.0.0.1:9/leak-md?secret=abc)" in shown


def test_reasoning_is_split_escaped_and_collapsed():
    # Qwen thinking models: <think>...</think> (or only the closing tag when the template opened it).
    for raw in ("<think>a <b>step</b></think>The answer: 4", "a <b>step</b></think>\nThe answer: 4"):
        reasoning, answer = demo_mod.render_answer(ColumnAnswer(raw, "stop", done=True))
        assert reasoning["metadata"]["title"] == "Reasoning" and reasoning["metadata"]["status"] == "done"
        assert reasoning["content"] == "a &lt;b&gt;step&lt;/b&gt;" and answer["content"] == "The answer: 4"
    streaming = demo_mod.render_answer(ColumnAnswer("<think>still going"))
    assert len(streaming) == 1 and streaming[0]["metadata"]["title"] == "Thinking..."
    assert demo_mod.render_answer(ColumnAnswer("plain", "stop", done=True)) == [
        {"role": "assistant", "content": "plain"}
    ]
    # A template that opened the block itself (Qwen3.5): what comes before any </think> is reasoning, not answer.
    opened = demo_mod.render_answer(ColumnAnswer("let me count the corners"), opened=True)
    assert len(opened) == 1 and opened[0]["metadata"]["title"] == "Thinking..."
    assert "corners" in opened[0]["content"]


def test_sampling_starts_from_the_checkpoints_generation_config(tiny_checkpoints, tmp_path, image_file):
    import json

    ckpt = tmp_path / "sampled"
    shutil.copytree(tiny_checkpoints["qwen3_vl"], ckpt)
    config = json.loads((ckpt / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    (ckpt / "generation_config.json").write_text(json.dumps(config))
    app = demo_mod.ChatApp(HFBackend(str(ckpt), device="cpu"))
    demo = app.build()
    sliders = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}
    for name, value in dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05).items():
        assert sliders[name]["value"] == value and "generation_config.json" in sliders[name]["info"], name
    assert "default" in sliders["max_new_tokens"]["info"]  # not in this config: the demo's own default
    # A fixed seed reproduces a sampled answer.
    answers = []
    for _ in range(2):
        _, session, _ = app.add_user({"text": "Colour?", "files": [image_file]}, demo_mod.ChatSession())
        for update in app.answer(session, "", 16, 1.5, 1.0, 0, 1.0, 1234):
            pass
        answers.append(update[0].columns[0].history[-1]["content"][0]["text"])
    assert answers[0] == answers[1] and answers[0]


def test_openai_family_comes_from_config_or_flag_never_the_name(tiny_checkpoints):
    from qwenvl.cli import UserError

    url = "http://127.0.0.1:9/v1"  # never contacted: check=False
    local = str(tiny_checkpoints["qwen2_5_vl"])
    # A local copy of the served checkpoint: its config decides, whatever the server calls the model.
    assert OpenAIBackend(url, model="qwen3-vl-served", checkpoint=local, check=False).family.model_type == "qwen2_5_vl"
    with pytest.raises(UserError, match="pass --family"):
        OpenAIBackend(url, model="Qwen3-VL-but-unknown-here", check=False)
    assert OpenAIBackend(url, model="anything", family="qwen3_vl", check=False).family.model_type == "qwen3_vl"


def test_hostile_uploads_are_refused_in_one_line_and_the_session_goes_on(hf_backend, tmp_path, image_file):
    config = demo_mod.DemoConfig(max_upload_megapixels=1.0, max_message_megapixels=1.5)
    app = demo_mod.ChatApp(hf_backend, config)
    handler = _handlers(app.build())["add_user"]
    assert handler.queue is not False and handler.concurrency_limit == 2  # decoded inside the queue
    bomb = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(bomb)  # 110 KB, 900 megapixels
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1500, 1000)).save(wide)  # 1.5 megapixels: over the per-image cap
    small = [tmp_path / f"s{i}.png" for i in range(3)]
    for path in small:
        Image.new("RGB", (1000, 600), (10, 200, 10)).save(path)  # 0.6 megapixels each; the third tops 1.5
    files = [str(bomb), str(wide), *map(str, small)]
    box, session, chat = app.add_user({"text": "hi", "files": files}, demo_mod.ChatSession())
    history = session.columns[0].history
    refusals = [m["content"] for m in chat if m["role"] == "assistant"]
    assert len(refusals) == 3
    assert chat[-4]["content"] == "hi"  # the question first, then what was refused of it
    assert "bomb.png" in refusals[0] and "too large to decode safely" in refusals[0]
    assert "MAX_IMAGE_PIXELS" not in refusals[0] and "image decoder's limit of 179 megapixels" in refusals[0]
    assert "wide.png: 2 megapixels is over the 1 megapixel limit per image" in refusals[1]
    assert "s2.png" in refusals[2] and "would exceed 1.5 megapixels" in refusals[2]
    assert all(str(tmp_path) not in r and "\n" not in r for r in refusals)  # no server paths, one line each
    assert [item["type"] for item in history[0]["content"]] == ["image", "image", "text"]  # the rest went through
    assert box.interactive is False  # (re-enabled by the chain after the answer, as for any message)
    # Uploads are readable by the server user only, and Clear deletes this session's files.
    assert oct(os.stat(small[0]).st_mode & 0o777) == "0o600"
    app.clear(session)
    assert not any(Path(f).exists() for f in files)
    assert all(not c.history and not c.display for c in session.columns)


def test_unreachable_openai_server_is_named_at_start(tiny_checkpoints, capsys):
    port = _free_port()
    args = demo_mod.parse_args(["-c", str(tiny_checkpoints["qwen3_vl"]), "--backend", "openai",
                                "--api-base", f"http://127.0.0.1:{port}/v1"])  # fmt: skip
    assert demo_mod.main(args=args) == 2  # before any page is served
    err = capsys.readouterr().err
    assert f"cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1" in err and "--api-base" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.browser
def test_browser_never_fetches_images_named_in_answers(browser, hf_backend):
    import http.server

    hits: list[str] = []

    class Trap(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    trap = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{trap.server_address[1]}"
    answer = f"Here: ![chart]({url}/leak-md?secret=abc) and <img src='{url}/leak-html'> done"
    port = _free_port()
    demo = demo_mod.build_demo(_CannedBackend(answer, hf_backend.family))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}")
        _ask(page, "Summarise the document.")
        page.get_by_text("done").first.wait_for(timeout=30000)
        time.sleep(1.0)
        assert hits == [], f"the browser fetched {hits}"
        assert page.locator("[data-testid=bot] a").count() >= 1  # shown as a link instead
    finally:
        demo.close()
        trap.shutdown()


@pytest.mark.browser
def test_browser_reasoning_is_collapsed(browser, hf_backend, artifacts_dir):
    answer = "<think>first I count the corners, secret musings</think>The shape has four corners."
    with _demo_page(browser, _CannedBackend(answer, hf_backend.family)) as page:
        _ask(page, "How many corners?")
        page.get_by_text("four corners.").first.wait_for(timeout=30000)
        _wait_idle(page)
        assert page.get_by_text("Reasoning").first.is_visible()
        assert not page.get_by_text("secret musings").first.is_visible()  # collapsed
        assert "<think>" not in page.locator("#chatbot").inner_text()
        page.screenshot(path=str(artifacts_dir / "demo_reasoning_collapsed.png"), full_page=True)
        page.get_by_text("Reasoning").first.click()
        page.get_by_text("secret musings").first.wait_for(state="visible", timeout=5000)
        page.close()


LONG_ANSWER = " ".join(f"word{i}" for i in range(1500))  # 1500 pieces, 20 ms apart: 30 s unless stopped


def _text_len(page, selector: str) -> int:
    return len("".join(page.locator(f"{selector} [data-testid=bot]").all_inner_texts()))


@pytest.mark.browser
def test_browser_stop_and_clear_cut_a_running_answer(browser, hf_backend, artifacts_dir):
    with _demo_page(browser, _CannedBackend(LONG_ANSWER, hf_backend.family)) as page:
        page.locator("#chat_input textarea").wait_for(timeout=10000)
        assert page.locator("#stop_btn").is_disabled()  # nothing runs
        _ask(page, "Talk for a long time.")
        page.wait_for_function("() => !document.querySelector('#stop_btn').disabled", timeout=10000)
        page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('word20')", timeout=10000)
        page.locator("#stop_btn").click()
        _wait_idle(page, 10)
        stopped = _text_len(page, "#chatbot")
        time.sleep(1.0)
        assert _text_len(page, "#chatbot") == stopped, "the answer kept growing after Stop"
        assert 0 < stopped < len(LONG_ANSWER) // 2  # cut short, and the part so far kept
        assert page.locator("#stop_btn").is_disabled() and page.locator("#chat_input textarea").is_editable()

        # Clear while an answer runs: the chat is emptied and stays empty (no late update refills it).
        _ask(page, "Again, please.")
        page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length >= 2", timeout=10000)
        page.locator("#clear_btn").click()
        time.sleep(1.5)
        assert _bot_texts(page) == [] and page.locator("[data-testid=user]").count() == 0
        assert page.locator("#stop_btn").is_disabled()
        page.close()


@pytest.mark.browser
def test_browser_ab_columns_stop_separately(browser, hf_backend, second_backend):
    with _demo_page(browser, _CannedBackend(LONG_ANSWER, hf_backend.family), compare=_CannedBackend(" ".join(LONG_ANSWER.split()[:120]), second_backend.family)) as page:
        page.locator("#chat_input textarea").wait_for(timeout=10000)
        assert page.locator("#stop_a").is_disabled() and page.locator("#stop_b").is_disabled()
        _ask(page, "Both of you, talk.")
        page.wait_for_function("() => !document.querySelector('#stop_a').disabled", timeout=10000)
        page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('word10')", timeout=10000)
        page.locator("#stop_a").click()  # A stops; B goes on to the end of its 120 words
        _wait_idle(page, 30)
        a, b = (
            page.locator("#chatbot [data-testid=bot]").inner_text(),
            page.locator("#chatbot_b [data-testid=bot]").inner_text(),
        )
        assert "word119" in b and "word119" not in a and "word10" in a
        page.close()


def test_demo_answers_on_a_qwen3_5_checkpoint(tiny_checkpoints, image_file):
    """The demo's handlers on a tiny Qwen3.5 (linear attention, a template that opens <think> in the prompt): the
    answer streams into the history and is what the backend alone generates for the same request."""
    backend = _demo_backend(["-c", str(tiny_checkpoints["qwen3_5"]), "--cpu-only"])
    assert backend.family.model_type == "qwen3_5" and backend.family.thinks_by_default
    app = demo_mod.ChatApp(backend)
    _, session, chat = app.add_user({"text": "What colour is it?", "files": [image_file]}, demo_mod.ChatSession())
    for update in app.answer(session, "", 10, 0.0, 1.0, 0, 1.0, -1):
        pass
    answer = update[0].columns[0].history[-1]["content"][0]["text"]
    messages = [{"role": "user", "content": [{"type": "image", "image": image_file},
                                             {"type": "text", "text": "What colour is it?"}]}]  # fmt: skip
    assert answer and answer == "".join(
        backend.stream(messages, GenerationSettings(max_new_tokens=10), threading.Event())
    )


# ----------------------------------------------------------------------------------------------- issue 28


def _openai_stream(server_url: str, **kwargs) -> tuple[str, object]:
    backend = OpenAIBackend(server_url, model="served-model", family="qwen3_vl", check=False, **kwargs)
    stream = backend.stream([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], GenerationSettings())
    text = ""
    while True:
        try:
            text += next(stream)
        except StopIteration as end:
            return text, end.value


def test_openai_stream_says_how_it_ended():
    from tests.evaluation.chat_server import Stream, chat_server

    replies = iter(
        [
            Stream(["a", "b"]),
            Stream(["a", "b"], finish="length"),
            Stream(["a", "b"], finish=None, done=False),  # neither a finish reason nor [DONE]: cut off
        ]
    )
    with chat_server(lambda body: next(replies)) as server:
        assert _openai_stream(server.url) == ("a b", "stop")
        assert _openai_stream(server.url) == ("a b", "length")
        assert _openai_stream(server.url) == ("a b", "cut_off")


def test_openai_stream_dropped_midway_names_the_drop_not_an_unreachable_server():
    from qwenvl.inference.openai_backend import ServerError
    from tests.evaluation.chat_server import Stream, chat_server

    with chat_server(lambda body: Stream(["a", "b"], drop=True)) as server:
        with pytest.raises(ServerError, match="dropped the connection while streaming") as error:
            _openai_stream(server.url)
        assert "cannot reach" not in str(error.value)


def test_answers_cut_by_the_token_limit_are_marked_and_partial_answers_kept(hf_backend, image_file):
    app = demo_mod.ChatApp(hf_backend)
    _, session, _ = app.add_user({"text": "Colour?", "files": [image_file]}, demo_mod.ChatSession())
    for update in app.answer(session, "", 3, 0.0, 1.0, 0, 1.0, -1):
        pass
    display, history = update[0].columns[0].display, update[0].columns[0].history
    assert display[-1]["content"].endswith("\n\n" + demo_mod.ENDINGS["length"])
    assert history[-1]["role"] == "assistant" and history[-1]["content"][0]["text"]  # kept for the next turn


def test_boxes_follow_each_familys_convention(tmp_path):
    """The answer's box around a square at 100..300 px of a 640x480 image, in each family's markup and coordinates,
    lands on the square (expected values worked by hand: Qwen2.5-VL's resize of 640x480 under qwen_vl_utils'
    defaults is 644x476, the nearest multiples of 28)."""
    from qwenvl.model.budget import INFERENCE_BUDGET
    from qwenvl.model.families import get_family
    from qwenvl.model.grounding import answer_boxes, draw_boxes

    image = tmp_path / "square.png"
    Image.new("RGB", (640, 480), (255, 255, 255)).save(image)
    answers = {
        "qwen3_vl": '{"bbox_2d": [156.25, 208.33, 468.75, 625], "label": "square"}',
        "qwen2_5_vl": '{"bbox_2d": [100.625, 99.17, 301.875, 297.5], "label": "square"}',
        "qwen2_vl": "<|object_ref_start|>square<|object_ref_end|><|box_start|>(156,208),(469,625)<|box_end|>",
    }
    for name, answer in answers.items():
        (box,) = answer_boxes(answer, get_family(name), (640, 480), INFERENCE_BUDGET)
        assert [round(v) for v in (box.x1, box.y1, box.x2, box.y2)] == [100, 100, 300, 300], name
        assert box.label == "square"
        drawn = Image.open(draw_boxes(str(image), [box], str(tmp_path / f"{name}.png")))
        assert drawn.getpixel((101, 200)) == (255, 0, 0) and drawn.getpixel((60, 200)) == (255, 255, 255), name


def test_one_reasoning_split_for_demo_and_evaluations():
    from qwenvl.inference.base import split_reasoning, strip_reasoning

    # The evaluations and the demo cut at the LAST </think>.
    assert strip_reasoning("<think>a</think>b</think> final") == "final"
    assert split_reasoning("<think>a</think>b</think> final").answer == " final".lstrip()
    # The template opened the block (Qwen3.5): before any </think>, all is reasoning still going on.
    assert split_reasoning("counting corners", opened=True) == ("counting corners", "", False)
    assert strip_reasoning("counting corners", opened=True) == ""
    assert split_reasoning("plain answer") == (None, "plain answer", False)


def test_errors_never_show_server_paths():
    from qwenvl.inference.chat import short_error

    error = ValueError("image file not found: '/tmp/gradio/0a1b2c/red.png'; and /srv/x/y.mp4 too")
    assert short_error(error) == "image file not found: 'red.png'; and y.mp4 too"


class _BoxBackend(_CannedBackend):
    """A canned answer drawing a box on the user's image; reads the image like a real backend does."""

    def stream(self, messages, gen, stop=None):
        from qwen_vl_utils.image_io import open_image

        with open_image(demo_mod.last_image(messages)):
            pass  # a missing upload fails here as it would in a real backend
        yield from super().stream(messages, gen, stop)


def _src_path(page, selector: str) -> str:
    from urllib.parse import unquote

    src = page.locator(selector).last.get_attribute("src")
    return unquote(src.split("file=", 1)[1])


@pytest.mark.browser
def test_browser_two_sessions_same_upload_and_unload_cleans_up(browser, hf_backend, image_file):
    answer = 'Found: {"bbox_2d": [100, 100, 600, 600], "label": "red"} done.'
    port = _free_port()
    demo = demo_mod.build_demo(_BoxBackend(answer, hf_backend.family), demo_mod.DemoConfig(concurrency=2))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    contexts = [browser.new_context(), browser.new_context()]
    try:
        a, b = (c.new_page() for c in contexts)
        for page in (a, b):
            page.goto(f"http://127.0.0.1:{port}")
            _ask(page, "Where is it?", image_file)  # the same bytes and name: Gradio stores both at one path
            _wait_idle(page)
        upload = _src_path(b, "#chatbot [data-testid=user] img")
        assert upload == _src_path(a, "#chatbot [data-testid=user] img") and Path(upload).exists()
        drawing = _src_path(b, "#chatbot [data-testid=bot] img")
        assert Path(drawing).exists() and drawing != upload
        a.locator("#clear_btn").click()
        a.wait_for_function("() => !document.querySelector('#chatbot [data-testid=user]')", timeout=10000)
        assert Path(upload).exists()  # A's Clear leaves B's upload alone
        _ask(b, "And again?")
        _wait_idle(b)
        texts = " ".join(_bot_texts(b))
        assert "Error" not in texts and texts.count("done.") == 2, texts
        assert "/tmp" not in b.locator("#chatbot").inner_text()
        contexts.pop().close()  # B closes its tab: Gradio's unload deletes what B held (the upload, the drawings)
        deadline = time.monotonic() + 30
        while (Path(upload).exists() or Path(drawing).exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(upload).exists() and not Path(drawing).exists()
    finally:
        for c in contexts:
            c.close()
        demo.close()


@pytest.mark.browser
def test_browser_stop_answers_at_once_against_a_hung_server(browser, hf_backend):
    from tests.evaluation.chat_server import Hang, chat_server, http_error

    def reply(body):
        text = body["messages"][-1]["content"][-1]["text"]
        return http_error(500, "the model crashed") if "fail" in text else Hang()

    with chat_server(reply) as server:
        backend = OpenAIBackend(server.url, model="served-model", family="qwen3_vl", stream_timeout=5)
        port = _free_port()
        demo = demo_mod.build_demo(backend, demo_mod.DemoConfig(concurrency=1))
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
        contexts = [browser.new_context(), browser.new_context()]
        try:
            a, b = (c.new_page() for c in contexts)
            for page in (a, b):
                page.goto(f"http://127.0.0.1:{port}")
                page.locator("#chat_input textarea").wait_for(timeout=10000)
                assert page.locator("#regen_btn").is_disabled()  # nothing to regenerate yet
            _ask(a, "Question one")
            deadline = time.monotonic() + 20
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(server.requests) == 1
            _ask(b, "Question two")  # waits in the queue behind A (one generation at a time)
            b.wait_for_function("() => !document.querySelector('#stop_btn').disabled", timeout=10000)
            b.locator("#stop_btn").click()  # stopped while queued: it must never reach the server
            b.wait_for_function("() => document.querySelector('#stop_btn').disabled", timeout=5000)  # noted
            a.locator("#stop_btn").click()
            # The answer ends at once (the second it takes on the server is measured without a browser, in
            # test_stop_ends_an_answer_whose_server_never_answers_within_a_second; here the browser and the server
            # share two busy cores, so the page gets a few seconds to show it).
            a.wait_for_function("() => document.querySelector('#stop_btn').disabled", timeout=5000)
            a.get_by_text("(stopped before the model answered)").wait_for(timeout=5000)
            _wait_idle(a, 5)
            b.get_by_text("(stopped before the model answered)").wait_for(timeout=10000)
            _wait_idle(b, 5)
            assert len(server.requests) == 1  # B's stopped turn was never sent
            # The queue is free: a new question goes out at once; the hung request was abandoned within its timeout.
            _ask(a, "Please fail")
            a.get_by_text("HTTP 500").first.wait_for(timeout=8000)
            assert "the model crashed" in a.locator("#chatbot").inner_text()
            deadline = time.monotonic() + 15
            while not server.abandoned and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.abandoned, "the hung request was never given up"
        finally:
            for c in contexts:
                c.close()
            demo.close()


@pytest.mark.browser
def test_browser_code_shows_as_written_and_user_markup_fetches_nothing(browser, hf_backend):
    import http.server

    hits: list[str] = []

    class Trap(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    trap = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{trap.server_address[1]}"
    answer = 'Inline `<div class="a">Hi & bye</div>` then\n```html\n<p>x &amp; y</p>\n```\nend <b>of</b> it, final.'
    port = _free_port()
    demo = demo_mod.build_demo(_CannedBackend(answer, hf_backend.family))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}")
        question = f"see ![x]({url}/leak-user-md) and <img src='{url}/leak-user-html'> ok"
        page.locator("#chat_input textarea").fill(question)
        page.locator("#chat_input textarea").press("Enter")
        page.get_by_text("final.").first.wait_for(timeout=30000)
        _wait_idle(page)
        codes = page.locator("#chatbot [data-testid=bot] code").all_inner_texts()
        assert '<div class="a">Hi & bye</div>' in codes and any("<p>x &amp; y</p>" in c for c in codes), codes
        bot = page.locator("#chatbot [data-testid=bot]").inner_text()
        assert "&lt;" not in bot and "<b>of</b>" in bot  # raw HTML outside code shown as text, not rendered
        user = page.locator("#chatbot [data-testid=user]").inner_text()
        assert f"<img src='{url}/leak-user-html'>" in user
        assert page.locator("#chatbot [data-testid=user] img").count() == 0
        page.reload()  # nothing arrives later either (a fetch from the first render would have been recorded)
        assert hits == [], f"the browser fetched {hits}"
    finally:
        demo.close()
        trap.shutdown()


@pytest.mark.browser
def test_browser_long_answer_streams_without_freezing(browser, hf_backend):
    class Fast(_CannedBackend):
        def stream(self, messages, gen, stop=None):
            for i in range(2000):  # 20,000 characters, as fast as the UI takes them
                if stop is not None and stop.is_set():
                    return
                yield f"w{i:05d} ab "

    with _demo_page(browser, Fast("", hf_backend.family)) as page:
        page.locator("#chat_input textarea").wait_for(timeout=10000)
        # The page's responsiveness: the longest delay of a 50 ms timer while the answer streams.
        page.evaluate(
            """() => { window.__lag = 0; let last = performance.now();
                const tick = () => { const now = performance.now(); window.__lag = Math.max(window.__lag, now - last - 50);
                                     last = now; setTimeout(tick, 50); };
                setTimeout(tick, 50); }"""
        )
        _ask(page, "Write a lot.")
        page.get_by_text("w01999").first.wait_for(timeout=120000)
        _wait_idle(page, 30)
        lag = page.evaluate("() => window.__lag")
        shown = "".join(page.locator("#chatbot [data-testid=bot]").all_inner_texts())
        assert all(f"w{i:05d} ab" in shown for i in range(2000))
        assert lag < 500, f"the page froze for {lag:.0f} ms"


@pytest.mark.browser
def test_browser_boxes_drawn_in_each_familys_convention(browser, tmp_path):
    """Qwen2.5-VL (JSON, resized-image pixels) and Qwen2-VL (<|box_start|>, 0-1000) answers, side by side, both
    about a square at 100..300 px of a 640x480 image: each drawing's box edge lies on the square (Qwen2.5-VL's
    resize of 640x480 is 644x476, worked by hand). Qwen3-VL's 0-1000 JSON is drawn in the two-session test."""
    import io

    from qwenvl.model.families import get_family

    image = tmp_path / "square.png"
    picture = Image.new("RGB", (640, 480), (255, 255, 255))
    picture.paste((0, 0, 200), (100, 100, 300, 300))
    picture.save(image)
    qwen25 = _CannedBackend('{"bbox_2d": [100.625, 99.17, 301.875, 297.5], "label": "sq"}', get_family("qwen2_5_vl"))
    qwen2 = _CannedBackend("<|box_start|>(156,208),(469,625)<|box_end|>", get_family("qwen2_vl"))
    with _demo_page(browser, qwen25, compare=qwen2) as page:
        _ask(page, "Where is the square?", str(image))
        _wait_idle(page)
        for chat in ("#chatbot", "#chatbot_b"):
            img = page.locator(f"{chat} [data-testid=bot] img").last
            img.wait_for(timeout=10000)
            src = img.get_attribute("src")
            url = src if src.startswith("http") else page.url.rstrip("/") + src
            drawn = Image.open(io.BytesIO(page.request.get(url).body())).convert("RGB")
            assert drawn.size == (640, 480)
            assert drawn.getpixel((101, 200)) == (255, 0, 0) and drawn.getpixel((200, 101)) == (255, 0, 0), chat
            assert drawn.getpixel((64, 200)) == (255, 255, 255), chat  # where a 0-1000 reading would have drawn
        page.close()


def test_qwen2_vl_answers_keep_their_box_tokens(tiny_checkpoints):
    """Qwen2-VL writes boxes with special tokens; decoding keeps those (and only those) so the demo can draw them."""
    backend = HFBackend(str(tiny_checkpoints["qwen2_vl"]), device="cpu")
    tokenizer = backend.processor.tokenizer
    box = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    ids = tokenizer(box + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert backend.decode(ids) == box
    assert tokenizer.decode(ids, skip_special_tokens=True) == "cat(1,2),(3,4)"  # what plain decoding would keep
    other = HFBackend(str(tiny_checkpoints["qwen3_vl"]), device="cpu")  # JSON boxes: special tokens all dropped
    assert other.decode(other.processor.tokenizer("a<|im_end|>", add_special_tokens=False)["input_ids"]) == "a"


@pytest.mark.browser
def test_browser_cut_and_dropped_streams_are_marked_and_kept(browser):
    from tests.evaluation.chat_server import Stream, chat_server

    def reply(body):
        text = body["messages"][-1]["content"][-1]["text"]
        if "unfinished" in text:
            return Stream(["partial", "words"], finish=None, done=False)  # no finish reason, no [DONE]
        return Stream(["half", "way"], drop=True)  # the connection drops mid-stream

    with chat_server(reply) as server:
        backend = OpenAIBackend(server.url, model="served-model", family="qwen3_vl")
        with _demo_page(browser, backend) as page:
            _ask(page, "An unfinished answer")
            page.get_by_text("the server ended the stream before the answer was complete").wait_for(timeout=20000)
            _wait_idle(page)
            _ask(page, "Now drop")
            page.get_by_text("dropped the connection while streaming").wait_for(timeout=20000)
            _wait_idle(page)
            chat = page.locator("#chatbot").inner_text()
            assert "half way" in chat and "cannot reach" not in chat
            _ask(page, "Go on")  # both partial answers went into the model's history, as shown
            page.get_by_text("dropped the connection while streaming").nth(1).wait_for(timeout=20000)
            answers = [m["content"] for m in server.requests[-1]["messages"] if m["role"] == "assistant"]
            assert [a[0]["text"] for a in answers] == ["partial words", "half way"]
            page.close()


def test_an_answer_running_when_its_session_ends_sends_no_update_and_holds_no_file():
    from qwenvl.inference.chat import Generations

    generations = Generations()
    generations.queue("s")
    stops, epoch = generations.start("s", 1)
    generations.abandon("s")  # the tab closed (Gradio's unload) ...
    generations.forget("s")  # ... and its bookkeeping is dropped
    assert all(stop.is_set() for stop in stops) and not generations.current("s", epoch)


def test_safe_markdown_keeps_code_and_neutralises_markup_around_it():
    from qwenvl.inference.markup import display_chunks

    assert safe_markdown('x `<div class="a">Hi & bye</div>` <b>') == 'x `<div class="a">Hi & bye</div>` &lt;b&gt;'
    assert safe_markdown("```html\n<p>&amp;</p>\n```\n<i>") == "```html\n<p>&amp;</p>\n```\n&lt;i&gt;"
    # Where a renderer would not see code, nothing is left raw: an escaped backtick, a span across lines, a table
    # row's pipes inside a span, an image whose text holds code.
    assert safe_markdown("\\`<img src=x>`") == "\\`&lt;img src=x&gt;`"
    assert safe_markdown("`a\n<img src=x>`") == "`a\n&lt;img src=x&gt;`"
    assert safe_markdown("| `a | <img src=x> | b` |") == "| `a | &lt;img src=x&gt; | b` |"
    assert safe_markdown("![`a`](http://h/l) ![r][ref]") == "[`a`](http://h/l) [r][ref]"
    # Long answers in pieces: joined back they are the text, and the pieces already shown never change.
    text = "".join(f"w{i:05d} ab " for i in range(2000)) + "\n\n```\n" + "x\n" * 3000 + "```\nend"
    pieces = display_chunks(text)
    assert "".join(pieces) == text and max(map(len, pieces[:-2])) <= 3000
    assert display_chunks(text[:15000])[:-1] == pieces[: len(display_chunks(text[:15000])) - 1]
    assert any("```\n" + "x\n" * 3000 + "```" in p for p in pieces)  # a fenced block is never cut


def test_stop_ends_an_answer_whose_server_never_answers_within_a_second():
    from tests.evaluation.chat_server import Hang, chat_server

    with chat_server(lambda body: Hang()) as server:
        backend = OpenAIBackend(server.url, model="served-model", family="qwen3_vl", stream_timeout=5)
        app = demo_mod.ChatApp(backend)
        _, session, _ = app.add_user({"text": "Hello?", "files": []}, demo_mod.ChatSession())
        ended: list[float] = []
        updates: list = []

        def run() -> None:
            updates.extend(app.answer(session, "", 16, 0.0, 1.0, 0, 1.0, -1))
            ended.append(time.monotonic())

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests and not ended  # the request is out, and the server says nothing
        stopped = time.monotonic()
        app.stop()  # the Stop button's handler
        thread.join(10)
        assert ended and ended[0] - stopped < 1.0, "Stop did not end the answer within a second"
        assert updates[-1][1][-1]["content"] == "*(stopped before the model answered)*"
        deadline = time.monotonic() + 15  # the abandoned request closes within its stream timeout (5 s)
        while not server.abandoned and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.abandoned


def test_qwen2_vl_boxes_through_an_openai_server_are_drawn(tiny_checkpoints, tmp_path):
    """A server decodes Qwen2-VL's box tokens only when asked (vLLM and SGLang skip special tokens by default, as
    this fake server does): the openai backend asks for them, keeps the grounding ones and drops the rest, so the
    demo draws the box around the square at 100..300 px of a 640x480 image, streamed or not."""
    from tests.evaluation.chat_server import Stream, chat_server

    image = tmp_path / "square.png"
    picture = Image.new("RGB", (640, 480), (255, 255, 255))
    picture.paste((220, 30, 30), (100, 100, 300, 300))
    picture.save(image)
    tokens = ["<|object_ref_start|>square<|object_ref_end|>", "<|box_start|>(156,208),(469,625)<|box_end|>",
              "<|im_end|>"]  # fmt: skip

    def reply(body):
        kept = tokens if body.get("skip_special_tokens") is False else ["square", "(156,208),(469,625)"]
        return Stream(["Here:", *kept]) if body.get("stream") else " ".join(["Here:", *kept])

    with chat_server(reply) as server:
        backend = _demo_backend(["-c", str(tiny_checkpoints["qwen2_vl"]), "--backend", "openai", "--api-base",
                                 server.url])  # fmt: skip
        assert isinstance(backend, OpenAIBackend) and backend.family.box_markup == "box_tokens"
        app = demo_mod.ChatApp(backend)
        _, session, _ = app.add_user({"text": "Where is the square?", "files": [str(image)]}, demo_mod.ChatSession())
        for update in app.answer(session, "", 20, 0.0, 1.0, 0, 1.0, -1):
            pass
        (whole,) = backend.generate([session.columns[0].history[:1]])  # not streamed: the same text
    answer = session.columns[0].history[-1]["content"][0]["text"]
    assert answer.endswith("<|object_ref_start|>square<|object_ref_end|> <|box_start|>(156,208),(469,625)<|box_end|> ")
    assert str(whole).endswith("<|box_start|>(156,208),(469,625)<|box_end|> ") and "<|im_end|>" not in str(whole)
    display = session.columns[0].display
    (drawing,) = [m["content"]["path"] for m in display if m["role"] == "assistant" and isinstance(m["content"], dict)]
    drawn = Image.open(drawing).convert("RGB")
    assert drawn.size == (640, 480)
    # The outline (pure red, 3 px) lies on the square's edges; inside and outside keep their colours.
    assert [drawn.getpixel(xy) for xy in ((101, 200), (298, 200), (200, 101), (200, 298))] == [(255, 0, 0)] * 4
    assert drawn.getpixel((200, 200)) == (220, 30, 30) and drawn.getpixel((90, 200)) == (255, 255, 255)
