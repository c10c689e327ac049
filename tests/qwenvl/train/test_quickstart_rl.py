"""The second main job: ``qwenvl quickstart --stage dpo`` raises held-out accuracy by >= 30 points on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_dpo_stage_gains_thirty_points(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl.quickstart", "--stage", "dpo", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines() if line.startswith("after ")}
    before = float(rows["after the brief SFT"].split()[-1].rstrip("%"))
    after = float(rows["after DPO"].split()[-1].rstrip("%"))
    assert before <= 60.0 and after - before >= 30.0, result.stdout
    assert "preference accuracy by step:" in result.stdout
