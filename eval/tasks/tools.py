"""Tool calling: BFCL questions with possible answers, scored by our own AST-style matcher.

Data: the `bfcl-eval` package's JSON (categories `simple_python`, `multiple`, ...), read directly;
its own checker imports every provider SDK, so it is not used. The model sees the functions as
`xml_tools` (our template) and must answer with `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Matching, as BFCL defines it: exactly one call (for these categories), the right function name,
no unknown arguments, every required argument present, and each argument's value among the
possible answers. An empty string among the possible values marks the argument optional, also for
keys of a dict-valued argument. Numbers compare numerically (5 == 5.0); strings are compared as
BFCL standardises them: lower case, without spaces and the characters , . / - _ * ^, single quotes
as double quotes (so "April 1, 2024" == "april 1 2024", but "<" != ">").
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from eval.tasks.base import Example, Task, TaskContext, package_dir, strip_think

CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class ToolsTask(Task):
    name = "tools"

    def __init__(self, categories: list[str] | None = None):
        self.categories = categories or ["simple_python", "multiple"]

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        data = package_dir("bfcl_eval", "pip install --no-deps bfcl-eval==2026.3.23") / "data"
        rows = []
        for cat in self.categories:
            questions = _jsonl(data / f"BFCL_v4_{cat}.json")
            answers = {a["id"]: a["ground_truth"] for a in _jsonl(data / "possible_answer" / f"BFCL_v4_{cat}.json")}
            rows += [(q, answers[q["id"]]) for q in questions if q["id"] in answers]
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        out = []
        for i in order if n is None else order[:n]:
            q, truth = rows[i]
            tools = [_schema(f) for f in q["function"]]
            out.append(Example(id=q["id"], messages=q["question"][0], target=truth, tools=tools,
                               meta={"required": {f["name"]: f["parameters"].get("required", [])
                                                                  for f in q["function"]}}))
        return out

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        calls = parse_calls(strip_think(completion))
        return {"score": float(calls is not None and matches(calls, example.target, example.meta.get("required", {})))}


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _schema(function: dict) -> dict:
    """BFCL writes the JSON-schema type `dict` where JSON Schema says `object`."""
    text = json.dumps(function).replace('"type": "dict"', '"type": "object"')
    return json.loads(text)


def parse_calls(text: str) -> list[dict] | None:
    """[{"name", "arguments"}] from <tool_call> blocks; None when any block is not valid JSON."""
    calls = []
    for block in CALL.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or "name" not in call:
            return None
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        calls.append({"name": call["name"], "arguments": args if isinstance(args, dict) else None})
    return calls


def matches(calls: list[dict], truth: list[dict], required: dict[str, list[str]]) -> bool:
    if len(calls) != len(truth):
        return False
    return all(_match_one(call, expected, required) for call, expected in zip(calls, truth))


def _match_one(call: dict, expected: dict, required: dict[str, list[str]]) -> bool:
    [(name, params)] = expected.items()
    args = call["arguments"]
    if call["name"] != name or args is None:
        return False
    if set(args) - set(params):
        return False  # an argument the function does not have
    for param, allowed in params.items():
        if param not in args:
            if "" not in allowed and param in required.get(name, params):
                return False
            continue
        if not any(_same(args[param], ok) for ok in allowed if ok != "" or args[param] == ""):
            return False
    return True


def _same(value: Any, allowed: Any) -> bool:
    if isinstance(allowed, bool) or isinstance(value, bool):
        return value is allowed if isinstance(allowed, bool) else False
    if isinstance(allowed, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(allowed)
    if isinstance(allowed, str) and isinstance(value, str):
        return _norm(value) == _norm(allowed)
    if isinstance(allowed, list) and isinstance(value, list):
        return len(value) == len(allowed) and all(_same(v, a) for v, a in zip(value, allowed))
    if isinstance(allowed, dict) and isinstance(value, dict):
        return set(value) <= set(allowed) and all(_same_key(value, k, allowed[k]) for k in allowed)
    return value == allowed


def _same_key(value: dict, key: str, allowed: Any) -> bool:
    """A key of a dict-valued argument: absent only when "" is among its alternatives, as BFCL says."""
    options = allowed if isinstance(allowed, list) else [allowed]
    if key not in value:
        return "" in options
    return any(_same(value[key], ok) for ok in options)


# BFCL's ast_checker drops exactly these characters: formatting noise, not meaning ("<" and ">" stay).
_NOISE = re.compile(r"[ ,./\-_*^]")


def _norm(s: str) -> str:
    return _NOISE.sub("", s.strip()).lower().replace("'", '"')
