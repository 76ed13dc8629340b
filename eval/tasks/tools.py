"""Tool calling: BFCL questions with possible answers, scored by the checker that ships inside `bfcl-eval`.

Data: the `bfcl-eval` package's JSON for the single-turn Python AST categories (`simple_python`,
`multiple`, `parallel`, `parallel_multiple` and their `live_` versions), read directly. The model sees
the functions as `xml_tools` (our template), with BFCL's Python hint appended to each description as
BFCL does for every model, and must answer with one `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
block per call.

Decoding follows bfcl-eval's handler for this output format (the Qwen FC handler, Hermes-style
`<tool_call>` blocks; tested against its own code): the answer is the text after the last `</think>`
(a call inside a think block is not a call), each block is `<tool_call>`, newline, JSON, newline,
`</tool_call>`; a block that is not valid JSON is skipped; a call that is not an object with a `name`
and an `arguments` object (a JSON string included) makes the whole answer a decoding failure.

Scoring is BFCL's own `ast_checker` (bfcl_eval/eval_checker/ast_eval/ast_checker.py), called the way
BFCL's eval runner calls it for these categories: language Python, the category's name, the question's
function list as shipped. Its rules include: declared types are checked (an int is accepted for a float
parameter only at top level), strings compare after BFCL's standardisation, a parameter may be left out
only when its possible answers include "", and parallel calls match in any order.

The checker module imports the provider model-config table at module level (for one lookup: whether a
model's function names had "." replaced by "_"), and that table imports every provider SDK. We load the
checker with a stand-in for that one module, registered only while the checker is imported: it answers
"no renaming" for every model, which is right for us because our template shows the model the function
names unchanged. The checker's code is not changed.

Training: the reward is BFCL's verdict (1 or 0). A no-think row teaches the first possible answer BFCL
lists for each call (an argument whose first possible answer is "" left out, as BFCL lets it be), one
`<tool_call>` block per call; an item whose first answer BFCL itself rejects is a prompt row.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import types
from collections.abc import Mapping
from functools import lru_cache

from eval.tasks.base import Example, Task, TaskContext, package_dir, sample_indices
from pipeline.core.chat import THINK_CLOSE
from pipeline.core.errors import UserError
from pipeline.core.files import read_jsonl

INSTALL = "pip install --no-deps bfcl-eval==2026.3.23"
# Single-turn categories that BFCL scores with the AST checker in Python. Java/JavaScript need BFCL's
# string-typed decoding, irrelevance/multi-turn/agentic categories use other checkers.
CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple",
              "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]
# What BFCL appends to every Python function description before any model sees it.
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."
CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)  # exactly BFCL's pattern for this format
MODEL_NAME = "smolalign"  # only looked up in the stand-in below


class ToolsTask(Task):
    name = "tools"

    def __init__(self, categories: list[str] | None = None):
        self.categories = categories or ["simple_python", "multiple"]
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise UserError(f"unknown BFCL categories {unknown}; available (single-turn, Python, AST-checked): "
                             f"{', '.join(CATEGORIES)}")

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        data = package_dir("bfcl_eval", INSTALL) / "data"
        rows = []
        for cat in self.categories:
            questions = read_jsonl(data / f"BFCL_v4_{cat}.json")
            possible = read_jsonl(data / "possible_answer" / f"BFCL_v4_{cat}.json")
            answers = {a["id"]: a["ground_truth"] for a in possible}
            rows += [(cat, q, answers[q["id"]]) for q in questions if q["id"] in answers]
        out = []
        for i in sample_indices(len(rows), n, seed):
            cat, q, truth = rows[i]
            # BFCL's first (only) turn of the conversation, with the functions as the row's tools
            row = {"messages": q["question"][0], "tools": [_schema(f) for f in q["function"]]}
            meta = {"category": cat, "functions": q["function"]}
            out.append(Example.from_row(q["id"], row, target=truth, meta=meta))
        return out

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        calls = parse_calls(completion)
        if calls is None:
            return {"score": 0.0}
        return {"score": float(bfcl_check(example.meta["functions"], calls, example.target, example.meta["category"]))}

    def answer(self, example: Example) -> str:
        """One `<tool_call>` block per expected call, with the first possible answer of each argument."""
        declared = {f["name"]: f.get("parameters", {}).get("properties", {}) for f in example.meta["functions"]}
        blocks = []
        for truth in example.target:
            for name, params in truth.items():
                arguments = {k: _first(v) for k, v in params.items() if k in declared.get(name, {}) and v[0] != ""}
                blocks.append(f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>")
        return "\n".join(blocks)


def _first(options: list):
    """The first possible answer BFCL lists for an argument; inside a dict (or a list of dicts) the first of
    each key's own options, leaving out keys that may be omitted. Keys the function does not declare are
    left out by the caller: BFCL rejects them."""
    value = options[0]
    if isinstance(value, dict):
        return {k: _first(v) for k, v in value.items() if v[0] != ""}
    if isinstance(value, list) and value and all(isinstance(d, dict) for d in value):
        return [{k: _first(v) for k, v in d.items() if v[0] != ""} for d in value]
    return value


def _schema(function: dict) -> dict:
    """The function as the model sees it: BFCL's Python hint on the description; BFCL writes the
    JSON-schema type `dict` where JSON Schema says `object`."""
    function = json.loads(json.dumps(function).replace('"type": "dict"', '"type": "object"'))
    function["description"] = function.get("description", "") + PYTHON_HINT
    return function


def parse_calls(completion: str) -> list[dict] | None:
    """BFCL's decoded form, [{name: {argument: value}}], as its decoder for this format makes it (see the
    module docstring); None where BFCL records a decoding failure.

    >>> parse_calls('<think>\\nno\\n</think>\\n<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>')
    [{'f': {'x': 1}}]
    """
    answer = completion.rsplit(THINK_CLOSE, 1)[-1]
    blocks = []
    for block in CALL.findall(answer):
        try:
            blocks.append(json.loads(block))
        except json.JSONDecodeError:  # BFCL skips it and decodes the others
            continue
    if not all(isinstance(b, dict) and "name" in b and isinstance(b.get("arguments"), dict) for b in blocks):
        return None
    try:
        return [{b["name"]: dict(b["arguments"])} for b in blocks]
    except TypeError:  # a name that cannot be a key (a list, an object)
        return None


def bfcl_check(functions: list[dict], calls: list[dict], truth: list[dict], category: str) -> bool:
    """BFCL's verdict for decoded calls, exactly as its eval runner asks for it."""
    checker = official_checker()
    from bfcl_eval.constants.enums import Language

    return bool(checker.ast_checker(functions, calls, truth, Language.PYTHON, category, MODEL_NAME)["valid"])


class _NoRenaming(Mapping):
    """Stands in for bfcl's MODEL_CONFIG_MAPPING: every model keeps "." in function names."""

    _config = types.SimpleNamespace(underscore_to_dot=False)

    def __getitem__(self, model_name: str):
        return self._config

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


@lru_cache(maxsize=1)
def official_checker() -> types.ModuleType:
    """bfcl-eval's ast_checker module, imported with the provider table replaced (see module docstring)."""
    package_dir("bfcl_eval", INSTALL)
    table = "bfcl_eval.constants.model_config"
    stand_in = types.ModuleType(table, "stand-in: the only name ast_checker uses from the provider table")
    stand_in.MODEL_CONFIG_MAPPING = _NoRenaming()
    real = sys.modules.get(table)
    sys.modules[table] = stand_in
    try:
        return importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
    finally:  # leave no stand-in behind for anyone importing the real table later
        if real is None:
            del sys.modules[table]
        else:
            sys.modules[table] = real


__all__ = ["CATEGORIES", "ToolsTask", "bfcl_check", "official_checker", "parse_calls"]
