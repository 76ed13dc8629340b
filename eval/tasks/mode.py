"""Mode adherence: think mode must open with a well-formed, non-empty think block followed by an
answer; no-think mode must emit an empty think block or none, and then an answer.

Prompts are everyday requests; the example's `meta["mode"]` says which mode it was asked in.
"""

from __future__ import annotations

import random

from eval.tasks.base import Example

PROMPTS = [
    "What is the boiling point of water at sea level?", "Name three primary colours.",
    "How many days are in a leap year?", "Give me a synonym for 'happy'.", "What is 15% of 200?",
    "Which planet is closest to the Sun?", "Translate 'thank you' into French.",
    "What is the capital of Canada?", "How many sides does a hexagon have?", "Suggest a name for a cat.",
    "What does CPU stand for?", "Is 91 a prime number?",
]


class ModeTask:
    name = "mode"

    def examples(self, n: int | None = None, seed: int = 0) -> list[Example]:
        """The stage sets meta["mode"] per request; score() reads it."""
        order = list(range(len(PROMPTS)))
        random.Random(seed).shuffle(order)
        return [Example(id=f"mode-{i}", messages=[{"role": "user", "content": PROMPTS[i]}], target=None)
                for i in (order if n is None else order[:n])]

    def score(self, example: Example, completion: str) -> float:
        return float(adheres(completion, example.meta["mode"]))


def adheres(completion: str, mode: str) -> bool:
    text = completion.strip()
    opens, closes = text.count("<think>"), text.count("</think>")
    if mode == "think":
        if not text.startswith("<think>") or opens != 1 or closes != 1:
            return False
        reasoning, answer = text[len("<think>"):].split("</think>", 1)
        return bool(reasoning.strip() and answer.strip())
    if opens == 0 and closes == 0:
        return bool(text)
    if not text.startswith("<think>") or opens != 1 or closes != 1:
        return False
    reasoning, answer = text[len("<think>"):].split("</think>", 1)
    return not reasoning.strip() and bool(answer.strip())
