"""Scoring is deterministic and right on hand-made cases, for every task, with no model involved."""


import pytest

from eval.tasks import IFEvalTask, MathTask, ModeTask, strip_think
from eval.tasks.base import Example
from eval.tasks.tools import parse_calls


def test_strip_think():
    assert strip_think("<think>\nx = 2\n</think>\n\nThe answer is 4.") == "The answer is 4."
    assert strip_think("<think>\nstill thinking when cut off") == ""
    assert strip_think("Just 4.") == "Just 4."


# ---- math ------------------------------------------------------------------------------------
def math_example(answer):
    return Example(id="m", messages=[], target=answer)


def test_math_right_wrong_and_equivalent_forms():
    task = MathTask()
    assert score(task, math_example("204"), "<think>9/s + t = 4 ...</think> It takes \\boxed{204} minutes.") == 1.0
    assert score(task, math_example("204"), "It takes \\boxed{203} minutes.") == 0.0
    for form in ("\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{1/2}", "so the answer is 0.5"):
        assert score(task, math_example("\\frac{1}{2}"), form) == 1.0, form
    # math-verify reads several boxed answers as one set: hedging between answers is not the answer
    assert score(task, math_example("3"), "First \\boxed{2}, no wait: \\boxed{3}") == 0.0
    assert score(task, math_example("3"), "<think>\\boxed{3}</think> I give up.") == 0.0  # answer, not reasoning
    assert score(task, math_example("3"), "") == 0.0


def test_math_examples_from_the_package_are_seeded():
    task = MathTask(subsets=["MATH500"])
    a, b = task.examples(n=5, seed=1), task.examples(n=5, seed=1)
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 5
    assert all(e.meta["subset"] == "MATH500" and "\\boxed{}" in e.messages[0]["content"] for e in a)
    assert [e.id for e in task.examples(n=5, seed=2)] != [e.id for e in a]
    assert len(MathTask().rows()) == 374


# ---- ifeval ----------------------------------------------------------------------------------
def ifeval_example(ids, kwargs, prompt="p"):
    return Example(id="i", messages=[], target={"instruction_id_list": ids, "kwargs": kwargs}, meta={"prompt": prompt})


def test_ifeval_strict_and_loose():
    task = IFEvalTask()
    lower = ifeval_example(["change_case:english_lowercase"], [{}])
    assert score(task, lower, "all lowercase here.") == 1.0
    assert score(task, lower, "Not lowercase.") == 0.0
    no_comma = ifeval_example(["punctuation:no_comma"], [{}])
    assert score(task, no_comma, "<think>a, b, c</think>No commas at all") == 1.0  # the think block is not judged
    # strict fails, loose passes: loose also tries the answer without its first line
    end = ifeval_example(["startend:end_checker"], [{"end_phrase": "Keep going."}])
    details = task.score_details(end, "Keep going.\n**Sure**")
    assert details["prompt_strict"] == 0.0 and details["prompt_loose"] == 1.0
    both = ifeval_example(["change_case:english_lowercase", "punctuation:no_comma"], [{}, {}])
    d = task.score_details(both, "lower, but a comma")
    assert d["prompt_strict"] == 0.0 and [i["strict"] for i in d["instructions"]] == [True, False]


def test_ifeval_google_source_is_comparable_and_its_offline_fallback_says_it_is_not(monkeypatch):
    hub_rows = [{"key": 1000, "prompt": "Answer in lowercase.",
                 "instruction_id_list": ["change_case:english_lowercase"],
                 "kwargs": [{}]}]
    monkeypatch.setattr("datasets.load_dataset", lambda name, split: hub_rows if name == "google/IFEval" else None)
    task = IFEvalTask(source="google/IFEval")
    [ex] = task.examples(seed=0)
    summary = task.aggregate([ex], [task.score(ex, "all lowercase here", "no_think")])
    assert ex.id == "ifeval-1000" and summary["comparable"] == 1.0 and summary["source"] == "google/IFEval"

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'google/IFEval' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr("datasets.load_dataset", offline)
    task = IFEvalTask(source="google/IFEval")
    examples = task.examples(seed=0)
    summary = task.aggregate(examples, [task.score(e, "x", "no_think") for e in examples])
    assert len(examples) == 24 and summary["comparable"] == 0.0
    assert summary["source"].startswith("shipped offline set") and "google/IFEval unreachable" in summary["source"]


def test_ifeval_unknown_ids_and_unavailable_punkt():
    task = IFEvalTask()
    with pytest.raises(ValueError, match="unknown IFEval instruction ids"):
        score(task, ifeval_example(["made:up"], [{}]), "x")
    from eval.tasks.ifeval import punkt_available

    sentences = ifeval_example(["length_constraints:number_sentences"],
                               [{"num_sentences": 3, "relation": "less than"}])
    details = task.score_details(sentences, "One. Two.")
    if punkt_available():
        assert details["unavailable"] == 0 and details["prompt_strict"] == 1.0
    else:
        assert details["unavailable"] == 1 and details["instructions"] == []



def test_ifeval_legacy_punkt_pickle_alone_is_not_enough(tmp_path, monkeypatch):
    """nltk >= 3.9 reads `punkt_tab` even when asked for the legacy pickle: having only the pickle
    must probe as missing, not crash with LookupError."""
    import nltk

    from eval.tasks.ifeval import _clear_nltk_caches, punkt_probe

    (tmp_path / "tokenizers" / "punkt").mkdir(parents=True)
    (tmp_path / "tokenizers" / "punkt" / "english.pickle").write_bytes(b"")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    _clear_nltk_caches()
    try:
        assert not punkt_probe()
    finally:
        monkeypatch.undo()
        _clear_nltk_caches()


def test_shipped_ifeval_prompts_are_all_checkable():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    examples = IFEvalTask().examples()
    assert len(examples) == 24
    for ex in examples:
        for i, kwargs in zip(ex.target["instruction_id_list"], ex.target["kwargs"]):
            INSTRUCTION_DICT[i](i).build_description(**kwargs)


# ---- tools -----------------------------------------------------------------------------------
# Verdicts against bfcl-eval's own checker are in tests/test_scorers.py; here only our parsing.
def test_tool_call_parsing():
    """Our template's call format; where BFCL's decoder is particular, tests/test_scorers.py compares with it."""
    f = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    g = '<tool_call>\n{"name": "g", "arguments": {"a": [1]}}\n</tool_call>'
    assert parse_calls(f + "\n" + g) == [{"f": {}}, {"g": {"a": [1]}}]
    assert parse_calls("no call") == []
    assert parse_calls("<tool_call>\n{'name': 'f'}\n</tool_call>") == []  # not JSON: skipped
    assert parse_calls('<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>') is None


# ---- mode ------------------------------------------------------------------------------------
def mode_example(mode):
    return Example(id="m", messages=[], target=None, meta={"mode": mode})


def score(task, example, completion, mode=None):
    """The headline score, in the example's mode (no_think unless the example says otherwise)."""
    return task.score(example, completion, mode or example.meta.get("mode", "no_think"))["score"]


def test_mode_adherence():
    task = ModeTask()
    assert score(task, mode_example("think"), "<think>\nWater boils at 100 C.\n</think>\n\n100 °C.") == 1.0
    assert score(task, mode_example("think"), "100 °C.") == 0.0
    assert score(task, mode_example("think"), "<think>\n\n</think>\n100 °C.") == 0.0  # empty reasoning
    assert score(task, mode_example("think"), "<think>\nreasoning cut off") == 0.0
    assert score(task, mode_example("no_think"), "100 °C.") == 1.0
    # the template already wrote the empty block into the prompt: a second one is not the answer
    assert score(task, mode_example("no_think"), "<think>\n\n</think>\n100 °C.") == 0.0
    assert score(task, mode_example("no_think"), "<think>\nLet me think.\n</think>\n100 °C.") == 0.0
    assert score(task, mode_example("no_think"), "") == 0.0
    assert len(ModeTask().examples(n=5)) == 5


def test_n_zero_means_no_examples():
    assert MathTask().examples(n=0) == [] and ModeTask().examples(n=0) == []
