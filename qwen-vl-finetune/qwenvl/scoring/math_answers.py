"""MATH-V's answer checking (its ``evaluate.py`` rules, re-written): normalising LaTeX answers, finding the final
answer in a response, and comparing it with the gold answer. Pure text functions, used by the MathVision benchmark
(:mod:`qwenvl.evaluation.mathvision`) and by GRPO's ``numeric`` reward (:mod:`qwenvl.train.rewards`)."""

from __future__ import annotations

import re


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        out += f"{{{a}}}{b}{rest}" if b == "{" else f"{{{a}}}{{{b}}}{rest}"
    return out


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _fix_a_slash_b(s: str) -> str:
    if s.count("/") != 1:
        return s
    a, b = s.split("/")
    if a.isdigit() and b.isdigit():
        return f"\\frac{{{a}}}{{{b}}}"
    return s


def normalise(s: str) -> str:
    """MATH-style normalisation of an extracted answer."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def find_math_answer(s: str) -> str:
    s = s.lower().replace("{}", "")
    boxed = re.findall(r"oxed{(.*)}", s, flags=re.S)
    ans = boxed[-1] if boxed else s
    if "}" in ans and ("{" not in ans or ans.find("}") < ans.find("{")):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    for old, new in ((" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
                     ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""), ("{m}^3", ""), ("m^3", ""), ("{units}", ""),
                     ("units", ""), ("{km}", ""), ("km", "")):  # fmt: skip
        ans = ans.replace(old, new)
    return normalise(ans)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


FLAGS = ["the final answer is", "the answer is", "the correct answer is", "the answer should be"]


def official_extract(response: str) -> str:
    """MATH-V ``evaluate.py``'s model answer."""
    answer = response.strip()
    for x in "ABCDE":
        if (answer.endswith(f" {x}.") or answer.endswith(f" ({x}).") or answer.startswith(f"{x}\n")
                or answer.startswith(f"({x})\n") or answer.startswith(f"({x}) {x}\n")):  # fmt: skip
            answer = x
    tail = answer.split("is ")[-1].rstrip(".")
    if _is_number(tail):
        answer = tail
    if "oxed{" not in answer:
        for flag in FLAGS:
            for variant in (flag, flag.replace("the", "The")):
                raw = answer
                answer = answer.split(variant)[-1].strip()
                if variant in raw:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = find_math_answer(answer)
    for x in "abcde":
        answer = answer.replace(f"({x})", x).replace(f"{{{x}}}", x)
    return answer.rstrip(".").lstrip(":").strip()


def _value(text: str) -> float | None:
    """The numeric value of a LaTeX / plain expression (latex2sympy2, never ``eval``), or None."""
    if not text or len(text) > 200:
        return None
    if _is_number(text):
        return float(text)
    try:
        from latex2sympy2 import latex2sympy

        expr = latex2sympy(text)
        return float(expr.evalf()) if getattr(expr, "is_number", False) else None
    except Exception:  # noqa: BLE001 - not an expression: no value
        return None


def _split_tuple(text: str) -> list[str] | None:
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]":
        return [p.strip() for p in text[1:-1].split(",")]
    return None


def is_equal(answer: str, gold: str, decimals: int | None = 2, tolerance: float = 1e-6) -> bool:
    """MATH-V's comparison: equal strings (lower-cased), else element-wise / numeric equality after rounding to
    ``decimals`` (official) or within ``tolerance`` (``decimals=None``: upstream)."""
    a, g = str(answer).lower().strip(), str(gold).lower().strip()
    if not a or not g:
        return False
    if a == g:
        return True
    parts_a, parts_g = _split_tuple(a), _split_tuple(g)
    if parts_a is not None and parts_g is not None:
        return len(parts_a) == len(parts_g) and all(
            is_equal(x, y, decimals, tolerance) for x, y in zip(parts_a, parts_g)
        )
    va, vg = _value(a), _value(g)
    if va is None or vg is None:
        return False
    return round(va, decimals) == round(vg, decimals) if decimals is not None else abs(va - vg) < tolerance
