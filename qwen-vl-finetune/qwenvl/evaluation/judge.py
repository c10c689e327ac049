"""An optional LLM judge (any OpenAI-compatible server) that matches a free-form answer to one of the options, or
extracts a final answer from a worked solution (MathVision).

Upstream scores MMMU with VLMEvalKit's rules and, where they find no option, asks a GPT model; after 25 failed
tries it picks a random option with an unseeded RNG. Here the judge is asked at most ``retries`` times, its reply is
read with the same rule (exactly one option letter, or ``Z`` for none), and a judge that never answers usably leaves
the rule-based result in place (counted as a judge failure, never a guess). Every verdict is cached in a JSONL file
keyed by the judge model and the exact prompt, so a re-run of ``eval`` costs no requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


PROMPT = (
    "You match a student's answer to the options of a single-choice question. Read the question, the options and "
    "the answer, and reply with the letter of the option the answer chooses or states. If the answer matches no "
    "option, or more than one, reply Z. Reply with a single letter only.\n\n"
    "Example: Question: Which animal is in the picture?\nOptions:\nA. a cat\nB. a dog\nC. a bird\n"
    "Answer: It looks like a small dog sitting on grass.\nReply: B\n\n"
    "Example: Question: What colour is the car?\nOptions:\nA. red\nB. blue\nAnswer: The car is green.\nReply: Z\n\n"
    "Question: {question}\nOptions:\n{options}\nAnswer: {answer}\nReply: "
)


EXTRACT_PROMPT = (
    "Read the problem and a model's response, and extract the model's final answer: a number, an expression in "
    "LaTeX, or the letter of an option. Reply with the answer only, without explanation; reply with nothing if the "
    "response gives no answer.\n\n"
    "Example: Problem: What is the missing number?\nModel response: The pattern adds 3 each step, so it is 14.\n"
    "Extracted answer: 14\n\n"
    "Example: Problem: Which option is right? (A) 5 (B) 8/11\nModel response: I computed 8/11, option (B).\n"
    "Extracted answer: B\n\n"
    "Problem: {question}\nModel response: {response}\nExtracted answer: "
)


def read_choice(reply: str, letters: list[str]) -> str | None:
    """The option letter a reply names: exactly one of ``letters`` (or ``Z``) as a standalone token."""
    tokens = re.sub(r"[.()\[\],:;!*#{}'\"]", " ", reply).split()
    found = {t for t in tokens if t in letters}
    if len(found) == 1:
        return found.pop()
    if not found and "Z" in tokens:
        return "Z"
    return None


@dataclass
class Verdict:
    letter: str | None  # an option letter, Z (none matches), or None (the judge gave no usable reply)
    reply: str
    cached: bool


class Judge:
    """Asks ``model`` at ``base_url``; verdicts cached in ``cache`` (JSONL)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        cache: Path,
        api_key: str | None = None,
        concurrency: int = 8,
        retries: int = 3,
        timeout: float = 120.0,
    ) -> None:
        from openai import OpenAI

        # Failed requests are retried by chat_completion (bounded, short pauses), not by the client.
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=0)  # fmt: skip
        self.base_url, self.model, self.cache_path = base_url, model, cache
        self.concurrency, self.retries = max(1, concurrency), max(1, retries)
        self.requests = 0
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self._cache: dict[str, dict[str, Any]] = {}
        if cache.exists():
            for line in cache.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn last line of an interrupted run
                self._cache[entry["key"]] = entry

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.model}\n{prompt}".encode()).hexdigest()

    def _ask(self, prompt: str) -> str:
        from qwenvl.inference.openai_backend import chat_completion

        if self._failed.is_set():
            raise RuntimeError("not sent: another request to the judge failed")  # never the first error raised
        with self._lock:
            self.requests += 1
        request = dict(model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=16)
        try:
            response = chat_completion(self.client, self.base_url, request, stop=self._failed)
        except (ValueError, ConnectionError) as e:  # ServerError, or the server cannot be reached
            self._failed.set()  # the requests in flight stop retrying; those not sent yet are not sent
            raise type(e)(f"the judge: {e}") from None
        except BaseException:
            self._failed.set()
            raise
        return (response.choices[0].message.content or "").strip()

    def _cached(self, qid: str, prompt: str, ask: Callable[[], tuple[str | None, str]]) -> tuple[dict[str, Any], bool]:
        """The cache entry of ``prompt`` (and True), or ``ask()``'s ``(letter, reply)`` stored as a new one."""
        key = self._key(prompt)
        if key in self._cache:
            return self._cache[key], True
        letter, reply = ask()
        entry = {"key": key, "id": qid, "model": self.model, "letter": letter, "reply": reply}
        with self._lock:
            self._cache[key] = entry
            with self.cache_path.open("a") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return entry, False

    def choose(self, qid: str, question: str, options: list[str], answer: str) -> Verdict:
        """The option letter the judge matches ``answer`` to (``Z``: none; ``None``: no usable reply)."""
        letters = [chr(ord("A") + i) for i in range(len(options))]
        listed = "".join(f"{letter}. {text}\n" for letter, text in zip(letters, options)).rstrip("\n")
        prompt = PROMPT.format(question=question or "(not recorded)", options=listed, answer=answer)

        def ask() -> tuple[str | None, str]:
            reply = ""
            for _ in range(self.retries):
                reply = self._ask(prompt)
                letter = read_choice(reply, letters)
                if letter is not None:
                    return letter, reply
            return None, reply

        entry, cached = self._cached(qid, prompt, ask)
        return Verdict(entry["letter"], entry["reply"], cached)

    def extract(self, qid: str, question: str, response: str) -> str:
        """The final answer the judge reads in ``response`` ('' for none), cached like verdicts."""
        prompt = EXTRACT_PROMPT.format(question=question, response=response)
        return self._cached(qid, prompt, lambda: (None, self._ask(prompt)))[0]["reply"]

    def extract_all(self, items: list[tuple[str, str, str]]) -> list[str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda item: self.extract(*item), items))

    def choose_all(self, items: list[tuple[str, str, list[str], str]]) -> list[Verdict]:
        """``choose`` for every ``(id, question, options, answer)``, ``concurrency`` requests at a time."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda item: self.choose(*item), items))
