"""Filters for generated data, each with a count in the report.

- truncated:        the generation hit max_new_tokens (finish_reason "length")
- think_block:      think mode without exactly one well-formed, non-empty <think>...</think> first,
                    or no-think mode with reasoning in a think block (pipeline.chat's rules)
- empty_answer:     nothing after the think block
- exact_duplicate:  the same prompt and answer (normalised) seen before
- near_duplicate:   answer 5-gram Jaccard >= threshold with an earlier kept answer (MinHash + LSH)
- contaminated:     the prompt shares an n-gram (default 13 words) with a prompt of our eval tasks
- unverified:       with `verify: math`, a think trace whose final answer math-verify rejects
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pipeline.chat import MISSING_ANSWER, strip_think, think_block_problem
from pipeline.errors import UserError

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
    """n-grams of the prompts of our eval tasks (math, IFEval, BFCL, mode)."""

    def __init__(self, n: int = 13, texts: Iterable[str] | None = None):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        for text in texts if texts is not None else eval_prompts():
            self.grams |= ngrams(text, n)

    def hits(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n))


def eval_prompts() -> list[str]:
    from eval.tasks import IFEvalTask, MathTask, ModeTask, ToolsTask

    texts = [r["question"] for r in MathTask().rows()]
    texts += [e.messages[0]["content"] for e in IFEvalTask().examples()]
    texts += [e.messages[-1]["content"] for e in ToolsTask().examples()]
    texts += [e.messages[0]["content"] for e in ModeTask().examples()]
    return texts


class NearDuplicates:
    """MinHash over word 5-grams with LSH banding; candidates are confirmed by exact Jaccard."""

    def __init__(self, threshold: float = 0.85, perms: int = 64, bands: int = 16):
        self.threshold, self.perms, self.bands = threshold, perms, bands
        self.rows_per_band = perms // bands
        self.buckets: dict[tuple[int, bytes], list[int]] = {}
        self.shingles: list[set[tuple[str, ...]]] = []

    def _signature(self, shingles) -> list[int]:
        hashes = [hashlib.blake2b(" ".join(s).encode(), digest_size=8).digest() for s in shingles] or [b"\0" * 8]
        return [min(int.from_bytes(hashlib.blake2b(h, digest_size=8, salt=p.to_bytes(2, "little")).digest(), "little")
                    for h in hashes) for p in range(self.perms)]

    def seen(self, text: str) -> bool:
        """True if `text` nearly duplicates an earlier one; otherwise remember it."""
        shingles = ngrams(text, 5) or {tuple(WORD.findall(text.lower()))}
        sig = self._signature(shingles)
        keys = [(b, repr(sig[b * self.rows_per_band:(b + 1) * self.rows_per_band]).encode()) for b in range(self.bands)]
        for key in keys:
            for j in self.buckets.get(key, []):
                other = self.shingles[j]
                if len(shingles & other) / max(len(shingles | other), 1) >= self.threshold:
                    return True
        idx = len(self.shingles)
        self.shingles.append(shingles)
        for key in keys:
            self.buckets.setdefault(key, []).append(idx)
        return False


FILTER_SETTINGS = {"drop_truncated", "require_think_block", "dedup", "near_threshold", "decontaminate", "ngram",
                   "verify"}


def apply_filters(rows: list[dict], settings: dict[str, Any], answers_of, extra=None):
    """Keep rows that pass every filter. `answers_of(row)` lists the (answer text, thinking,
    finish_reason) the strict filters judge; `extra(row)` may return a further reason.
    Returns (kept, dropped rows with their `filter_reason`, counts per reason)."""
    counts: Counter = Counter()
    dropped = []
    contamination = Contamination(settings.get("ngram", 13)) if settings.get("decontaminate", True) else None
    near = NearDuplicates(settings.get("near_threshold", 0.85)) if settings.get("dedup", "exact_and_near") == "exact_and_near" else None
    exact: set[str] = set()
    verifier = _verifier(settings.get("verify"))
    kept = []
    for row in rows:
        reason = (extra(row) if extra else None) or _reason(row, settings, answers_of, contamination, exact, near,
                                                            verifier)
        counts[reason or "kept"] += 1
        if reason is None:
            kept.append(row)
        else:
            dropped.append({**row, "filter_reason": reason})
    return kept, dropped, dict(counts)


def _reason(row, settings, answers_of, contamination, exact, near, verifier) -> str | None:
    prompt = " ".join(m["content"] for m in row["prompt"])
    for answer, thinking, finish in answers_of(row):
        if finish == "length" and settings.get("drop_truncated", True):
            return "truncated"
        if settings.get("require_think_block", True):
            problem = check_think(answer, thinking)
            if problem:
                return problem
        if not strip_think(answer):
            return "empty_answer"
    if contamination is not None and contamination.hits(prompt):
        return "contaminated"
    main = answers_of(row)[0][0]
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
    from eval.tasks.base import Example
    from eval.tasks.math import MathTask

    task = MathTask()
    return lambda reference, answer: task.score(Example("v", [], str(reference)), answer, "think")["score"] == 1.0
