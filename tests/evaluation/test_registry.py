"""``qwenvl eval <benchmark> <subcommand>``: every benchmark of the registry has infer, eval, merge, compare and
export; one end-to-end run through the console entry point; ODinW's compare and export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qwenvl.evaluation.registry import BENCHMARKS, main
from tests.evaluation.test_odinw import PERFECT_A, SCENARIOS, _records, _toy_data


SUBCOMMANDS = ("infer", "eval", "merge", "compare", "export")


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_has_every_subcommand(name, capsys):
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, command, "--help"])
        assert exit_.value.code == 0, (name, command)
        assert "usage:" in capsys.readouterr().out


def test_unknown_benchmark_names_the_closest(capsys):
    assert main(["odinw"]) == 2
    assert "did you mean 'odinw13'?" in capsys.readouterr().err


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_qwenvl_eval_end_to_end_and_odinw_compare_export(tmp_path):
    data = _toy_data(tmp_path / "odinw")
    a = _write(tmp_path / "a.jsonl", _records(SCENARIOS["perfect"]))
    b = _write(tmp_path / "b.jsonl", _records({**SCENARIOS["perfect"], "ToyA": {**PERFECT_A, 2: "[]"}}))
    scores = tmp_path / "scores.csv"
    run = subprocess.run([sys.executable, "-m", "qwenvl.cli", "eval", "odinw13", "eval", "--input-file", str(a),
                          "--data-dir", str(data), "--output-file", str(scores)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert scores.read_text().splitlines()[0].startswith("dataset,images,answered")  # one row per dataset
    assert json.loads((tmp_path / "scores_acc.json").read_text())["Average"] == pytest.approx(1.0)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["odinw13", "compare", str(a), str(b), "--data-dir", str(data)]) == 0
        assert main(["odinw13", "export", "--input-file", str(b), "--data-dir", str(data),
                     "--output-file", str(tmp_path / "det.json")]) == 0  # fmt: skip
    assert "ToyA" in out.getvalue() and "-0.248" in out.getvalue()  # 1.0 -> 0.7525 (the reference's value)
    detections = json.loads((tmp_path / "det.json").read_text())
    assert sorted(detections) == ["ToyA", "ToyB"] and len(detections["ToyA"]) == 2 and len(detections["ToyB"]) == 2
    assert set(detections["ToyA"][0]) == {"image_id", "category_id", "bbox", "score"}


@pytest.mark.parametrize("argv", [["--help"], ["mmmu_pro", "infer", "--help"], ["odinw13", "eval", "--help"]])
def test_help_imports_nothing_heavy(argv):
    import os

    probe = ("import sys, runpy; sys.argv = ['qwenvl eval', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('qwenvl.evaluation.registry', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))\n"
             "sys.exit(code)\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this checkout's sources first
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("HEAVY="), result.stdout[-300:]


def test_unknown_flag_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["mmmu_pro", "infer", "--output-file", "o", "--data-dir", "d", "--settin", "vision"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "did you mean --setting?" in err and len(err.strip().splitlines()) <= 2


def test_qwenvl_eval_names_itself_in_usage_errors(capsys):
    """Under ``qwenvl eval``, a mistake names the command the user typed, not the upstream script's name."""
    from qwenvl.evaluation.registry import main

    with pytest.raises(SystemExit) as exit_info:
        main(["realworldqa", "infer", "--max-new-token", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("qwenvl eval realworldqa infer: error: unknown flag")
