"""Filters for generated data, each with a count in the report.

- truncated:        the generation hit max_new_tokens (finish_reason "length")
- think_block:      think mode without exactly one well-formed, non-empty <think>...</think> first,
                    or no-think mode with reasoning in a think block (pipeline.core.chat's rules)
- empty_answer:     nothing after the think block
- exact_duplicate:  the same prompt and answer (normalised) seen before
- near_duplicate:   answer 5-gram Jaccard >= threshold with an earlier kept answer (datasketch MinHash LSH)
- contaminated:     the prompt shares an n-gram (default 13 words) with a prompt of the eval: the tasks of
                    the eval recipes in `decontaminate_against`, built with those recipes' options (their
                    real sources: google/IFEval where the recipe scores it), or by default every
                    registered task with its default options (the sets the packages ship)
- unverified:       with `verify: TASK` (any registered eval task), a generation that does not earn that
                    task's full reward against its prompt row's `reference` (or `answer`): math-verify
                    equivalence for `math`, every instruction for `ifeval`, BFCL's checker for `tools`

The eval prompts are read when the stage starts (`decontamination`), before anything is generated: a
source this machine cannot read (a Hub dataset offline) stops the run there with one line naming it,
never after hours of generation, and never falls back to another set.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.chat import MISSING_ANSWER, strip_think, think_block_problem
from pipeline.core.errors import UserError
from pipeline.core.recipe import RecipeError, load_recipe, raise_problems
from pipeline.core.summary import Section
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


def decontamination(settings: FilterSpec, base_dir: Path = Path(".")) -> Contamination | None:
    """The n-grams the filter checks prompts against (None when `decontaminate` is off): the prompts of the
    eval recipes in `decontaminate_against` (found from `base_dir`, the synth recipe's folder), or of every
    registered task with its default options."""
    if not settings.decontaminate:
        return None
    against = [str(path) for path in settings.eval_recipes(base_dir)]
    return Contamination(settings.ngram, eval_prompts(against) if against else None)


def eval_prompts(against: Iterable[str] = ()) -> list[str]:
    """The prompts of the eval tasks, as each task gives them (`Task.prompts`: a new task is covered without
    a change here). `against`: eval recipe files, whose tasks are built with each recipe's options, so
    their real sources; none: every registered task with its default options. A source that cannot be
    read is a one-line error naming the recipe and the source."""
    from eval.tasks import TASKS, build_task

    recipes = [(f"filters.decontaminate_against: {path}", eval_recipe(path).tasks) for path in against] or [
        ("filters.decontaminate: every registered task's default set", {name: None for name in TASKS})]
    texts = []
    for label, tasks in recipes:
        counts = {}
        for name, options in tasks.items():
            try:
                prompts = build_task(name, options).prompts()
            except UserError as e:
                raise UserError(f"{label}: {e}") from None
            counts[name] = len(prompts)
            texts += prompts
        print(f"{label}: " + ", ".join(f"{n} {k} prompts" for k, n in counts.items()))
    return texts


def eval_recipe(path: str):
    """The eval recipe in `path`, checked as `smolalign validate` checks it (its schema and its task names)."""
    from eval.tasks import check_tasks

    recipe = load_recipe(path, stage="eval")
    raise_problems(recipe, check_tasks(recipe.tasks))
    return recipe


def check_filters(settings: FilterSpec, base_dir: Path, key: str = "filters") -> list[tuple[str, str]]:
    """(key path, problem) of the filter settings only the registry and other files can judge, found
    when the recipe is validated: `verify` names a registered task, each `decontaminate_against` file is
    an eval recipe (found from `base_dir`, the synth recipe's folder)."""
    from eval.tasks import TASKS, unknown_task

    problems = []
    if settings.verify is not None and settings.verify not in TASKS:
        problems.append((f"{key}.verify", unknown_task(settings.verify)))
    if settings.decontaminate_against and not settings.decontaminate:
        problems.append((f"{key}.decontaminate_against", "set, but `decontaminate` is false: remove one of them"))
    for i, (named, path) in enumerate(zip(settings.decontaminate_against, settings.eval_recipes(base_dir))):
        try:
            eval_recipe(str(path))
        except RecipeError as e:
            why = "; ".join(f"{k}: {m}" if k else m for k, m in e.problems)
            problems.append((f"{key}.decontaminate_against.{i}", f"{named} is not an eval recipe we can read ({why})"))
    return problems


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


def apply_filters(rows: list[dict], settings: FilterSpec | dict[str, Any], answers_of, extra=None,
                  contamination: Contamination | None = None):
    """Keep rows that pass every filter. `answers_of(row)` lists the (answer text, thinking,
    finish_reason) the strict filters judge; `extra(row)` may return a further reason; `contamination`:
    `decontamination(settings)`, built here when not given.
    Returns (kept, dropped rows with their `filter_reason`, counts per reason)."""
    settings = settings if isinstance(settings, FilterSpec) else FilterSpec.model_validate(settings)
    counts: Counter = Counter()
    dropped, kept = [], []
    if contamination is None:
        contamination = decontamination(settings)
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
    main, thinking, _ = answers_of(row)[0]
    if exact is not None:
        fingerprint = normalise(prompt) + "\0" + normalise(main)
        if fingerprint in exact:
            return "exact_duplicate"
        exact.add(fingerprint)
    if near is not None and near.seen(strip_think(main)):
        return "near_duplicate"
    if verifier is not None and not verifier(row.get("reference"), main, thinking):
        return "unverified"
    return None


def _verifier(name: str | None):
    """`verify: name` as a check of (reference, answer, thinking): the task's full reward (Task.verify); a row
    with no reference passes, unless the task scores without one (mode adherence)."""
    if not name:
        return None
    from eval.tasks import TASKS, build_task, unknown_task

    if name not in TASKS:
        raise UserError(f"filters.verify: {name!r}: {unknown_task(name)}")
    task = build_task(name, None)  # scoring against a row's reference needs none of the task's options

    def verify(reference, answer: str, thinking: bool = True) -> bool:
        if reference is None and task.needs_reference:
            return True
        return task.verify(reference, answer, "think" if thinking else "no_think")

    return verify


# The `filters` section of a synth run's summary.json: {"report": "report.json", "prompts", "rows", "kept",
# "filters": {filter: rows dropped}, ...}. A run that trains on the rows this run kept links its report
# beside that source (the eval report's "trained on" line).
FILTERS = Section("filters", required={"report": None},
                  source_link=lambda filters: ("synth filters", filters["report"]))
