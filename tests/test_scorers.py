"""The scorers agree with their references: bfcl-eval's own checker (tool calling), math-verify on the
answer text with a timeout (math), google IFEval's four numbers (IFEval), and mode adherence that can fail.

Tool-calling verdicts below were labelled by hand from BFCL's rules (types checked, int for float only at
top level, a parameter left out only when "" is among its answers, strings standardised, parallel calls in
any order) and must equal both BFCL's (its own decoder for this output format, then its checker) and our
scorer's on the text the model writes."""

import functools
import json

import pytest

from eval.tasks import ToolsTask
from eval.tasks.base import Example
from eval.tasks.tools import CATEGORIES, bfcl_check, parse_calls


# ---- tool calling ----------------------------------------------------------------------------
def fn(name, required, **props):
    """A BFCL function doc; props: param -> type, or (type, item type) for arrays/tuples."""
    properties = {}
    for p, t in props.items():
        kind, items = t if isinstance(t, tuple) else (t, None)
        properties[p] = {"type": kind, "description": p} | ({"items": {"type": items}} if items else {})
    return {"name": name, "description": name, "parameters": {"type": "dict", "properties": properties,
                                                                "required": required}}


TRIANGLE = fn("calculate_triangle_area", ["base", "height"], base="integer", height="integer", unit="string")
TRIANGLE_TRUTH = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
INTEREST = fn("finance.compound_interest", ["principal", "rate", "years"], principal="float", rate="float",
              years="integer")
INTEREST_TRUTH = [{"finance.compound_interest": {"principal": [1000.0], "rate": [0.05], "years": [3]}}]
# `unit` is optional in the function doc, but its answers do not allow leaving it out
WEATHER = fn("get_weather", ["city"], city="string", unit="string")
WEATHER_TRUTH = [{"get_weather": {"city": ["Boston", "Boston, MA"], "unit": ["celsius"]}}]
SORT = fn("sort_numbers", ["numbers"], numbers=("array", "float"), cities=("array", "string"),
          ids=("array", "integer"))
SORT_TRUTH = [{"sort_numbers": {"numbers": [[1.0, 2.5]], "cities": [["New York", "Boston"], ""], "ids": [[1, 2], ""]}}]
BUDGET = fn("find_home", ["budget"], budget="dict")
BUDGET_TRUTH = [{"find_home": {"budget": [{"min": [300000], "max": [400000], "currency": ["USD", ""]}]}}]
QUERY = fn("database.query", ["table", "conditions"], table="string", conditions=("array", "dict"))
AGE = {"field": "age", "operation": ">", "value": "25"}
QUERY_TRUTH = [{"database.query": {"table": ["user"], "conditions": [[{"field": ["age"], "operation": [">"],
                                                                       "value": ["25"]}]]}}]
MISC = fn("book", ["date"], date="string", verbose="boolean", point=("tuple", "integer"), anything="any")
MISC_TRUTH = [{"book": {"date": ["April 1, 2024"], "verbose": [True, ""], "point": [[3, 4], ""],
                        "anything": ["x", ""]}}]
SPOTIFY = fn("spotify.play", ["artist", "duration"], artist="string", duration="integer")
PARALLEL_TRUTH = [{"spotify.play": {"artist": ["Taylor Swift"], "duration": [20]}},
                  {"spotify.play": {"artist": ["Maroon 5"], "duration": [15]}}]
AREA = fn("circle.area", ["radius"], radius="float")
VOLUME = fn("cube.volume", ["side"], side="integer")
PM_TRUTH = [{"circle.area": {"radius": [2.0]}}, {"cube.volume": {"side": [3]}}]


def call(name, args):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def calls(*pairs):
    return "\n".join(call(n, a) for n, a in pairs)


T = "calculate_triangle_area"
# (case, category, functions, truth, completion, BFCL's verdict)
CASES = [
    ("exact ints", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call(T, {"base": 10, "height": 5}), True),
    ("int param given 10.0", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call(T, {"base": 10.0, "height": 5}), False),
    ("string case differs", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     call(T, {"base": 10, "height": 5, "unit": "Units"}), True),
    ("string with trailing newline", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     call(T, {"base": 10, "height": 5, "unit": "units\n"}), False),
    ("optional left out", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call(T, {"height": 5, "base": 10}), True),
    ("required missing", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call(T, {"base": 10}), False),
    ("unknown extra param", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     call(T, {"base": 10, "height": 5, "color": "red"}), False),
    ("wrong function name", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call("calc_area", {"base": 10, "height": 5}),
     False),
    ("two calls where one is asked", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     calls((T, {"base": 10, "height": 5}), (T, {"base": 10, "height": 5})), False),
    ("no call, prose", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, "The area is 25.", False),
    ("malformed JSON", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     "<tool_call>\n{'name': 'calculate_triangle_area', 'arguments': {'base': 10}}\n</tool_call>", False),
    ("arguments as a JSON string", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     '<tool_call>\n{"name": "calculate_triangle_area", '
     '"arguments": "{\\"base\\": 10, \\"height\\": 5}"}\n</tool_call>',
     False),  # BFCL's decoder for this format fails on it
    ("arguments not an object", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     '<tool_call>\n{"name": "calculate_triangle_area", "arguments": [10, 5]}\n</tool_call>', False),
    ("int given as string", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call(T, {"base": 10, "height": "5"}), False),
    ("wrong int value", "simple_python", [TRIANGLE], TRIANGLE_TRUTH, call(T, {"base": 10, "height": 6}), False),
    ("think block before the call", "simple_python", [TRIANGLE], TRIANGLE_TRUTH,
     "<think>\nbase 10, height 5\n</think>\n" + call(T, {"base": 10, "height": 5}), True),
    ("int for float at top level", "simple_python", [INTEREST], INTEREST_TRUTH,
     call("finance.compound_interest", {"principal": 1000, "rate": 0.05, "years": 3}), True),
    ("float written 0.050", "simple_python", [INTEREST], INTEREST_TRUTH,
     '<tool_call>\n{"name": "finance.compound_interest", "arguments": {"principal": 1000.0, "rate": 0.050, '
     '"years": 3}}\n</tool_call>', True),
    ("float for int", "simple_python", [INTEREST], INTEREST_TRUTH,
     call("finance.compound_interest", {"principal": 1000.0, "rate": 0.05, "years": 3.0}), False),
    ("dotted name renamed with underscore", "simple_python", [INTEREST], INTEREST_TRUTH,
     call("finance_compound_interest", {"principal": 1000.0, "rate": 0.05, "years": 3}), False),
    ("optional in doc, not in answers", "simple_python", [WEATHER], WEATHER_TRUTH,
     call("get_weather", {"city": "Boston"}),
     False),
    ("optional in doc given", "simple_python", [WEATHER], WEATHER_TRUTH,
     call("get_weather", {"city": "boston, ma", "unit": "Celsius"}), True),
    ("string punctuation differs", "simple_python", [WEATHER], WEATHER_TRUTH,
     call("get_weather", {"city": "Boston MA", "unit": "celsius"}), True),
    ("string, a different place", "simple_python", [WEATHER], WEATHER_TRUTH,
     call("get_weather", {"city": "Boston, Massachusetts", "unit": "celsius"}), False),
    ("float array", "simple_python", [SORT], SORT_TRUTH, call("sort_numbers", {"numbers": [1.0, 2.5]}), True),
    ("ints in a float array", "simple_python", [SORT], SORT_TRUTH, call("sort_numbers", {"numbers": [1, 2.5]}), False),
    ("array in another order", "simple_python", [SORT], SORT_TRUTH,
     call("sort_numbers", {"numbers": [2.5, 1.0]}), False),
    ("string array, case differs", "simple_python", [SORT], SORT_TRUTH,
     call("sort_numbers", {"numbers": [1.0, 2.5], "cities": ["new york", "BOSTON"]}), True),
    ("int array given strings", "simple_python", [SORT], SORT_TRUTH,
     call("sort_numbers", {"numbers": [1.0, 2.5], "ids": ["1", "2"]}), False),
    ("array too short", "simple_python", [SORT], SORT_TRUTH, call("sort_numbers", {"numbers": [1.0]}), False),
    ("dict exact", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": {"min": 300000, "max": 400000, "currency": "USD"}}), True),
    ("dict optional key left out", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": {"min": 300000, "max": 400000}}), True),
    ("dict required key missing", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": {"min": 300000}}),
     False),
    ("dict extra key", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": {"min": 300000, "max": 400000, "rooms": 3}}), False),
    ("dict string value, case differs", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": {"min": 300000, "max": 400000, "currency": "usd"}}), True),
    ("dict wrong value", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": {"min": 300000, "max": 500000}}), False),
    ("dict given as a string", "simple_python", [BUDGET], BUDGET_TRUTH,
     call("find_home", {"budget": "300000-400000"}), False),
    ("list of dicts", "simple_python", [QUERY], QUERY_TRUTH,
     call("database.query", {"table": "User", "conditions": [AGE]}), True),
    ("list of dicts, < for >", "simple_python", [QUERY], QUERY_TRUTH,
     call("database.query", {"table": "user", "conditions": [AGE | {"operation": "<"}]}), False),
    ("list of dicts, one too many", "simple_python", [QUERY], QUERY_TRUTH,
     call("database.query", {"table": "user", "conditions": [AGE, AGE]}),
     False),
    ("list of dicts, nested int for string", "simple_python", [QUERY], QUERY_TRUTH,
     call("database.query", {"table": "user", "conditions": [AGE | {"value": 25}]}), False),
    ("date punctuation", "simple_python", [MISC], MISC_TRUTH, call("book", {"date": "april 1 2024"}), True),
    ("boolean", "simple_python", [MISC], MISC_TRUTH, call("book", {"date": "April 1, 2024", "verbose": True}), True),
    ("boolean as a string", "simple_python", [MISC], MISC_TRUTH,
     call("book", {"date": "April 1, 2024", "verbose": "true"}),
     False),
    ("boolean as 1", "simple_python", [MISC], MISC_TRUTH,
     call("book", {"date": "April 1, 2024", "verbose": 1}), False),
    ("tuple as a list", "simple_python", [MISC], MISC_TRUTH,
     call("book", {"date": "April 1, 2024", "point": [3, 4]}), True),
    ("any as a string", "simple_python", [MISC], MISC_TRUTH,
     call("book", {"date": "April 1, 2024", "anything": "X"}), True),
    ("multiple: the right function", "multiple", [TRIANGLE, INTEREST, WEATHER], INTEREST_TRUTH,
     call("finance.compound_interest", {"principal": 1000.0, "rate": 0.05, "years": 3}), True),
    ("multiple: another declared function", "multiple", [TRIANGLE, INTEREST, WEATHER], INTEREST_TRUTH,
     call(T, {"base": 10, "height": 5}), False),
    ("multiple: two calls", "multiple", [TRIANGLE, INTEREST], INTEREST_TRUTH,
     calls(("finance.compound_interest", {"principal": 1000.0, "rate": 0.05, "years": 3}),
           (T, {"base": 10, "height": 5})), False),
    ("parallel in order", "parallel", [SPOTIFY], PARALLEL_TRUTH,
     calls(("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
           ("spotify.play", {"artist": "Maroon 5", "duration": 15})), True),
    ("parallel in another order", "parallel", [SPOTIFY], PARALLEL_TRUTH,
     calls(("spotify.play", {"artist": "maroon 5", "duration": 15}),
           ("spotify.play", {"artist": "Taylor Swift", "duration": 20})), True),
    ("parallel, one call missing", "parallel", [SPOTIFY], PARALLEL_TRUTH,
     call("spotify.play", {"artist": "Taylor Swift", "duration": 20}), False),
    ("parallel, one call twice", "parallel", [SPOTIFY], PARALLEL_TRUTH,
     calls(("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
           ("spotify.play", {"artist": "Taylor Swift", "duration": 20})), False),
    ("parallel, extra call", "parallel", [SPOTIFY], PARALLEL_TRUTH,
     calls(("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
           ("spotify.play", {"artist": "Maroon 5", "duration": 15}),
           ("spotify.play", {"artist": "Adele", "duration": 10})), False),
    ("parallel multiple, reversed", "parallel_multiple", [AREA, VOLUME], PM_TRUTH,
     calls(("cube.volume", {"side": 3}), ("circle.area", {"radius": 2})), True),
    ("parallel multiple, one wrong value", "parallel_multiple", [AREA, VOLUME], PM_TRUTH,
     calls(("circle.area", {"radius": 2.0}), ("cube.volume", {"side": 4})), False),
    ("parallel multiple, same function twice", "parallel_multiple", [AREA, VOLUME], PM_TRUTH,
     calls(("circle.area", {"radius": 2.0}), ("circle.area", {"radius": 2.0})), False),
]


@pytest.mark.parametrize("case, category, functions, truth, completion, verdict", CASES, ids=[c[0] for c in CASES])
def test_tool_scorer_agrees_with_bfcl_checker(case, category, functions, truth, completion, verdict):
    decoded = bfcl_decode(bfcl_decoder(), completion)  # BFCL's own decoder, then its own checker
    official = decoded is not None and bfcl_check(functions, decoded, truth, category)
    ex = Example(id=case, messages=[], target=truth, meta={"category": category, "functions": functions})
    ours = ToolsTask(categories=[category]).score(ex, completion, "no_think")["score"]
    assert (official, ours) == (verdict, float(verdict))


def test_tool_agreement_set_is_varied():
    assert len(CASES) >= 44
    assert {c[1] for c in CASES} == {"simple_python", "multiple", "parallel", "parallel_multiple"}
    assert sum(c[-1] for c in CASES) >= 15 and sum(not c[-1] for c in CASES) >= 15


def first_answer(params: dict, functions: list[dict], name: str) -> dict:
    """The first acceptable value of every argument the function has (a few answers also list keys the
    function does not declare: BFCL rejects those, so a correct call leaves them out)."""
    [declared] = [f["parameters"]["properties"] for f in functions if f["name"] == name]
    return {k: _first(v) for k, v in params.items() if k in declared and v[0] != ""}


def _first(options: list):
    value = options[0]
    if isinstance(value, dict):
        return {k: _first(v) for k, v in value.items() if v[0] != ""}
    if isinstance(value, list) and value and all(isinstance(d, dict) for d in value):
        return [{k: _first(v) for k, v in d.items() if v[0] != ""} for d in value]
    return value


# Items where BFCL itself rejects the first answer: simple_python_200's answer names a parameter the
# function does not declare (and misses a required one); parallel_178's answers overlap, and BFCL's
# any-order matching is greedy, so the reversed order fails there.
BFCL_QUIRKS = {("simple_python_200", "forward"), ("simple_python_200", "reversed"), ("parallel_178", "reversed")}


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel", "parallel_multiple"])
def test_every_bfcl_item_scores_its_first_answer_in_any_call_order(category):
    task = ToolsTask(categories=[category])
    examples = task.examples()
    assert len(examples) == {"simple_python": 400}.get(category, 200)
    assert all(e.tools and e.meta["category"] == category for e in examples)
    assert all(t["description"].endswith("in Python 3 syntax.") for t in examples[0].tools)
    failed = set()
    for ex in examples:
        answer = [(name, first_answer(params, ex.meta["functions"], name))
                  for truth in ex.target for name, params in truth.items()]
        for order, attempt in (("forward", answer), ("reversed", answer[::-1])):
            if task.score(ex, calls(*attempt), "no_think")["score"] != 1.0:
                failed.add((ex.id, order))
        if len(answer) > 1:
            assert task.score(ex, calls(*answer[1:]), "no_think")["score"] == 0.0, ex.id
    assert failed == {f for f in BFCL_QUIRKS if f[0].rsplit("_", 1)[0] == category}


# ---- BFCL's own decoder for this output format -------------------------------------------------
@functools.lru_cache(maxsize=1)
def bfcl_decoder():
    """bfcl-eval's handler for `<tool_call>{json}</tool_call>` models (Qwen FC, the Hermes format), loaded
    from its file with stand-ins for the three imports it does not use here (the OSS serving base class,
    the `overrides` decorator, the execute-mode converter). Its code runs unchanged."""
    import importlib.util
    import sys
    import types

    from eval.tasks.base import package_dir
    from eval.tasks.tools import INSTALL

    path = package_dir("bfcl_eval", INSTALL) / "model_handler" / "local_inference" / "qwen_fc.py"
    stand_ins = {"bfcl_eval.model_handler.local_inference.base_oss_handler": {"OSSHandler": object},
                 "overrides": {"override": lambda f: f},
                 "bfcl_eval.model_handler.utils": {"convert_to_function_call": None}}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    try:
        for name, attrs in stand_ins.items():
            sys.modules[name] = types.SimpleNamespace(**attrs)
        spec = importlib.util.spec_from_file_location("bfcl_qwen_fc", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, module_before in saved.items():
            if module_before is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module_before
    return module.QwenFCHandler


def bfcl_decode(handler_class, completion: str):
    """What BFCL makes of a completion: its response parsing (the text after the last </think>), then
    decode_ast; None where its eval runner records a decoding failure (any exception)."""
    import types

    handler = object.__new__(handler_class)
    response = types.SimpleNamespace(choices=[types.SimpleNamespace(text=completion)],
                                     usage=types.SimpleNamespace(prompt_tokens=0, completion_tokens=0))
    text = handler._parse_query_response_prompting(response)["model_responses"]
    try:
        return handler.decode_ast(text, "python", True)
    except Exception:
        return None


A = call("f", {"x": 1})
B = call("g", {"y": "two"})
DECODER_CASES = {
    # a call inside a think block is not a call
    "call in the think block, another after it": ("<think>\nMaybe " + A + "\n</think>\n" + B, [{"g": {"y": "two"}}]),
    "call in the think block only": ("<think>\n" + A + "\n</think>\nNo call is needed.", []),
    "call in a second think block": ("<think>\nplan\n</think>\n<think>\n" + A + "\n</think>\nDone.", []),
    # a broken block next to a valid one is skipped
    "broken JSON beside a valid call": ("<tool_call>\n{'name': 'f', 'arguments': {}}\n</tool_call>\n" + B,
                                        [{"g": {"y": "two"}}]),
    "only a broken block": ("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}\n</tool_call>", []),
    # arguments that are not an object fail decoding
    "arguments as a JSON string": ('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>', None),
    "arguments missing": ('<tool_call>\n{"name": "f"}\n</tool_call>', None),
    "arguments null": ('<tool_call>\n{"name": "f", "arguments": null}\n</tool_call>', None),
    "a list in the block": ('<tool_call>\n[{"name": "f", "arguments": {}}]\n</tool_call>', None),
    # the block is `<tool_call>` newline, JSON, newline `</tool_call>`
    "no newlines inside the tags": ('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', []),
    "spaces around the JSON": ('<tool_call>\n  {"name": "f", "arguments": {"x": 1}}  \n</tool_call>',
                               [{"f": {"x": 1}}]),
    "two calls": (A + "\n" + B, [{"f": {"x": 1}}, {"g": {"y": "two"}}]),
    "prose": ("The answer is 4.", []),
    "unclosed think block": ("<think>\nI will call " + A, [{"f": {"x": 1}}]),
}


@pytest.mark.parametrize("case", DECODER_CASES)
def test_tool_calls_are_decoded_as_bfcl_decodes_them(case):
    completion, expected = DECODER_CASES[case]
    assert bfcl_decode(bfcl_decoder(), completion) == expected  # what BFCL's own code makes of it
    assert parse_calls(completion) == expected


def test_unknown_bfcl_category_lists_the_available_ones():
    with pytest.raises(ValueError, match="simple_python, multiple, parallel"):
        ToolsTask(categories=["simple", "multiple"])
    assert set(CATEGORIES) >= {"simple_python", "multiple"}


def test_checker_import_leaves_no_stand_in_behind():
    import sys

    from eval.tasks.tools import official_checker

    official_checker()
    assert "bfcl_eval.constants.model_config" not in sys.modules
    assert not any(m.split(".")[0] in {"openai", "anthropic", "mistralai", "cohere"} for m in sys.modules)


# ---- math --------------------------------------------------------------------------------------
def math_score(reference, completion):
    from eval.tasks import MathTask

    return MathTask().score(Example(id="m", messages=[], target=reference), completion, "think")["score"]


@pytest.mark.parametrize("reference, completion, right", [
    # math-verify reads the answer text: an anchored answer, not the last number in the sentence
    ("204", "Final answer: 204 minutes, including the 24 minutes spent in the coffee shop.", True),
    ("24", "Final answer: 204 minutes, including the 24 minutes spent in the coffee shop.", False),
    ("204", "The final answer is $204$ minutes, including $24$ minutes.", True),
    # a LaTeX fraction is one number, not its denominator
    ("\\frac{3}{4}", "The probability is $\\frac{3}{4}$.", True),
    ("4", "The probability is $\\frac{3}{4}$.", False),
    ("2", "So we get $\\frac{1}{2}$.", False),
    ("0.5", "So we get $\\frac{1}{2}$.", True),
    ("\\frac{1}{2}", "so the answer is 0.5", True),
    ("\\frac{\\sqrt{6}}{4}", "Hence $\\boxed{\\dfrac{\\sqrt 6}{4}}$.", True),
    ("(-\\infty,-1)\\cup(6,+\\infty)", "\\boxed{(-\\infty,-1)\\cup(6,\\infty)}", True),
    ("$4049$", "\\boxed{4049}", True),  # CNMO writes its answers inside $...$
    # a CNMO answer math-verify cannot turn into mathematics is compared as text, not read as "0"
    ("$\\lambda=2\\sqrt{2}, A(\\pm 1, 0)$", "\\boxed{0}", False),
    ("$\\lambda=2\\sqrt{2}, A(\\pm 1, 0)$", "\\boxed{\\lambda=2\\sqrt{2}, A(\\pm 1, 0)}", True),
    # ... where spacing never decides: whitespace and LaTeX spacing commands are left out on both sides
    ("\\lambda=2\\sqrt{2}, A(\\pm 1, 0)", "\\boxed{\\lambda=2\\sqrt{2},\\ A(\\pm1,0)}", True),
    ("$\\lambda=2\\sqrt{2},\\;A(\\pm1,0)$", "\\boxed{\\lambda = 2\\sqrt{2},\\, A(\\pm 1,\\! 0)}", True),
    ("\\lambda=2\\sqrt{2}, A(\\pm 1, 0)", "\\boxed{\\lambda=2\\sqrt{3},\\ A(\\pm1,0)}", False),
    ("\\lambda=2\\sqrt{2}, A(\\pm 1, 0)", "\\boxed{\\lambda=2\\sqrt{2},\\ B(\\pm1,0)}", False),
    ("204", "<think>\\boxed{204}</think> I could not finish.", False),  # the think block is not the answer
    ("204", "", False),
])
def test_math_reads_the_answer_text_with_math_verify(reference, completion, right):
    assert math_score(reference, completion) == float(right)


def test_no_shipped_reference_is_satisfied_by_zero():
    """A reference that parses to 0 by accident makes `\\boxed{0}` right; only real zeros may."""
    from eval.tasks import MathTask

    for row in MathTask().rows():
        gold = str(row["answer"]).strip("$ ")
        assert math_score(row["answer"], "\\boxed{0}") == float(gold == "0"), row["answer"]


def test_every_check_has_a_deadline_in_the_main_thread_and_in_threads():
    import threading
    import time

    from eval.tasks.math import check

    assert check("204", "\\boxed{204}") == "equal"  # the helper is up: what follows times checking only
    start = time.monotonic()
    assert check("204", "\\boxed{10^{10^{10}}}", timeout_s=1) in {"different", "timeout"}
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.append(check("204", "\\boxed{10^{10^{10}}}", timeout_s=1)))
    worker.start()
    worker.join(30)
    assert verdicts and verdicts[0] in {"different", "timeout"}
    assert time.monotonic() - start < 12
    assert check("204", "\\boxed{204}") == "equal"


def test_a_dead_helper_is_replaced():
    from eval.tasks.math import _CHECKER, check

    assert check("1/2", "\\boxed{0.5}") == "equal"
    _CHECKER.process.kill()
    _CHECKER.process.wait()
    assert check("1/2", "\\boxed{0.5}") == "equal"


# ---- ifeval ------------------------------------------------------------------------------------
def ifeval_example(ids, kwargs, prompt="p"):
    return Example(id="i", messages=[], target={"instruction_id_list": ids, "kwargs": kwargs}, meta={"prompt": prompt})


SENTENCES = ["length_constraints:number_sentences"]


def test_punkt_ships_with_the_package_and_splits_as_nltk_english():
    import nltk

    from eval.tasks.ifeval import punkt_available

    assert punkt_available()
    # NLTK's English Punkt: its abbreviations (dr, p.m, mrs, prof, jan, u.s.a) end no sentence, "e.g" is not one
    assert nltk.sent_tokenize("Dr. Smith arrived at 5 p.m. today. He left at once.") == [
        "Dr. Smith arrived at 5 p.m. today.", "He left at once."]
    assert nltk.sent_tokenize("Mr. and Mrs. Brown met Prof. Lee on Jan. 5. They talked.") == [
        "Mr. and Mrs. Brown met Prof. Lee on Jan. 5.", "They talked."]
    assert nltk.sent_tokenize("The U.S.A. is large. It cost 1,000 dollars.") == [
        "The U.S.A. is large.", "It cost 1,000 dollars."]
    assert nltk.sent_tokenize("Wait... what? No way! Really.") == ["Wait... what?", "No way!", "Really."]
    assert nltk.sent_tokenize('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]
    assert nltk.sent_tokenize("See e.g. the appendix. It is short.") == ["See e.g.", "the appendix.", "It is short."]


def test_number_of_sentences_is_scored():
    from eval.tasks import IFEvalTask

    task = IFEvalTask()
    fewer_than_3 = ifeval_example(SENTENCES, [{"num_sentences": 3, "relation": "less than"}])
    assert task.score(fewer_than_3, "Dr. Smith arrived at 5 p.m. today. He left.", "no_think")["score"] == 1.0
    assert task.score(fewer_than_3, "One. Two. Three.", "no_think")["score"] == 0.0
    capitals = ifeval_example(["change_case:capital_word_frequency"],
                              [{"capital_frequency": 2, "capital_relation": "less than"}])
    one_capital = task.score(capitals, "HELLO there", "no_think")
    assert one_capital["score"] == 1.0 and one_capital["unavailable"] == 0
    assert task.score(capitals, "HELLO THERE WORLD", "no_think")["score"] == 0.0


def test_ifeval_four_numbers_as_google_defines_them():
    from eval.tasks import IFEvalTask

    task = IFEvalTask()
    lower_no_comma = ifeval_example(["change_case:english_lowercase", "punctuation:no_comma"], [{}, {}])
    end = ifeval_example(["startend:end_checker"], [{"end_phrase": "Keep going."}])
    examples = [lower_no_comma, lower_no_comma, end, end]
    completions = ["all lower, no", "all lower and no comma", "Keep going.\n**Sure**", ""]
    scores = [task.score(e, c, "no_think") for e, c in zip(examples, completions)]
    result = task.aggregate(examples, scores)
    # prompts: fail (comma), pass, strict fail / loose pass (without its last line), empty fails
    assert result["prompt_strict"] == 0.25 and result["prompt_loose"] == 0.5
    # instructions: 1+2+0+0 of 6 strict, 1+2+1+0 of 6 loose
    assert result["instruction_strict"] == round(3 / 6, 4) and result["instruction_loose"] == round(4 / 6, 4)
    assert result["score"] == result["prompt_strict"] and result["unavailable_instructions"] == 0


def test_unavailable_instructions_leave_numerator_and_denominator(monkeypatch):
    import eval.tasks.ifeval as ifeval

    monkeypatch.setattr(ifeval, "punkt_available", lambda: False)
    task = ifeval.IFEvalTask()
    mixed = ifeval_example(SENTENCES + ["punctuation:no_comma"], [{"num_sentences": 3, "relation": "less than"}, {}])
    only = ifeval_example(SENTENCES, [{"num_sentences": 3, "relation": "less than"}])
    lower = ifeval_example(["change_case:english_lowercase"], [{}])
    examples = [mixed, only, lower]
    scores = [task.score(e, c, "no_think") for e, c in zip(examples, ["No commas here.", "One. Two.", "UPPER"])]
    result = task.aggregate(examples, scores)
    # prompt level: only `lower` can be judged whole (and fails); instruction level: no_comma passes, lowercase fails
    assert result["prompt_strict"] == 0.0 and result["prompts_left_out"] == 2
    assert result["instruction_strict"] == 0.5 and result["unavailable_instructions"] == 2


def test_only_google_ifeval_is_comparable():
    from eval.tasks import IFEvalTask

    task = IFEvalTask()
    ex = ifeval_example(["punctuation:no_comma"], [{}])
    shipped = task.aggregate([ex], [task.score(ex, "no comma", "no_think")])
    assert shipped["comparable"] == 0.0 and "shipped" in shipped["source"]
    assert IFEvalTask(source="google/IFEval").aggregate([ex], [task.score(ex, "x", "no_think")])["comparable"] == 1.0


LETTERS = ["keywords:letter_frequency"]


def letters(letter, relation, frequency):
    return ifeval_example(LETTERS, [{"letter": letter, "let_relation": relation, "let_frequency": frequency}])


def test_letter_frequency_counts_the_character_it_is_given_on_every_run():
    """The `letter` kwarg is counted as given; if-verifiable 0.1.2's checker (google's code as read at
    83282e4) swaps a non-letter (`!`, `#`: google/IFEval has both) for a random letter on every call."""
    from eval.tasks import IFEvalTask

    task = IFEvalTask()
    bangs = letters("!", "at least", 6)
    assert {task.score(bangs, "Wow! Yes! Go! Run! Now! Ok!", "no_think")["score"] for _ in range(40)} == {1.0}
    assert {task.score(bangs, "Wow! Yes! Go! Run! Now!", "no_think")["score"] for _ in range(40)} == {0.0}
    hashes = letters("#", "less than", 2)
    assert {task.score(hashes, "# Title\nabc", "no_think")["score"] for _ in range(40)} == {1.0}
    assert {task.score(hashes, "# One\n## Two", "no_think")["score"] for _ in range(40)} == {0.0}


def test_letter_frequency_agrees_with_the_reference_checker_on_letters():
    """On a-z, where google's checker (if-verifiable's copy of it) is deterministic, ours gives its verdicts."""
    import random

    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    from eval.tasks import IFEvalTask

    rng, task, verdicts = random.Random(0), IFEvalTask(), set()
    for _ in range(300):
        text = "".join(rng.choice("aAbBeE xyz!.\n") for _ in range(rng.randint(1, 40)))
        kwargs = {"letter": rng.choice("abeABE"), "let_relation": rng.choice(["less than", "at least"]),
                  "let_frequency": rng.randint(0, 12)}
        reference = INSTRUCTION_DICT[LETTERS[0]](LETTERS[0])
        reference.build_description(**kwargs)
        expected = bool(text.strip() and reference.check_following(text))
        ours = task.score(ifeval_example(LETTERS, [kwargs]), text, "no_think")["score"]
        assert ours == float(expected), (text, kwargs)
        verdicts.add(expected)
    assert verdicts == {True, False}


def test_language_detection_gives_the_same_verdict_on_every_run():
    """langdetect draws at random unless seeded: "Jo jo" is Finnish or Slovenian from one call to the next."""
    from eval.tasks import IFEvalTask

    task = IFEvalTask()
    finnish = ifeval_example(["language:response_language"], [{"language": "fi"}])
    assert len({task.score(finnish, "Jo jo", "no_think")["score"] for _ in range(60)}) == 1


NTH = ["length_constraints:nth_paragraph_first_word"]
BOOSTER = [{"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "booster"}]


def test_ifeval_checks_the_response_as_written_as_google_does():
    """google checks the raw text: leading blank lines make the first paragraph empty (strict fails;
    loose, without the first line, passes). Only a think block, and the line breaks after it, are removed."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    from eval.tasks import IFEvalTask

    raw = "\n\nBooster shots help.\n\nThat is all."
    reference = INSTRUCTION_DICT[NTH[0]](NTH[0])
    reference.build_description(**BOOSTER[0])
    assert not reference.check_following(raw) and reference.check_following(raw.strip())
    task, example = IFEvalTask(), ifeval_example(NTH, BOOSTER)
    ours = task.score(example, raw, "no_think")
    assert (ours["prompt_strict"], ours["prompt_loose"]) == (0.0, 1.0)
    thought = task.score(example, "<think>\nTwo paragraphs.\n</think>\n\nBooster shots help.\n\nThat is all.", "think")
    assert (thought["prompt_strict"], thought["prompt_loose"]) == (1.0, 1.0)
    # trailing whitespace is the response's own: an end phrase followed by blank lines is still checked raw
    end = ifeval_example(["startend:end_checker"], [{"end_phrase": "Any other questions?"}])
    assert task.score(end, "Done. Any other questions?\n\n", "no_think")["score"] == 1.0


# ---- mode adherence ----------------------------------------------------------------------------
NO_THINK_BAD = [
    "Okay, so the user is asking about the boiling point of water. At sea level it is 100 °C.\n\n100 °C.",
    "Alright, let me figure this out. 15% of 200 is 30.\n\n30",
    "Let's think step by step. 15% of 200 is 0.15 × 200 = 30. The answer is 30.",
    "Let me think. A hexagon has six sides.",
    "Hmm, 91 = 7 × 13, so no.",
    "First, I need to recall the capital of Canada. It is Ottawa.",
    "The user wants a synonym for happy. Joyful.",
    "91 is prime. Wait, 7 × 13 = 91, so it is not prime.",
    "30. Let me double-check: 0.15 × 200 = 30.",
    "<think>\n15% of 200 = 30\n</think>\n30",
    "<think>\n\n</think>\n30",  # a second empty block: the template already wrote one
    "30 </think>",
    "",
    "   \n",
]
NO_THINK_GOOD = [
    "Water boils at 100 °C (212 °F) at sea level.",
    "Okay! How about Whiskers?",
    "Red, yellow and blue.",
    "No: 91 = 7 × 13.",
    "First, note that a leap year has 366 days.",
    "Ottawa. Let me know if you want more facts about Canada.",
    "Merci.",
]
THINK_BAD = [
    "100 °C.",  # answered directly
    "<think>\n\n</think>\n100 °C.",  # empty reasoning
    "<think>\nAt sea level water boils at",  # cut off while reasoning
    "<think>\nAt sea level water boils at 100 °C.\n</think>\n",  # no answer
    "100 °C.\n<think>\nchecking\n</think>",  # the block does not open the turn
    "<think>\na\n</think>\n<think>\nb\n</think>\n100 °C.",  # two blocks
    "",
]
THINK_GOOD = ["<think>\nAt sea level water boils at 100 °C.\n</think>\n\n100 °C.",
              "<think>Six sides.</think>A hexagon has 6 sides."]


@pytest.mark.parametrize("mode, completion, follows", [("no_think", c, False) for c in NO_THINK_BAD]
                         + [("no_think", c, True) for c in NO_THINK_GOOD] + [("think", c, False) for c in THINK_BAD]
                         + [("think", c, True) for c in THINK_GOOD])
def test_each_mode_half_can_fail_on_realistic_bad_outputs(mode, completion, follows):
    from eval.tasks import ModeTask
    from eval.tasks.mode import mode_problem

    ex = Example(id="m", messages=[], target=None)
    assert ModeTask().score(ex, completion, mode)["score"] == float(follows), mode_problem(completion, mode)
