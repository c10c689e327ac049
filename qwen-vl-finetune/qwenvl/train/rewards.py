"""Rewards of ``qwenvl grpo``: built-in answer checks and the user's own ``module:function``.

A reward function is called as ``fn(completion=text, solution=reference, **context)`` and returns a float
(context: ``answer`` — the final answer, ``record`` — the raw record's other fields, ``family`` — the model
family, for coordinate conventions). Built-ins:

* ``exact``: the final answer (inside ``<answer>...</answer>`` if present, else after ``</think>``) equals the
  reference, ignoring case, surrounding spaces and a final full stop;
* ``choice``: the option letter read from the answer as the benchmarks read it (VLMEvalKit's matcher,
  :func:`qwenvl.evaluation.mcq.infer_option`) equals the reference letter;
* ``numeric``: MathVision's answer extraction and comparison (:mod:`qwenvl.evaluation.mathvision`);
* ``iou``: IoU of the first box of the answer with the reference box, both in the family's own convention
  (``box_markup`` / ``box_coords`` of the family table: ``bbox_2d`` JSON for Qwen2.5-VL / Qwen3-VL / Qwen3.5,
  ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` for Qwen2-VL);
* ``format``: 1 when the text is ``<think>...</think>`` then ``<answer>...</answer>``, else 0.

A reward that raises, or an answer it cannot read (:class:`Unparseable`), scores 0 for that rollout, and the reason
is logged and counted (``rewards/<name>/failures``); the run goes on.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

from qwenvl.cli import UserError


logger = logging.getLogger(__name__)

RewardFn = Callable[..., float]
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.S)


class Unparseable(ValueError):
    """The answer holds nothing the reward can read (no box, no letter, no number)."""


def final_answer(text: str) -> str:
    """The answer part of a completion: inside the last ``<answer>`` tags, else after the last ``</think>``."""
    tagged = ANSWER_RE.findall(text)
    if tagged:
        return tagged[-1].strip()
    return text.split("</think>")[-1].strip()


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def exact(completion: str, solution: str, **context: Any) -> float:
    return float(_norm(final_answer(completion)) == _norm(solution))


def choice(completion: str, solution: str, **context: Any) -> float:
    from qwenvl.scoring.mcq import infer_option

    gold = solution.strip().strip("()").upper()
    letters = [chr(ord("A") + i) for i in range(max(4, ord(gold[:1] or "A") - ord("A") + 1))]
    letter = infer_option(final_answer(completion), letters)
    if letter is None:
        raise Unparseable("no option letter in the answer")
    return float(letter == gold)


def numeric(completion: str, solution: str, **context: Any) -> float:
    from qwenvl.scoring.math_answers import is_equal, official_extract

    answer = official_extract(final_answer(completion))
    if not answer:
        raise Unparseable("no answer to compare")
    return float(is_equal(answer, official_extract(solution)))


def boxes_of(text: str, markup: str) -> list[list[float]]:
    """The boxes of ``text`` in a family's markup (``json`` or ``box_tokens``)."""
    from qwenvl.model.grounding import find_boxes, find_qwen2_boxes

    if markup == "box_tokens":
        return find_qwen2_boxes(text)
    return [box for box, _ in find_boxes(text)]


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes (corners in any order)."""
    ax1, ax2, ay1, ay2 = min(a[0], a[2]), max(a[0], a[2]), min(a[1], a[3]), max(a[1], a[3])
    bx1, bx2, by1, by2 = min(b[0], b[2]), max(b[0], b[2]), min(b[1], b[3]), max(b[1], b[3])
    w, h = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = w * h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def iou(completion: str, solution: str, family: Any = None, **context: Any) -> float:
    markup = getattr(family, "box_markup", "json")
    gold = boxes_of(solution, markup) or boxes_of(solution, "json" if markup == "box_tokens" else "box_tokens")
    if not gold:
        raise ValueError(f"the reference {solution!r} holds no box in the family's markup ({markup})")
    found = boxes_of(final_answer(completion), markup)
    if not found:
        raise Unparseable(f"no box in the answer (expected {markup} markup)")
    return box_iou(found[0], gold[0])


def format_reward(completion: str, solution: str, **context: Any) -> float:
    return float(bool(FORMAT_RE.match(completion)))


BUILTIN: dict[str, RewardFn] = {"exact": exact, "choice": choice, "numeric": numeric, "iou": iou,
                                "format": format_reward}  # fmt: skip


@dataclass
class Reward:
    name: str
    fn: RewardFn
    weight: float = 1.0


def resolve_rewards(spec: str, weights: str | None = None) -> list[Reward]:
    """``"exact,format"`` / ``"my_pkg.rewards:length_penalty"`` into rewards; unknown names and unimportable
    functions are user errors naming the fix."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError(f"--rewards is empty; name one or more of {', '.join(BUILTIN)} or module:function")
    values = [float(w) for w in weights.split(",")] if weights else [1.0] * len(names)
    if len(values) != len(names):
        raise UserError(f"--reward_weights has {len(values)} values for {len(names)} rewards; give one per reward")
    out = []
    for name, weight in zip(names, values):
        if name in BUILTIN:
            out.append(Reward(name, BUILTIN[name], weight))
            continue
        if ":" not in name:
            raise UserError(f"--rewards: unknown reward {name!r}; use {', '.join(BUILTIN)} or module:function")
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"--rewards {name}: cannot import it ({e}); is the module on PYTHONPATH?") from None
        if not callable(fn):
            raise UserError(f"--rewards {name}: {attr} is not a function")
        out.append(Reward(name, fn, weight))
    return out


def score(reward: Reward, completion: str, solution: str, **context: Any) -> tuple[float, str | None]:
    """``(value, None)``, or ``(0.0, reason)`` when the reward raised or could not read the answer."""
    try:
        value = float(reward.fn(completion=completion, solution=solution, answer=final_answer(completion), **context))
    except Unparseable as e:
        return 0.0, f"unparseable: {e}"
    except Exception as e:  # noqa: BLE001 - a user's reward must never end the run
        return 0.0, f"{type(e).__name__}: {e}"
    if value != value:  # NaN
        return 0.0, "returned NaN"
    return value, None
