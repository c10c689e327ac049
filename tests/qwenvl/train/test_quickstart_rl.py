"""The second main job: ``qwenvl quickstart --stage dpo|grpo`` raises held-out accuracy by >= 30 points on CPU
(measured 47.9% -> 99.0% with DPO and 47.9% -> 88.5% with GRPO)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("stage, curve", [("dpo", "preference accuracy by step:"),
                                          ("grpo", "mean reward (exact match) by step:")])  # fmt: skip
def test_stage_gains_thirty_points(tmp_path, stage, curve):
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl.quickstart", "--stage", stage, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=2400, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines() if line.startswith("after ")}
    before = float(rows["after the brief SFT"].split()[-1].rstrip("%"))
    after = float(rows[f"after {stage.upper()}"].split()[-1].rstrip("%"))
    assert before <= 60.0 and after - before >= 30.0, result.stdout
    assert curve in result.stdout
