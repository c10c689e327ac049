"""Accuracy intervals and the paired comparison of two runs, checked against published worked values."""

from __future__ import annotations

import json

import pytest

from qwenvl.evaluation.stats import mcnemar_p, paired_comparison, wilson_interval


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II: the Wilson score interval
# (without continuity correction) of each example, to 4 decimals.
@pytest.mark.parametrize("correct, num, lo, hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                                  (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])  # fmt: skip
def test_wilson_interval_matches_newcombes_examples(correct, num, lo, hi):
    assert wilson_interval(correct, num) == pytest.approx([lo, hi], abs=5e-5)


def test_mcnemar_exact_p_values():
    # 9 questions only A got right, 1 only B: the two-sided binomial tail 2 * (1 + 10) / 2**10 (= 0.0215).
    assert mcnemar_p(9, 1) == pytest.approx(0.021484375)
    assert mcnemar_p(1, 9) == mcnemar_p(9, 1) and mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(6, 0) == pytest.approx(2 / 64)  # 0.03125: six to none is already beyond noise


def test_paired_comparison_uses_common_questions_only():
    a = {str(i): i < 60 for i in range(100)} | {"extra": True}
    b = {str(i): i < 60 or 60 <= i < 62 for i in range(100)}
    c = paired_comparison(a, b)
    assert (c["common"], c["only_in_one"], c["a_only_right"], c["b_only_right"]) == (100, 1, 0, 2)
    assert c["a"]["acc"] == 0.6 and c["b"]["acc"] == 0.62 and not c["differs"]  # 2 of 100 apart: noise
    b_better = {str(i): i < 75 for i in range(100)}
    assert paired_comparison(a, b_better)["differs"]  # 15 more right, none fewer


def test_reports_and_compare_carry_the_interval_and_the_test(tmp_path, capsys):
    from qwenvl.evaluation.realworldqa import main

    def write(name: str, responses: list[str]) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": str(i), "question": "q", "options": {"A": "x", "B": "y"},
                                            "answer": "A", "response": r}) + "\n"
                                for i, r in enumerate(responses)))  # fmt: skip
        return str(path)

    a = write("a.jsonl", ["A"] * 10 + ["B"] * 10)
    b = write("b.jsonl", ["A"] * 20)
    assert main(["eval", "--input-file", a, "--output-file", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["overall"]["ci95"] == pytest.approx(wilson_interval(10, 20))
    lo, hi = report["overall"]["ci95"]
    assert f"[{lo:.3f}, {hi:.3f}]" in out and "95% CI" in out
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "only A right: 0, only B right: 10; exact McNemar p = 0.001953" in out and "differ beyond noise" in out


def test_wilson_interval_is_exactly_0_or_1_at_the_ends():
    """All wrong or all right: the bound at that end is exactly 0 / 1 (the formula's rounding gave 5.6e-17)."""
    from qwenvl.evaluation.stats import wilson_interval

    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 1.0
    assert 0.0 < wilson_interval(1, 3)[0] < wilson_interval(1, 3)[1] < 1.0
