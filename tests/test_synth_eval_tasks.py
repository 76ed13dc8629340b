"""Synth's filters ask the eval: `verify:` checks generations with any registered task's reward against
the prompt row's reference, and decontamination reads the eval recipe it is given (its tasks built with
that recipe's options, so from its real sources), failing in one line, before generating anything,
where a source cannot be read."""

import json

import pytest
from conftest import REPO

import synth.stage as synth_stage
from eval.tasks import IFEvalTask, ModeTask, RulerTask, ToolsTask
from pipeline.cli import load, main
from pipeline.core.recipe import RecipeError
from pipeline.generation import Backend, Completion
from synth.filters import Contamination, apply_filters, eval_prompts

# Shaped like google/IFEval (key, prompt, instruction_id_list, kwargs with every key, None where unused);
# the prompts are ours, and share no 13 words with the shipped IFEval-style set.
IFEVAL_ROWS = [
    {"key": 7001, "prompt": "Write a letter to the harbour master of a small fishing town asking whether the old "
                            "lighthouse on the northern cliffs could be opened to visitors during the summer "
                            "festival. Your entire response should be in lowercase letters.",
     "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{"num_words": None, "relation": None}]},
    {"key": 7002, "prompt": "Describe the migration of arctic terns in exactly three paragraphs separated by ***.",
     "instruction_id_list": ["length_constraints:number_paragraphs"],
     "kwargs": [{"num_paragraphs": 3, "num_words": None, "relation": None}]},
]
# 13 words of the first prompt above, inside a longer request
LEAKED = ("Please help me: write a letter to the harbour master of a small fishing town asking whether the old "
          "lighthouse can be painted.")
CLEAN = "Write a letter to my landlord asking whether I may keep a cat in the flat."


def trace_row(prompt: str, answer: str, thinking: bool = True, reference=None) -> dict:
    """A row as synth-traces builds it before filtering."""
    return {"prompt": [{"role": "user", "content": prompt}],
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "chat_template_kwargs": {"enable_thinking": thinking}, "reference": reference,
            "meta": {"finish_reason": "stop"}}


def answers(row):
    return [(row["messages"][-1]["content"], row["chat_template_kwargs"]["enable_thinking"],
             row["meta"]["finish_reason"])]


def synth_body(tmp_path, prompts, **filters) -> dict:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"name": "t", "stage": "synth-traces", "output_dir": str(tmp_path / "synth"),
            "teacher": {"name_or_path": "embedded:tiny-smollm3"}, "prompts": {"sources": [{"path": str(path)}]},
            "modes": ["think"], "filters": {"dedup": "none", **filters}}


def eval_body(**tasks) -> dict:
    return {"name": "t", "stage": "eval", "models": ["runs/t/sft"], "tasks": tasks}


class Teacher(Backend):
    """Answers every prompt with a well-formed think trace; counts the prompts it was sent."""

    sent: list = []

    def __init__(self, *args, **kwargs):
        pass

    def generate(self, requests, sampling, desc=""):
        Teacher.sent += [r.messages[-1]["content"] for r in requests]
        return [Completion("<think>\nA short plan.\n</think>\n\nDear reader, here it is.", "stop", 10, 12)
                for _ in requests]


@pytest.fixture
def teacher(monkeypatch):
    Teacher.sent = []
    monkeypatch.setattr(synth_stage, "make_backend", Teacher)
    return Teacher


# ---- decontamination ---------------------------------------------------------------------------
def test_decontamination_reads_the_eval_recipe_it_is_given(write_recipe, tmp_path, teacher):
    """An eval recipe whose IFEval source is a local file shaped like google/IFEval: a prompt sharing 13
    words with that file (and none with the shipped set) is dropped. Before, the filter built every task
    with its default options and compared against the shipped prompts only: it kept the prompt."""
    source = tmp_path / "ifeval.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS))
    write_recipe(eval_body(ifeval={"source": str(source)}, mode={"n": 2}), "eval.yaml")
    assert not Contamination(13).hits(LEAKED)  # the shipped sets would let it through
    recipe = load(write_recipe(synth_body(tmp_path, [LEAKED, CLEAN], decontaminate_against=["eval.yaml"])))
    out = synth_stage.run(recipe)
    report = json.loads((out / "report.json").read_text())
    assert report["filters"] == {"contaminated": 1, "kept": 1}
    [dropped] = [json.loads(line) for line in (out / "filtered.jsonl").read_text().splitlines()]
    assert dropped["filter_reason"] == "contaminated" and dropped["prompt"][0]["content"] == LEAKED
    manifest = json.loads((out / "manifest.json").read_text())  # the eval recipe is an input of the run
    assert manifest["inputs"]["filters.decontaminate_against.0"]["ref"] == str(tmp_path / "eval.yaml")
    assert manifest["inputs"]["filters.decontaminate_against.0"]["kind"] == "file"


def test_each_named_recipe_gives_its_tasks_prompts_with_its_own_options(write_recipe, tmp_path):
    source = tmp_path / "ifeval.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in IFEVAL_ROWS))
    first = write_recipe(eval_body(ifeval={"source": str(source)}), "a.yaml")
    second = write_recipe(eval_body(mode={"n": 1}, ruler={"lengths": [1024]}), "b.yaml")
    texts = eval_prompts([str(first), str(second)])
    assert texts == [r["prompt"] for r in IFEVAL_ROWS] + ModeTask().prompts() + RulerTask().prompts()
    shipped = IFEvalTask().prompts()
    assert len(shipped) == 24 and not set(shipped) & set(texts)  # the named source, never the shipped set


def test_a_source_this_machine_cannot_read_stops_the_run_in_one_line_before_generating(
        write_recipe, tmp_path, teacher, monkeypatch, capsys):
    """google/IFEval offline (datasets retries for ~30 s, then raises ConnectionError: measured here): the
    eval falls back to the shipped set and labels its numbers; decontamination must not, or it would
    check the wrong prompts. The run stops before any model loads, exit 2, one line naming the source."""
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'google/IFEval' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr("datasets.load_dataset", offline)
    write_recipe(eval_body(ifeval={"source": "google/IFEval"}, mode={"n": 2}), "eval.yaml")
    path = write_recipe(synth_body(tmp_path, [LEAKED, CLEAN], decontaminate_against=["eval.yaml"]))
    assert main(["synth-traces", "--recipe", str(path)]) == 2
    # above the error: the progress of reading the prompts, its bar cleared with a carriage return
    err = capsys.readouterr().err
    [error] = [line for line in err.replace("\r", "\n").split("\n") if line.startswith("error:")]
    assert err.endswith(error + "\n") and error.startswith(
        f"error: filters.decontaminate_against: {tmp_path / 'eval.yaml'}: tasks.ifeval.source: google/IFEval cannot "
        "be loaded from the Hugging Face Hub or its local cache")
    assert "(`hf download google/IFEval --repo-type dataset`)" in error
    assert teacher.sent == [] and not (tmp_path / "synth").exists() and not (tmp_path / "synth.partial").exists()


def test_decontaminate_against_is_checked_when_the_recipe_is_validated(write_recipe, tmp_path):
    write_recipe({"name": "t", "stage": "merge", "soup": [{"path": "a"}], "long_context": {"path": "b"}}, "merge.yaml")
    write_recipe(eval_body(gsm8k={}), "typo.yaml")
    body = synth_body(tmp_path, [CLEAN], decontaminate_against=["missing.yaml", "merge.yaml", "typo.yaml"])
    with pytest.raises(RecipeError) as e:
        load(write_recipe(body))
    problems = {key.split(" ")[0]: message for key, message in e.value.problems}
    assert problems["filters.decontaminate_against.0"] == (
        "missing.yaml is not an eval recipe we can read (file not found)")
    assert problems["filters.decontaminate_against.1"].startswith(
        "merge.yaml is not an eval recipe we can read (stage: this recipe is for stage `merge`, not `eval`")
    assert problems["filters.decontaminate_against.2"] == (
        "typo.yaml is not an eval recipe we can read (tasks.gsm8k (line 6): unknown task; known: ruler, ifeval, math, "
        "tools, mode)")
    body = synth_body(tmp_path, [CLEAN], decontaminate=False, decontaminate_against=["typo.yaml"])
    with pytest.raises(RecipeError, match=r"filters.decontaminate_against \(line \d+\): set, but `decontaminate`"):
        load(write_recipe(body))


def test_the_real_synth_recipes_decontaminate_against_the_real_eval():
    for stage in ("synth-traces", "synth-pairs"):
        recipe = load(REPO / "recipes" / "smollm3" / f"{stage}.yaml")
        [path] = recipe.filters.eval_recipes(REPO / "recipes" / "smollm3")
        assert path == REPO / "recipes" / "smollm3" / "eval.yaml"
        assert recipe.inputs()[-1] == ("filters.decontaminate_against.0", str(path))
    demo = load(REPO / "recipes" / "demo" / "synth-traces.yaml")
    assert demo.filters.decontaminate and demo.filters.decontaminate_against == []  # every task's shipped set


# ---- verify: any registered task ---------------------------------------------------------------
def test_verify_checks_generations_with_any_registered_tasks_reward():
    """Rows carrying a task's `reference` (as its training rows write it) keep the generations that earn
    that task's full reward; a row without one passes; `verify: mode` needs none and applies the eval's
    whole rule (a no-think answer that opens with reasoning fails it, though its think tags are fine)."""
    tools = ToolsTask(categories=["simple_python"])
    [tools_row] = [r for r in tools.training_rows() if r["id"] == "simple_python_0"]
    call = tools_row["messages"][-1]["content"]
    wrong = call.replace('"base": 10', '"base": 12')
    [ifeval] = [r for r in IFEvalTask().training_rows() if r["id"] == "ifeval-0"]  # all in lowercase
    assert ifeval["reference"]["target"]["instruction_id_list"] == ["change_case:english_lowercase"]
    ruler = RulerTask(lengths=[1024], variants=["niah_single_1"]).training_rows(n=1)[0]
    needle = ruler["reference"]["target"][0]
    think = "<think>\nFirst I plan.\n</think>\n\n"
    invitation = "You are warmly invited to dinner at my place on Friday at eight in the evening."
    cases = {  # task -> [(row, kept?)]
        "tools": [(trace_row("q1", think + call, reference=tools_row["reference"]), True),
                  (trace_row("q2", think + wrong, reference=tools_row["reference"]), False),
                  (trace_row("q3", think + wrong), True)],  # nothing to verify against
        "ifeval": [(trace_row("q4", f"<think>\nNo CAPITALS.\n</think>\n\n{invitation.lower()}",
                              reference=ifeval["reference"]), True),
                   (trace_row("q5", f"{think}{invitation}", reference=ifeval["reference"]), False)],
        "ruler": [(trace_row("q6", f"{think}The number is {needle}.", reference=ruler["reference"]), True),
                  (trace_row("q7", f"{think}The number is 1234567.", reference=ruler["reference"]), False)],
        "mode": [(trace_row("q8", "It is 100 °C.", thinking=False), True),
                 (trace_row("q9", "Okay, so the user asks about water. It is 100 °C.", thinking=False), False)],
    }
    for task, rows in cases.items():
        settings = {"verify": task, "decontaminate": False, "dedup": "none"}
        kept, dropped, counts = apply_filters([row for row, _ in rows], settings, answers)
        for row, expected in rows:
            assert (row in kept) is expected, (task, row["prompt"])
        assert counts.get("unverified", 0) == sum(row not in kept for row, _ in rows)
    without = apply_filters([cases["mode"][1][0]], {"decontaminate": False}, answers)[0]
    assert len(without) == 1  # the think-block filter alone lets reasoning-as-prose through


def test_a_verify_typo_is_refused_at_validate_time_with_the_nearest_task(write_recipe, tmp_path):
    with pytest.raises(RecipeError) as e:
        load(write_recipe(synth_body(tmp_path, [CLEAN], verify="ifevl")))
    [(key, message)] = e.value.problems
    assert key.startswith("filters.verify (line ")
    assert message == "unknown task (did you mean `ifeval`?); known: ruler, ifeval, math, tools, mode"
    assert load(write_recipe(synth_body(tmp_path, [CLEAN], verify="tools"))).filters.verify == "tools"
