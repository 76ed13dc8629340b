"""Filters for generated data, each with a count in the report.

- truncated:        the generation hit max_new_tokens (finish_reason "length")
- think_block:      think mode without exactly one well-formed, non-empty <think>...</think> first,
                    or no-think mode with reasoning in a think block (pipeline.core.chat's rules)
- empty_answer:     nothing after the think block
- exact_duplicate:  the same prompt and answer (normalised) seen before
- near_duplicate:   answer 5-gram Jaccard >= threshold with an earlier kept answer (datasketch MinHash LSH)
- contaminated:     the prompt shares an n-gram (default 13 words) with a prompt of our eval tasks
- unverified:       with `verify: math`, a think trace whose final answer math-verify rejects
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pipeline.core.chat import MISSING_ANSWER, strip_think, think_block_problem
from pipeline.core.errors import UserError
from synth.schema import FilterSpec

WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def check_think(answer: str, thinking: bool) -> str | None:
    """The filter reason when the answer's think block is wrong for its mode, or None."""
    problem = think_block_problem(answer, thinking, required=True)
    if problem is None:
        return None
    return "empty_answer" if problem == MISSING_ANSWER else "think_block"


class Contamination:
    """n-grams of the prompts of our eval tasks (every task's `prompts()`)."""

    def __init__(self, n: int = 13, texts: Iterable[str] | None = None):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        for text in texts if texts is not None else eval_prompts():
            self.grams |= ngrams(text, n)

    def hits(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n))


def eval_prompts() -> list[str]:
    """The prompts of every eval task, as each task gives them (`Task.prompts`): a new task is covered
    without a change here."""
    from eval.tasks import TASKS

    return [text for task in TASKS.values() for text in task().prompts()]


class NearDuplicates:
    """Near-duplicate answers: MinHash over word 5-grams with datasketch's LSH index; a candidate
    counts when its estimated Jaccard similarity reaches the threshold. The index is built for a
    lower threshold than that, so that pairs just above it are found as candidates (LSH recall
    falls off near its own threshold). Memory per kept answer is one MinHash signature (num_perm
    64-bit values), not its shingles."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 128):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self.index = MinHashLSH(threshold=max(0.3, threshold - 0.2), num_perm=num_perm)
        self.signatures: dict[int, object] = {}

    def _minhash(self, text: str):
        from datasketch import LeanMinHash, MinHash

        shingles = ngrams(text, 5) or {tuple(WORD.findall(text.lower()))}
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([" ".join(s).encode() for s in shingles])
        return LeanMinHash(m)

    def seen(self, text: str) -> bool:
        """True if `text` nearly duplicates an earlier one; otherwise remember it."""
        m = self._minhash(text)
        if any(m.jaccard(self.signatures[key]) >= self.threshold for key in self.index.query(m)):
            return True
        key = len(self.signatures)
        self.signatures[key] = m
        self.index.insert(key, m)
        return False


def apply_filters(rows: list[dict], settings: FilterSpec | dict[str, Any], answers_of, extra=None):
    """Keep rows that pass every filter. `answers_of(row)` lists the (answer text, thinking,
    finish_reason) the strict filters judge; `extra(row)` may return a further reason.
    Returns (kept, dropped rows with their `filter_reason`, counts per reason)."""
    settings = settings if isinstance(settings, FilterSpec) else FilterSpec.model_validate(settings)
    counts: Counter = Counter()
    dropped, kept = [], []
    contamination = Contamination(settings.ngram) if settings.decontaminate else None
    exact: set[str] | None = set() if settings.dedup != "none" else None
    near = NearDuplicates(settings.near_threshold) if settings.dedup == "exact_and_near" else None
    verifier = _verifier(settings.verify)
    for row in rows:
        reason = (extra(row) if extra else None) or _reason(row, settings, answers_of, contamination, exact, near,
                                                            verifier)
        counts[reason or "kept"] += 1
        if reason is None:
            kept.append(row)
        else:
            dropped.append({**row, "filter_reason": reason})
    return kept, dropped, dict(counts)


def _reason(row, settings: FilterSpec, answers_of, contamination, exact, near, verifier) -> str | None:
    prompt = " ".join(m["content"] for m in row["prompt"])
    for answer, thinking, finish in answers_of(row):
        if finish == "length" and settings.drop_truncated:
            return "truncated"
        if settings.require_think_block:
            problem = check_think(answer, thinking)
            if problem:
                return problem
        if not strip_think(answer):
            return "empty_answer"
    if contamination is not None and contamination.hits(prompt):
        return "contaminated"
    main = answers_of(row)[0][0]
    if exact is not None:
        fingerprint = normalise(prompt) + "\0" + normalise(main)
        if fingerprint in exact:
            return "exact_duplicate"
        exact.add(fingerprint)
    if near is not None and near.seen(strip_think(main)):
        return "near_duplicate"
    if verifier is not None and row.get("reference") is not None and not verifier(row["reference"], main):
        return "unverified"
    return None


def _verifier(name: str | None):
    if not name:
        return None
    if name != "math":
        raise UserError(f"filters.verify: {name!r} is not a verifier; available: math")
    from eval.tasks import build_task

    task = build_task(name, None)  # the task checks answers its own way (Task.verify)
    return lambda reference, answer: task.verify(str(reference), answer)
