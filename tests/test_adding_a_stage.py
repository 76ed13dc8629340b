"""README's "Adding a stage" holds for a stage that trains on prompts alone (issue 31).

A toy online-RL stage is written here as README says a stage is written: its module (this file: `run`,
`plan`, `plan_text`, `SUMMARY_SECTIONS`), its recipe class (`ToyRLRecipe`, `trains_on = "prompts"`) and one
registry line (added for these tests only). With no edit to the plan, the summary, the report or the CLI,
it validates (TRL's GRPOConfig checks its `training:`), plans (its own section in the printed plan and
plan.json, its generated tokens costed beside its training), runs, and writes a summary.json whose own
section the eval report shows. Its "policy" echoes the prompt and its "reward" is a word count: stand-ins,
since what is tested is the house around a stage, not reinforcement learning.
"""

import json
import math
import re
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import yaml
from conftest import REPO

from eval.report import write_report
from pipeline.cli import main
from pipeline.core.files import write_jsonl
from pipeline.core.runs import stage_run
from pipeline.core.schema import TrainRecipe, TrainsOn
from pipeline.core.stages import STAGES, PlanSection, Stage
from pipeline.core.summary import Section, read_summary, write_summary
from pipeline.data.rows import prompt_of
from pipeline.data.sources import iter_rows
from pipeline.planning import costs

STAGE = "toy-rl"
QUESTIONS = REPO / "data/demo/questions.jsonl"


# ----------------------------------------------------------------------------------------------
# The stage, as a stage module and its recipe class are written
# ----------------------------------------------------------------------------------------------
class ToyRLRecipe(TrainRecipe):
    """toy-rl: prompts alone; the stage writes `num_generations` completions of each and scores them."""

    trl_config: ClassVar[str] = "GRPOConfig"
    trains_on: ClassVar[TrainsOn | None] = "prompts"
    stage: Literal["toy-rl"]


def prompts(recipe) -> list[list[dict]]:
    """Each prompt row's conversation, through the one loader and the one row path."""
    return [prompt_of(row)[0] for source in recipe.data.sources for row in iter_rows(source)]


def run(recipe, overwrite: bool = False) -> Path:
    generations = recipe.training["num_generations"]
    with stage_run(recipe, overwrite) as run:
        rollouts = [{"prompt": p, "completion": p[-1]["content"],
                     "reward": min(1.0, len(p[-1]["content"].split()) / 8)}
                    for p in prompts(recipe) for _ in range(generations)]
        write_jsonl(run.path / "rollouts.jsonl", rollouts)
        run.summary.update(outputs=["rollouts.jsonl"], rollouts={
            "prompts": len(rollouts) // generations, "completions": len(rollouts),
            "mean_reward": sum(r["reward"] for r in rollouts) / len(rollouts), "file": "rollouts.jsonl"})
    return recipe.output_path()


def plan(recipe, planner) -> PlanSection:
    """Prompts x completions, the prompts' tokens as the template renders them, and what an epoch holds:
    every completion at max_completion_length (an upper bound), generated, then trained with its prompt."""
    training = planner.training(recipe)
    generations, longest = training["num_generations"], training["max_completion_length"]
    tokenizer, why = planner.tokenizer(recipe)
    if tokenizer is None:
        return PlanSection(data={"status": "unknown", "why": why})
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]) for p in prompts(recipe)]
    completions = len(lengths) * generations
    data = {"status": "read", "prompts": len(lengths), "completions_per_prompt": generations,
            "max_completion_length": longest, "prompt_tokens": sum(lengths), "longest_prompt": max(lengths)}
    work = {"rows_per_epoch": completions, "tokens_per_epoch": generations * sum(lengths) + completions * longest,
            "span": sum(lengths) / len(lengths) + longest, "work_from": "the prompts read here, every completion "
            "at max_completion_length"}
    return PlanSection(data=data, work=work, generated_tokens_per_epoch=completions * longest,
                       max_length=max(lengths) + longest)


def plan_text(data: dict) -> list[str]:
    if data["status"] != "read":
        return [f"\n-- rollouts: not known yet: {data['why']}"]
    return ["\n-- rollouts (the stage completes its prompts itself)",
            f"  {data['prompts']} prompts x {data['completions_per_prompt']} completions of at most "
            f"{data['max_completion_length']} tokens; prompts {data['prompt_tokens']:,} tokens, the longest "
            f"{data['longest_prompt']}"]


def rollouts_lines(rollouts: dict, view) -> list[str]:
    return ["", f"Rollouts: {rollouts['completions']} completions of {rollouts['prompts']} prompts, mean reward "
            f"{rollouts['mean_reward']:.3f} ({view.link('every rollout', rollouts['file'])})."]


SUMMARY_SECTIONS = [Section("rollouts", required={"prompts": None, "completions": None, "mean_reward": None},
                            glance="mean reward", cell=lambda r, view: f"{r['mean_reward']:.2f}",
                            lines=rollouts_lines)]


# ----------------------------------------------------------------------------------------------
# The house around it
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def toy_stage(monkeypatch):
    """The one registry line, for these tests only."""
    monkeypatch.setitem(STAGES, STAGE, Stage(__name__, f"{__name__}:ToyRLRecipe"))


@pytest.fixture
def recipe(tmp_path, tiny_model) -> Path:
    path = tmp_path / "toy-rl.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy", "stage": STAGE, "output_dir": str(tmp_path / "runs" / STAGE),
        "model": {"name_or_path": tiny_model, "dtype": "float32"},
        "data": {"sources": [{"path": str(QUESTIONS), "mode": "no_think"}]},
        "training": {"num_generations": 4, "max_completion_length": 32, "per_device_train_batch_size": 4,
                     "num_train_epochs": 2, "bf16": False}}))
    return path


def test_a_prompts_only_stage_validates_with_its_trl_config(toy_stage, recipe, tmp_path, capsys):
    assert main(["validate", str(recipe)]) == 0
    assert f"ok    {recipe} ({STAGE})" in capsys.readouterr().out
    typo = tmp_path / "typo.yaml"
    typo.write_text(recipe.read_text().replace("num_generations", "num_generation"))
    assert main(["validate", str(typo)]) == 2
    assert "training.num_generation" in capsys.readouterr().out  # GRPOConfig has no such field


def test_a_prompts_only_stage_plans_its_own_section_and_its_generated_tokens(toy_stage, recipe, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(recipe), "--gpus", "1", "--vllm-tokens-per-s", "1000", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    [plan] = json.loads(out.read_text())["plans"]
    prompts = sum(1 for line in QUESTIONS.read_text().splitlines() if line.strip())
    assert plan["data"]["prompts"] == prompts and plan["data"]["completions_per_prompt"] == 4
    assert "-- rollouts (the stage completes its prompts itself)" in text
    assert f"  {prompts} prompts x 4 completions of at most 32 tokens" in text

    cost = plan["cost"]
    generated = prompts * 4 * 32 * 2  # completions x max_completion_length x epochs
    assert cost["steps"] == 2 * math.ceil(prompts * 4 / 4)  # a step is per_device_train_batch_size completions
    assert cost["max_length"] == plan["data"]["longest_prompt"] + 32  # a prompt and its completion
    assert cost["generating"] == {"tokens": generated, "tokens_per_s": 1000, "gpu_hours": generated / 1000 / 3600}
    training = costs.gpu_hours(cost["tokens"], cost["throughput"]["tokens_per_s"])
    assert cost["gpu_hours"] == pytest.approx(training + generated / 1000 / 3600)
    assert f"  generates {generated:,} tokens at 1,000 tokens/s" in text and "(training and generation)" in text

    assert main(["plan", str(recipe), "--gpus", "1", "--out", str(out)]) == 0  # no throughput given: said so
    assert "GPU-hours: give the generation throughput you measured (--vllm-tokens-per-s)" in capsys.readouterr().out
    cost = json.loads(out.read_text())["plans"][0]["cost"]
    assert cost["generating"]["gpu_hours"] is None and cost["gpu_hours"] == pytest.approx(training)


def test_a_prompts_only_stage_runs_and_the_report_shows_its_own_section(toy_stage, recipe, tmp_path, capsys):
    assert main([STAGE, "--recipe", str(recipe)]) == 0  # the CLI's subcommand comes from the registry
    run = tmp_path / "runs" / STAGE
    summary = read_summary(run)
    rollouts = summary["rollouts"]
    assert summary["stage"] == STAGE and rollouts["completions"] == 4 * rollouts["prompts"] > 0

    def scores(x):
        return {"mode": {"no_think": {"score": x, "n": 1, "truncated": 0, "examples": []}}}

    report_dir = tmp_path / "eval"
    report_dir.mkdir()
    results = [{"model": "embedded:base", "tasks": scores(0.0)}, {"model": str(run), "tasks": scores(1.0)}]
    report = write_report(results, report_dir, ["no_think"])
    assert f"| mean reward |  | {rollouts['mean_reward']:.2f} |" in report.split("## At a glance")[1]
    assert (f"Rollouts: {rollouts['completions']} completions of {rollouts['prompts']} prompts, mean reward "
            f"{rollouts['mean_reward']:.3f} ([every rollout](../runs/{STAGE}/rollouts.jsonl)).") in report

    write_summary(run, {"stage": STAGE, "rollouts": {"prompts": 1}})  # the stage's own required keys hold too
    assert "rollouts" not in read_summary(run)
    assert "section `rollouts` lacks some of prompts, completions, mean_reward" in capsys.readouterr().out


def test_a_stage_is_one_word_in_the_makefile():
    """Make's stage targets come from one list, each running `smolalign STAGE`: a new stage's target is its
    name added to STAGES."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\$\(STAGES\): setup\n\t\$\(SMOL\) \$@ --recipe", makefile, re.M)
    assert re.search(r"^STAGES := midtrain synth-traces synth-pairs sft apo rl merge eval$", makefile, re.M)
