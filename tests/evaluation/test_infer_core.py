"""What every benchmark's ``infer`` shares, run through MMMU against the fake OpenAI-compatible server: a server that
fails (HTTP 500, 400, not JSON) ends the run in one line naming the URL, promptly, keeping the answers written so
far; empty answers are warned about and counted by ``eval``; the manifest names the served model; the output lock
holds through a symlink; a failed run leaves nothing behind but the answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwenvl.evaluation.mmmu.cli import main
from tests.evaluation.chat_server import Raw, chat_server, http_error
from tests.evaluation.test_mmmu import RUN_MMMU, _make_dataset


QUESTIONS = 10  # in _make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mmmu")
    _make_dataset(root)
    return root


def _args(url: str, data: Path, output: Path, *extra: str) -> list[str]:
    return ["infer", "--backend", "openai", "--base-url", url, "--family", "qwen3_vl", "--data-dir", str(data),
            "--output-file", str(output), "--max-new-tokens", "4", *extra]  # fmt: skip


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("error:", "note:"))]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_http_500_ends_in_one_line_after_bounded_retries_and_keeps_the_answers(data, tmp_path, capsys):
    def reply(body: dict) -> str | Raw:
        return "A" if len(server.requests) <= 4 else http_error(500, "CUDA out of memory while serving")

    output = tmp_path / "out" / "results.jsonl"
    with chat_server(reply) as server:
        started = time.monotonic()
        code = main(_args(server.url, data, output, "--batch-size", "2", "--concurrency", "1"))
        elapsed = time.monotonic() - started
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        [note, error] = _error_lines(err)
        assert error == (f"error: {server.url}/chat/completions answered HTTP 500: CUDA out of memory while serving "
                         "(tried 3 times)")  # fmt: skip
        assert len(server.requests) == 4 + 3  # two batches answered, then one request tried three times: bounded
        assert elapsed < 10, elapsed  # 0.5 s + 1 s of pauses, not the client's many seconds
    assert len(_ids(output)) == 4 and "4 answer(s) are kept" in note
    assert _leftovers(output.parent) == ["results.jsonl", "results.jsonl.manifest.json"]  # no lock left
    with chat_server(lambda body: "B") as server:
        assert main(_args(server.url, data, output, "--batch-size", "2")) == 0
    ids = _ids(output)
    assert len(ids) == QUESTIONS and len(set(ids)) == QUESTIONS  # resumed: nothing twice


def test_http_400_is_not_retried_and_a_failed_run_leaves_nothing(data, tmp_path, capsys):
    with chat_server(lambda body: http_error(400, "This model's maximum context length is 4096 tokens")) as server:
        output = tmp_path / "new" / "folder" / "results.jsonl"
        code = main(_args(server.url, data, output, "--batch-size", "4", "--concurrency", "1"))
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert _error_lines(err) == [
            f"error: {server.url}/chat/completions answered HTTP 400: This model's maximum context length is 4096 "
            "tokens"
        ]
        assert len(server.requests) == 1  # the request's own fault: not retried, and the rest of its batch not sent
    assert not (tmp_path / "new").exists()  # no lock, no manifest, no empty folders


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
def test_an_answer_that_is_not_json_names_the_url_and_what_came_back(data, tmp_path, capsys, content_type):
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    with chat_server(lambda body: Raw(200, page, content_type)) as server:
        code = main(_args(server.url, data, tmp_path / "results.jsonl", "--concurrency", "1"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "Expecting value" not in err
    [error] = _error_lines(err)
    assert error.startswith(f"error: {server.url}/chat/completions answered HTTP 200 ({content_type})")
    assert repr(page) in error
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "models, expected",
    [
        (http_error(503, "model is still loading"), "/models answered HTTP 503: model is still loading"),
        (Raw(200, "<html>a web page</html>", "text/html"), "/models answered HTTP 200 (text/html), not a model list: "
                                                           "'<html>a web page</html>'"),
    ],
)  # fmt: skip
def test_a_failing_model_list_names_the_url_and_what_came_back(data, tmp_path, capsys, models, expected):
    with chat_server(lambda body: "A", models=models) as server:
        code = main(_args(server.url, data, tmp_path / "results.jsonl"))
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "cannot reach" not in err
        [error] = _error_lines(err)
        assert error.startswith(f"error: {server.url}{expected}") and not server.requests
    assert _leftovers(tmp_path) == []


def test_empty_answers_are_warned_about_and_counted_by_eval(data, tmp_path, capsys):
    def reply(body: dict) -> str | None:
        text = json.dumps(body["messages"])
        return None if "item 1)" in text else "" if "item 2)" in text else "A"  # Art/Math/Physics items 1 and 2

    output = tmp_path / "results.jsonl"
    with chat_server(reply) as server:
        assert main(_args(server.url, data, output)) == 0
    err = capsys.readouterr().err
    assert "warning: 6 of 10 answer(s) are empty" in err
    scores = tmp_path / "scores.json"
    assert main(["eval", "--input-file", str(output), "--output-file", str(scores)]) == 0
    out = capsys.readouterr().out
    report = json.loads(scores.read_text())
    empty = report["empty_responses"]
    assert empty["num"] == 6 and sorted(empty["ids"]) == sorted(
        f"validation_{s}_{i}" for s in ("Art", "Math", "Physics") for i in (1, 2)
    )
    # Official scoring guesses for the empty multiple-choice answers (Math_2 is open): reported as such.
    assert empty["random_guesses"] == 5
    assert "warning: 6 empty answer(s)" in out and "5 of them given a random guess" in out


def test_the_manifest_records_the_served_model_and_a_finished_run_leaves_no_lock(data, tmp_path):
    output = tmp_path / "results.jsonl"
    with chat_server(lambda body: "A", models=("org/served-7b",)) as server:
        assert main(_args(server.url, data, output, "--limit", "1")) == 0
        assert server.listings and {r["model"] for r in server.requests} == {"org/served-7b"}
    manifest = json.loads(Path(str(output) + ".manifest.json").read_text())
    assert manifest["served_model"] == "org/served-7b" and manifest["base_url"] == server.url
    assert _leftovers(tmp_path) == ["results.jsonl", "results.jsonl.manifest.json"]


def test_a_second_infer_through_a_symlink_is_stopped_by_the_lock(data, tmp_path, capsys):
    release = threading.Event()

    def reply(body: dict) -> str:
        release.wait(60)  # the first writer waits here, holding its lock
        return "A"

    real = tmp_path / "real" / "results.jsonl"
    link = tmp_path / "link.jsonl"
    real.parent.mkdir()
    real.touch()
    link.symlink_to(real)
    with chat_server(reply) as server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        first = subprocess.Popen([sys.executable, str(RUN_MMMU), *_args(server.url, data, real)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not server.requests:  # the first writer has the lock once it asks the server
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the first infer never reached the server"
                time.sleep(0.05)
            code = main(_args(server.url, data, link))
            err = capsys.readouterr().err
            assert code == 2 and f"is being written by another infer (pid {first.pid})" in err
            assert f"(that is {real})" in err
        finally:
            release.set()
            out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err[-3000:]
    ids = _ids(real)
    assert len(ids) == QUESTIONS and len(set(ids)) == QUESTIONS
    assert _leftovers(real.parent) == ["results.jsonl", "results.jsonl.manifest.json"]


def _parser_raising(error: BaseException):
    from qwenvl.cli import StrictParser

    def build():
        parser = StrictParser(prog="tool")
        parser.add_argument("--output-file", default=None)
        parser.set_defaults(func=lambda args: (_ for _ in ()).throw(error))
        return parser

    return build


def test_only_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys):
    from qwenvl.cli import MissingPackage, Unreachable, UserError
    from qwenvl.evaluation.command import run_main

    def run(args):
        return args.func(args)

    for error in (UserError("bad --flag; fix it"), MissingPackage("pip install x"), Unreachable("start the server")):
        assert run_main(_parser_raising(error), run, []) == 2
        assert capsys.readouterr().err == f"error: {error}\n"
    # A bug is not a user's mistake, whatever its type: it propagates (with its traceback), and the run's empty
    # output folders are still removed.
    for bug in (ValueError("a bug"), KeyError("width"), ImportError("cannot import name x"), ConnectionError("x")):
        with pytest.raises(type(bug)):
            run_main(_parser_raising(bug), run, ["--output-file", str(tmp_path / "new" / "out.json")])
        assert not (tmp_path / "new").exists()


def test_user_mistakes_raise_the_user_error_type():
    from qwenvl.cli import UserError
    from qwenvl.evaluation import shards
    from qwenvl.model.budget import MediaBudget

    with pytest.raises(UserError, match="--num-shards and --shard-index"):
        shards.shard_from_env(2, None)
    with pytest.raises(UserError, match="min_pixels"):
        MediaBudget(min_pixels=10, max_pixels=5)
