"""Shared fixtures: tiny offline checkpoints of every Qwen-VL family in the family table, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from qwenvl.model.families import FAMILIES as FAMILY_TABLE


# Tests never reach a model hub, and one torch thread is far cheaper on small shared CI machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FAMILIES = list(FAMILY_TABLE)  # every family of the table: a new entry is tested everywhere at once
ARTIFACTS = Path(os.environ.get("QWENVL_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def missing_prerequisite(reason: str) -> None:
    """Skip a test whose prerequisite (Chromium, ffmpeg, the vLLM virtualenv, ...) is missing here; under CI
    (``CI=true``) fail instead, so a broken set-up can never turn a tier into skips."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI prerequisite missing: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of tiny checkpoints, one per family, written with the same code a user would run."""
    from qwenvl.model.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {family: write_tiny_checkpoint(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_checkpoint(tiny_checkpoints: dict[str, Path], family: str) -> Path:
    return tiny_checkpoints[family]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep files worth looking at after a run (screenshots, reports)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def transformers_server(tiny_checkpoints: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """A real `transformers serve` of the tiny Qwen3-VL checkpoint on 127.0.0.1: ``(base URL, model name)``."""
    import shutil
    import sys

    from benchmarks.serving import transformers_serve

    if shutil.which("transformers", path=os.path.dirname(sys.executable)) is None:
        missing_prerequisite("the transformers CLI is not installed")
    model = str(tiny_checkpoints["qwen3_vl"])
    try:
        server = transformers_serve(model)
        base = server.__enter__()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield base, model
    server.__exit__(None, None, None)
