"""One backend configuration: ``BackendConfig`` owns the backend flags (with the demo's names as aliases), is what
``load_backend`` takes, and is what every benchmark's ``infer`` parses and records."""

from __future__ import annotations

import dataclasses

import pytest

from qwenvl.cli import StrictParser, UserError
from qwenvl.inference import load_backend
from qwenvl.inference.config import BackendConfig
from tests.evaluation.chat_server import chat_server


def _parse(*argv: str) -> BackendConfig:
    parser = StrictParser(prog="t")
    BackendConfig.add_arguments(parser)
    return BackendConfig.from_args(parser.parse_args(list(argv)))


def test_demo_names_are_aliases_of_the_same_fields():
    demo = _parse("-c", "ckpt", "--cpu-only", "--flash-attn2")
    ours = _parse("--model-path", "ckpt", "--device", "cpu", "--attn-implementation", "flash_attention_2")
    assert demo == ours and demo.model_path == "ckpt" and demo.device == "cpu"
    assert _parse("--backend", "openai", "--api-base", "http://h/v1") == _parse("--backend", "openai", "--base-url",
                                                                                "http://h/v1")  # fmt: skip


def test_a_backend_without_its_checkpoint_or_server_is_a_user_error():
    with pytest.raises(UserError, match="--backend vllm needs --model-path"):
        _parse("--backend", "vllm")
    with pytest.raises(UserError, match="--backend openai needs --base-url"):
        BackendConfig(backend="openai")


def test_every_benchmark_infer_takes_the_config_flags():
    from qwenvl.evaluation.command import build_parser
    from qwenvl.evaluation.registry import BENCHMARKS, get

    names = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(BackendConfig)}
    for module in BENCHMARKS:
        parser = build_parser(get(module))
        infer = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
        flags = set(infer.choices["infer"]._option_string_actions)
        assert names <= flags and {"-c", "--api-base", "--cpu-only"} <= flags, module


def test_load_backend_takes_the_config(monkeypatch):
    monkeypatch.setenv("MY_KEY", "secret")
    with chat_server(lambda body: "hello", models=("served-model",)) as server:
        config = _parse("--backend", "openai", "--base-url", server.url, "--family", "qwen3_vl",
                        "--api-key-env", "MY_KEY")  # fmt: skip
        backend = load_backend(config)
        assert backend.model == "served-model" and server.listings  # it asked the server what it serves
