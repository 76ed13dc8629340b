"""The rl stage (issue 34): prompts token for token as eval sends them, rewards from the eval tasks and each mode's
format, what a run writes (summary sections, rollouts, held-out check) and how the report shows it, the recipe's
checks and its plan. One tiny run (the tiny random SmolLM3, two steps) is shared by the tests that need one; the
kill-and-resume proofs are in tests/test_rl_kills.py (e2e tier)."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from eval.report import write_report
from eval.stage import request
from eval.tasks import IFEvalTask, MathTask, ModeTask, ToolsTask
from pipeline.cli import main
from pipeline.core.recipe import load_recipe
from pipeline.core.summary import read_summary
from pipeline.generation import TransformersBackendSpec, make_backend
from rl.rewards import Rewards


def task_rows() -> list[dict]:
    """Rows of four tasks as Task.training_rows writes them, in both modes: IFEval (instructions), math (a long
    LaTeX problem), BFCL tool calling (functions declared as xml_tools) and mode adherence."""
    rows = []
    for mode in ("think", "no_think"):
        rows += IFEvalTask().training_rows(n=2, seed=0, mode=mode) + MathTask().training_rows(n=1, seed=0, mode=mode)
        rows += ToolsTask().training_rows(n=1, seed=0, mode=mode) + ModeTask().training_rows(n=1, seed=0, mode=mode)
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe_body(root: Path, model: str, prompts: Path, **changes) -> dict:
    body = {"name": "t", "stage": "rl", "output_dir": str(root / "runs" / "rl"),
            "model": {"name_or_path": model, "dtype": "float32"},
            "data": {"sources": [{"path": str(prompts), "mode": "from_row"}]},
            "training": {"num_generations": 2, "max_completion_length": 8, "per_device_train_batch_size": 4,
                         "max_steps": 2, "learning_rate": 1.0e-3, "bf16": False, "logging_steps": 1,
                         "save_strategy": "no", "activation_checkpointing": False, "report_to": "none"}}
    body.update(changes)
    return body


def write_recipe(root: Path, body: dict) -> Path:
    path = root / "rl.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    """Two steps on the tiny model over IFEval and mode rows in both modes, with a held-out check, recording the
    prompt token ids TRL generated from."""
    import trl

    root = tmp_path_factory.mktemp("rl")
    prompts = write_rows(root / "prompts.jsonl", IFEvalTask().training_rows(n=3, seed=0, mode="no_think")
                         + ModeTask().training_rows(n=3, seed=0, mode="think"))
    held = write_rows(root / "held.jsonl", IFEvalTask().training_rows(n=2, seed=5, mode="think"))
    body = recipe_body(root, tiny_model, prompts, prompt_modes="both",
                       eval_prompts={"path": str(held), "backend": {"kind": "transformers", "batch_size": 4}})
    sent: list[list[int]] = []
    generate = trl.GRPOTrainer._generate_single_turn

    def recording(self, prompt_ids, *args, **kwargs):
        sent.extend(list(ids) for ids in prompt_ids)
        return generate(self, prompt_ids, *args, **kwargs)

    trl.GRPOTrainer._generate_single_turn = recording
    try:
        assert main(["rl", "--recipe", str(write_recipe(root, body))]) == 0
    finally:
        trl.GRPOTrainer._generate_single_turn = generate
    return {"run": root / "runs" / "rl", "sent": sent, "root": root}


# ----------------------------------------------------------------------------------------------
# Prompts: what the policy is sent is what eval sends
# ----------------------------------------------------------------------------------------------
def eval_ids(backend, example, mode: str) -> list[int]:
    """The token ids the eval stage sends for `example` in `mode`: its request, rendered and tokenized by the
    transformers backend as its `generate` does."""
    text = backend.render(request(example, mode))
    return backend.tokenizer(text, add_special_tokens=False).input_ids


def test_a_training_prompt_is_token_for_token_what_eval_sends(tiny_run, tiny_model):
    """Each prompt TRL generated from during the run equals, token for token, the eval stage's prompt for the same
    task example in the same mode (eval builds its examples with the task's own `examples`)."""
    rows = [json.loads(line) for line in (tiny_run["run"] / "prompts.jsonl").read_text().splitlines()]
    examples = {ex.id: ex for task in (IFEvalTask(), ModeTask()) for ex in task.examples(n=3, seed=0)}
    with make_backend(TransformersBackendSpec(), tiny_model, "float32") as backend:
        expected = {tuple(eval_ids(backend, examples[r["id"]], r["mode"])): (r["id"], r["mode"]) for r in rows}
    assert len(expected) == 12  # 6 prompts x 2 modes, all different
    assert tiny_run["sent"] and all(tuple(ids) in expected for ids in tiny_run["sent"])
    assert len({expected[tuple(ids)][1] for ids in tiny_run["sent"]}) == 2  # both modes were trained


def test_prompts_of_every_task_render_as_eval_renders_them_and_as_trl_tokenizes_them(tmp_path, tiny_model):
    """Math, tools (declared functions), IFEval and mode rows in both modes: the stage's prompt text, tokenized by
    TRL's own GRPOTrainer code, gives eval's token ids."""
    from trl import GRPOConfig, GRPOTrainer

    from pipeline.training.train import load_model, load_tokenizer
    from rl.stage import build_prompts

    rows = task_rows()
    recipe = load_recipe(write_recipe(tmp_path, recipe_body(tmp_path, tiny_model, write_rows(tmp_path / "p.jsonl",
                                                                                              rows))))
    tokenizer = load_tokenizer(recipe)
    tokenizer.padding_side = "left"
    dataset, report = build_prompts(recipe, tokenizer, tmp_path)
    assert report["rows"] == len(rows) and report["modes"] == {"think": len(rows) // 2, "no_think": len(rows) // 2}
    trainer = GRPOTrainer(model=load_model(recipe.model),
                          reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                          args=GRPOConfig(output_dir=str(tmp_path / "out"), num_generations=2, bf16=False,
                                          per_device_train_batch_size=2, report_to="none"),
                          train_dataset=dataset, processing_class=tokenizer)
    trl_ids, _, _ = trainer._tokenize_prompts(list(dataset["prompt"]))
    tasks = {"ifeval": IFEvalTask(), "math": MathTask(), "tools": ToolsTask(), "mode": ModeTask()}
    with make_backend(TransformersBackendSpec(), tiny_model, "float32") as backend:
        for ids, row in zip(trl_ids, dataset):
            example = next(ex for ex in tasks[row["task"]].examples(n=2, seed=0) if ex.id == row["id"])
            assert list(ids) == eval_ids(backend, example, row["mode"]), (row["id"], row["mode"])
    tools = next(r for r in dataset if r["task"] == "tools")
    assert "<tools>" in tools["prompt"]  # the row's functions reached the system turn


def test_a_prompt_is_sent_in_its_rows_mode_or_in_both(tmp_path, tiny_model):
    from pipeline.training.train import load_tokenizer
    from rl.stage import build_prompts

    prompts = write_rows(tmp_path / "p.jsonl", ModeTask().training_rows(n=2, seed=0, mode="think"))
    for modes, expected in (("row", {"think": 2}), ("both", {"think": 2, "no_think": 2})):
        out = tmp_path / modes
        out.mkdir()
        recipe = load_recipe(write_recipe(out, recipe_body(out, tiny_model, prompts, prompt_modes=modes)))
        _, report = build_prompts(recipe, load_tokenizer(recipe), out)
        assert report["modes"] == expected
        rendered = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
        assert all(("Reasoning Mode: /think" in r["prompt"]) == (r["mode"] == "think") for r in rendered)


# ----------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------
class Tok:
    """A tokenizer stand-in: one token per word, id = position in a fixed vocabulary."""

    vocab = ["<think>", "</think>", "the", "answer", "is", "\\boxed{4}", "\\boxed{5}", "<|im_end|>", "hmm"]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(self.vocab[i] for i in ids)


def test_rewards_read_the_completion_as_eval_does_and_score_it_with_the_rows_task():
    math = MathTask().row(MathTask().examples(n=1)[0], "think")
    math["reference"] = {"target": "4"}
    rewards, logged = Rewards(Tok(), stop_ids=[7]), []
    ids = [[0, 2, 1, 3, 4, 5, 7], [0, 2, 1, 3, 4, 6, 7], [0, 2, 8, 8], [3, 4, 5, 7]]
    columns = dict(mode=["think", "think", "think", "no_think"], task=["math", "math", "math", ""],
                   row=[json.dumps(math)] * 3 + [json.dumps({"messages": []})], id=["m", "m", "m", "x"],
                   source=["s"] * 4, log_metric=lambda name, value: logged.append((name, value)))
    task = rewards.task_reward(ids, **columns)
    fmt = rewards.format_reward(ids, **columns)
    # right, wrong, an unclosed think block cut at the limit (0 from every task), a row no task rewards
    assert task == [1.0, 0.0, 0.0, None]
    assert fmt == [1.0, 1.0, 0.0, 1.0]  # think: a closed block then an answer; no_think: no block
    assert ("task/math/think", 1.0) in logged and ("cut/think", 1.0) in logged and ("cut/no_think", 0.0) in logged
    assert not any(name.startswith("task/") and "no_think" in name for name, _ in logged)
    assert len([n for n, _ in logged if n.startswith("format/")]) == 4  # scored once for both functions
    assert rewards.text([2, 3, 7, 4]) == ("the answer", False) and rewards.text([2, 3]) == ("the answer", True)


# ----------------------------------------------------------------------------------------------
# What a run writes, and how the report shows it
# ----------------------------------------------------------------------------------------------
def test_a_run_writes_rewards_per_task_and_mode_lengths_cuts_and_the_held_out_check(tiny_run):
    run = tiny_run["run"]
    summary = read_summary(run)
    assert summary["stage"] == "rl" and {"rewards.png", "prompts.json", "held_out.json"} <= set(summary["outputs"])
    rewards = summary["rewards"]
    assert rewards["steps"] == [1, 2] and len(rewards["series"]["reward"]) == 2
    for mode in ("think", "no_think"):  # every prompt is trained in both modes
        assert {f"format/{mode}", f"length/{mode}", f"cut/{mode}"} <= set(rewards["series"])
    assert any(name.startswith("task/ifeval/") for name in rewards["series"])
    assert all(v == 8.0 for v in rewards["series"]["length/think"] if v is not None)  # random tokens: all cut
    assert "loss" not in summary  # the policy-gradient loss has no trend to read
    held = summary["held_out_reward"]
    assert held["start"]["model"].endswith("tiny-smollm3") and held["prompts"] == 2
    assert set(held["end"]["tasks"]["ifeval"]) == {"think", "no_think"}
    steps = sorted(p.name for p in (run / "rollouts").iterdir())
    assert steps == ["step-000001.jsonl", "step-000002.jsonl"]
    first = [json.loads(line) for line in (run / "rollouts" / steps[0]).read_text().splitlines()]
    assert len(first) == 4 and {"completion", "task_reward", "format_reward", "cut", "mode"} <= set(first[0])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["prompts"] == 12


def test_the_report_shows_the_reward_curve_and_the_held_out_change(tiny_run, tmp_path):
    run = tiny_run["run"]

    def scores(x):
        return {"mode": {"no_think": {"score": x, "n": 1, "truncated": 0, "examples": []}}}

    report = write_report([{"model": "embedded:tiny-smollm3", "tasks": scores(0.0)},
                           {"model": str(run), "tasks": scores(0.5)}], tmp_path, ["no_think"])
    held = read_summary(run)["held_out_reward"]
    assert f"| held-out reward |  | {held['start']['reward']:.2f} → {held['end']['reward']:.2f} |" in report
    assert "| reward (first → last steps) |" in report and "![rl rewards](" in report
    assert "| ifeval | think |" in report and "Rewards during training" in report


# ----------------------------------------------------------------------------------------------
# The recipe: what it gets wrong, said before anything loads
# ----------------------------------------------------------------------------------------------
def test_the_shipped_recipes_validate(capsys):
    assert main(["validate", str(REPO / "recipes/smollm3/rl.yaml"), str(REPO / "recipes/demo/rl.yaml")]) == 0
    assert capsys.readouterr().out.count("(rl)") == 2


def test_the_demo_checks_itself_on_requests_it_never_trains_on():
    """The demo's held-out requests are in none of its training prompts, nor in any other demo file; every row of
    both is an IFEval row whose reward IFEval's checker gives (a short answer earns 1, a long one 0)."""
    from rl.prompts import example_of

    def read(name):
        return [json.loads(line) for line in (REPO / "data/demo" / name).read_text().splitlines()]

    train, held = read("rl_prompts.jsonl"), read("rl_heldout.jsonl")
    asked = {r["messages"][0]["content"].split(" Answer in")[0] for r in held}
    assert len(asked) == len(held) == 12
    for path in (REPO / "data/demo").glob("*.jsonl"):
        if path.name != "rl_heldout.jsonl":
            assert not [q for q in asked if q in path.read_text()], path.name
    task = IFEvalTask()
    for row in train + held:
        limit = row["reference"]["target"]["kwargs"][0]["num_words"]
        example = example_of(row)
        assert task.reward(example, "Short.", "no_think") == 1.0
        assert task.reward(example, " ".join(["word"] * limit), "no_think") == 0.0


@pytest.mark.parametrize("change, key, says", [
    ({"training": {"reward_weights": [1, 1]}}, "training.reward_weights", "set by `rewards:`"),
    ({"training": {"chat_template_kwargs": {"enable_thinking": False}}}, "training.chat_template_kwargs",
     "renders every prompt itself"),
    ({"training": {"loss_type": "drgrpo"}}, "training.loss_type", "not a TRL GRPO loss"),
    ({"training": {"num_generation": 4}}, "training.num_generation", "did you mean `num_generations`?"),
    ({"task": "maths"}, "task", "did you mean `math`?"),
    ({"rewards": {"task": 0, "format": 0}}, "rewards", "every reward weight is 0"),
    ({"data": {"sources": [{"path": "p.jsonl", "tokens": 1000}]}}, "data.sources.0.tokens", "drawn with `fraction`"),
], ids=["reward_weights", "template_kwargs", "loss_type", "typo", "task", "no_reward", "tokens"])
def test_a_bad_recipe_is_refused_naming_the_key(tmp_path, capsys, change, key, says):
    body = recipe_body(tmp_path, "embedded:tiny-smollm3", tmp_path / "p.jsonl")
    for name, value in change.items():
        body[name] = {**body[name], **value} if name == "training" else value
    assert main(["validate", str(write_recipe(tmp_path, body))]) == 2
    out = capsys.readouterr().out
    assert key in out and says in out, out


@pytest.mark.parametrize("change, says", [
    ({"training": {"use_vllm": True}}, "training.use_vllm generates with vLLM on GPUs and none is visible"),
    ({"training": {"steps_per_generation": 2, "save_strategy": "steps", "save_steps": 3}},
     "training.save_steps 3: one generation feeds 2 optimizer steps"),
], ids=["vllm-on-cpu", "checkpoint-inside-a-generation"])
def test_what_this_machine_or_exact_resume_cannot_do_is_one_line_before_anything_loads(tmp_path, capsys, change, says,
                                                                                      tiny_model):
    body = recipe_body(tmp_path, tiny_model, write_rows(tmp_path / "p.jsonl", ModeTask().training_rows(n=2)))
    body["training"] = {**body["training"], **change["training"]}
    assert main(["rl", "--recipe", str(write_recipe(tmp_path, body))]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_bad_prompt_rows_are_quarantined_with_the_reason(tmp_path, tiny_model, capsys):
    rows = [{"messages": [{"role": "user", "content": "Hi"}], "task": "nosuch"},
            {"messages": [{"role": "assistant", "content": "no user turn"}]},
            {"prompt": "What is 2 + 2?", "answer": "4"}, {"prompt": "Name a colour."}]
    body = recipe_body(tmp_path, tiny_model, write_rows(tmp_path / "p.jsonl", rows), task="math")
    body["data"]["sources"][0]["mode"] = "no_think"
    from pipeline.training.train import load_tokenizer
    from rl.stage import build_prompts

    recipe = load_recipe(write_recipe(tmp_path, body))
    _, report = build_prompts(recipe, load_tokenizer(recipe), tmp_path)
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert report["rows"] == 1 and report["quarantined"] == 3 and report["tasks"] == {"math": 1}
    assert "unknown task" in reasons[0] and "no user turn" in reasons[1] and "`reference`" in reasons[2]
    bad = recipe_body(tmp_path, tiny_model, write_rows(tmp_path / "bad.jsonl", rows[:2]))
    assert main(["rl", "--recipe", str(write_recipe(tmp_path, bad))]) == 2
    assert "data.sources.0 (" in (err := capsys.readouterr().err) and "no usable prompts (all 2 quarantined" in err


def test_a_bad_held_out_file_is_one_line_naming_the_row(tmp_path, tiny_model, capsys):
    prompts = write_rows(tmp_path / "p.jsonl", ModeTask().training_rows(n=2))
    held = write_rows(tmp_path / "held.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    body = recipe_body(tmp_path, tiny_model, prompts, eval_prompts={"path": str(held)})
    assert main(["rl", "--recipe", str(write_recipe(tmp_path, body))]) == 2
    err = capsys.readouterr().err
    assert f"{held}: row 1: mode `from_row` but the row has no chat_template_kwargs.enable_thinking" in err


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
def test_the_plan_costs_the_generated_tokens_and_the_training_from_the_prompts_read(tmp_path, tiny_model, capsys):
    prompts = write_rows(tmp_path / "p.jsonl", ModeTask().training_rows(n=6))
    recipe = write_recipe(tmp_path, recipe_body(tmp_path, tiny_model, prompts, prompt_modes="both"))
    out = tmp_path / "plan.json"
    assert main(["plan", str(recipe), "--gpus", "1", "--vllm-tokens-per-s", "1000", "--out", str(out)]) == 0
    [plan] = json.loads(out.read_text())["plans"]
    data, cost = plan["data"], plan["cost"]
    assert data["status"] == "read" and data["prompts"] == 12 and data["completions_per_prompt"] == 2
    assert cost["steps"] == 2 and cost["epochs"] == pytest.approx(2 * 4 / 24)  # 2 steps of 4 of 24 completions
    assert cost["generating"]["tokens"] == pytest.approx(24 * 8 * cost["epochs"])
    assert cost["max_length"] == data["longest_prompt"] + 8
    assert "-- prompts (the stage completes them itself)" in capsys.readouterr().out


def test_the_real_recipe_plans_gpu_hours_and_memory_with_vllm_colocated(capsys, tmp_path):
    out = tmp_path / "plan.json"
    recipe = str(REPO / "recipes/smollm3/rl.yaml")
    assert main(["plan", recipe, "--gpus", "8", "--vllm-tokens-per-s", "20000", "--out", str(out)]) == 0
    [plan] = json.loads(out.read_text())["plans"]
    cost, t = plan["cost"], load_recipe(recipe).training
    memory = cost["memory"]
    assert memory["reserved_for"] == "colocated vLLM"
    assert memory["reserved_gib"] == pytest.approx(t["vllm_gpu_memory_utilization"] * memory["capacity_gib"])
    assert memory["fits"] and memory["total_gib"] > memory["reserved_gib"]
    completions = t["max_steps"] * t["global_batch_size"]
    assert cost["generating"]["tokens"] == pytest.approx(completions * t["max_completion_length"])
    assert cost["gpu_hours"] > cost["generating"]["gpu_hours"] > 0
    text = capsys.readouterr().out
    assert "+ colocated vLLM" in text and "GPU-hours (training and generation)" in text
