"""Multiple-choice answer matching as VLMEvalKit does it, in the two versions the Qwen benchmarks meet.

* ``vlmevalkit``: VLMEvalKit's current ``can_infer`` (the reference for RealWorldQA and the TSV benchmarks): a
  letter is read only when it is the one option letter among the answer's tokens and its first occurrence is
  among the last four tokens; an answer-is sentence ("the correct answer is **B**") is the last resort; an
  option's text is matched only in answers at most twice as long as all option texts together; the article
  rule ("A" with more than 3 tokens is no answer) is off, as VLMEvalKit runs by default.
* ``upstream``: the private copy in upstream Qwen3-VL's MathVision, RealWorldQA and VideoMME scripts (VLMEvalKit
  before August 2025, with the article rule always on): any one option letter among the tokens, and text
  matching without a length limit.

Both return an option letter, ``Z`` (a refusal, or a ``Z`` token and no letter) or ``None`` (nothing inferred).
Nothing here mutates the caller's options.
"""

from __future__ import annotations

import re
from typing import Literal


Matcher = Literal["vlmevalkit", "upstream"]

FAILED = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")
# "the correct answer is **B**", "Answer is (C)": the sentence in any case, the letter a capital on its own.
_ANSWER_IS = re.compile(r"(?i:(?:correct\s+)?answer\s+is)\s*:?\s*\**\(?([A-D])\)?\**(?![A-Za-z])")


def infer_option(answer: str, letters: list[str], matcher: Matcher = "vlmevalkit") -> str | None:
    """The option letter named in ``answer`` by letter (see the module doc)."""
    if FAILED in answer:
        return None
    if any(refusal in answer for refusal in REFUSALS):
        return "Z"
    tokens = _PUNCT.sub(" ", answer).split()
    found = [letter for letter in letters if letter in tokens]
    if len(found) == 1:
        letter = found[0]
        if matcher == "upstream":
            if "A" in tokens and len(tokens) > 3:
                return None  # "A" may be the article
            return letter
        if tokens.index(letter) > len(tokens) - 5:
            return letter
    elif not found and "Z" in tokens:
        return "Z"
    if matcher == "vlmevalkit":
        match = _ANSWER_IS.search(answer)
        if match and match.group(1) in letters:
            return match.group(1)
    return None


def infer_text(answer: str, options: dict[str, str], matcher: Matcher = "vlmevalkit") -> str | None:
    """The option whose text (lower-cased) is the only one inside the lower-cased ``answer``."""
    lowered = answer.lower()
    if matcher == "vlmevalkit" and len(lowered) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    hits = [letter for letter, text in options.items() if str(text).lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, options: dict[str, str], matcher: Matcher = "vlmevalkit") -> str | None:
    """A letter of ``options`` (``{letter: text}``), ``Z`` or ``None``: by letter first, then by option text."""
    answer = str(answer)
    letter = infer_option(answer, list(options), matcher)
    return letter if letter is not None else infer_text(answer, options, matcher)
