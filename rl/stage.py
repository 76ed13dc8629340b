"""rl stage: online RL with verifiable rewards, TRL's GRPOTrainer, in both modes.

    smolalign rl --recipe recipes/smollm3/rl.yaml            # make rl RECIPE=...
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m pipeline.cli rl --recipe ...

Reads top to bottom: seed -> tokenizer (+ our chat template) -> prompts (each row in its mode, or in both,
rendered as eval renders it: rl/prompts.py) -> the held-out prompts scored with the starting checkpoint ->
policy -> GRPO (TRL samples `num_generations` completions of each prompt with transformers, or with vLLM on
GPUs: `use_vllm`, `vllm_mode: colocate | server`; the rows' eval tasks and each mode's format reward them:
rl/rewards.py; resumes from the newest checkpoint) -> save -> the held-out prompts scored again.

The loss is TRL's (`loss_type`: dapo, dr_grpo, grpo, bnpo, ...; `beta` for a KL term to a frozen reference,
`epsilon_high` for DAPO's clip-higher, `scale_rewards`, `mask_truncated_completions`), set in `training:` as
TRL names it. `global_batch_size` counts completions: prompts per step x num_generations.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from eval.tasks import TASKS, unknown_task
from pipeline.core.errors import UserError
from pipeline.core.files import write_json_atomic, write_jsonl
from pipeline.core.models import resolve_model
from pipeline.core.preemption import deferred
from pipeline.core.runs import is_main_process, stage_run
from pipeline.generation import Renderer
from pipeline.training.sections import trained_on_section
from pipeline.training.train import (
    announce_attention,
    announce_batch,
    check_environment,
    finish,
    load_model,
    load_tokenizer,
    peft_config,
    rank_checksums,
    record_attention,
    train_or_restore,
    training_batch,
    trl_args,
)
from rl import held_out
from rl.plan import plan, plan_text
from rl.prompts import dataset_rows
from rl.rewards import Rewards
from rl.sections import SECTIONS, plot_rewards, rewards_section

__all__ = ["SUMMARY_SECTIONS", "check", "plan", "plan_text", "run"]
# What a run writes in summary.json beside the shared keys, and how the eval report shows it (rl/sections.py).
SUMMARY_SECTIONS = SECTIONS


def check(recipe) -> list[tuple[str, str]]:
    """What only this stage can judge, run by `smolalign validate` too: the task that rewards rows naming none."""
    if recipe.task is not None and recipe.task not in TASKS:
        return [("task", unknown_task(recipe.task))]
    return []


def run(recipe, overwrite: bool = False) -> Path:
    from transformers import set_seed
    from trl import GRPOTrainer

    check_environment(recipe)
    check_generation(recipe)
    batch = training_batch(recipe)  # a GPU count that cannot make the global batch fails here, before any load
    check_resumable(recipe, batch)
    attention = announce_attention(recipe)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe)
    tokenizer.padding_side = "left"  # TRL's generation pads prompts on the left
    held = held_out.held_out_items(recipe) if recipe.eval_prompts else []  # a bad file fails before any model loads
    with stage_run(recipe, overwrite) as run:
        record_attention(run, model=attention)
        announce_batch(run, batch)
        dataset, report = build_prompts(recipe, tokenizer, run.path)
        run.summary.update(outputs=["prompts.json"], trained_on=trained_on_section("prompts", "prompts.json", report))
        start = None
        if held:  # the starting checkpoint, before any step (kept: a resumed run does not score it again)
            start = held_out.cached_score(recipe, run.path / "held_out_start.json",
                                          resolve_model(recipe.model.name_or_path), held, recipe.model.name_or_path)
        model = load_model(recipe.model, attention)
        rewards = Rewards(tokenizer, [], run.path / "rollouts", recipe.rollouts_every)
        trainer = GRPOTrainer(model=model, reward_funcs=[rewards.task_reward, rewards.format_reward],
                              args=trl_args(recipe, run.path, **stage_settings(recipe, tokenizer)),
                              train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(recipe))
        rewards.stop_ids = set(trainer.eos_token_ids)  # what ends a completion for TRL ends it for the rewards
        with deferred():  # a stop signal ends the current step and saves it; a finished training is saved whole
            train_or_restore(trainer, run.path)
            finish(trainer, tokenizer, run, recipe, extra={
                "prompts": report["rows"], "quarantined_prompts": report["quarantined"],
                "rank_param_checksums": rank_checksums(trainer.model)})
            summarise_training(trainer, run, recipe)
            if held:
                end = held_out.score_model(recipe, str(run.path), held, "trained")
                result = held_out.report(recipe, held, start, end)
                if is_main_process():
                    write_json_atomic(run.path / "held_out.json", {**result, "start": start, "end": end})
                    print(f"held-out reward: {result['start']['reward']} -> {result['end']['reward']}; format "
                          f"{result['start']['format']} -> {result['end']['format']}")
                run.summary["outputs"].append("held_out.json")
                run.summary["held_out_reward"] = result
                run.metrics["held_out_reward"] = {"start": result["start"]["reward"], "end": result["end"]["reward"],
                                                  "start_format": result["start"]["format"],
                                                  "end_format": result["end"]["format"]}
    return recipe.output_path()


def check_generation(recipe) -> None:
    """vLLM generation (`training.use_vllm`) needs a GPU and vLLM, which lives in its own environment: said in
    one line before anything loads."""
    import importlib.util

    import torch

    if not recipe.settings.use_vllm:
        return
    if not torch.cuda.is_available():
        raise UserError(f"{recipe._source}: training.use_vllm generates with vLLM on GPUs and none is visible; on "
                        "CPU the stage generates with transformers: --set training.use_vllm=false")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"{recipe._source}: training.use_vllm needs vLLM: `pip install -e '.[vllm]'` in the GPU "
                        "environment (it pins its own torch)")


def generation_block(recipe, batch) -> float:
    """Optimizer steps one generation feeds: TRL generates for `steps_per_generation` micro-steps (default: the
    accumulation, one generation a step) and trains `num_iterations` times on it."""
    t = recipe.training
    per_step = batch.per_device * batch.gpus
    micro = t.get("steps_per_generation") or (t["generation_batch_size"] // per_step if t.get("generation_batch_size")
                                             else batch.accumulation)
    return micro * int(t.get("num_iterations", 1)) / batch.accumulation


def check_resumable(recipe, batch) -> None:
    """A checkpoint inside a generation (one generation feeding several optimizer steps) would resume without the
    completions the rest of it trains on: TRL keeps them in memory only. Checkpoints must fall between
    generations for a resumed run to equal an uninterrupted one."""
    t, block = recipe.training, generation_block(recipe, batch)
    if t.get("save_strategy", "steps") != "steps" or block <= 1:
        return
    every = t.get("save_steps", 500)
    if isinstance(every, int) and every % block:
        raise UserError(f"{recipe._source}: training.save_steps {every}: one generation feeds {block:g} optimizer "
                        f"steps here (steps_per_generation x num_iterations / accumulation), and a checkpoint inside "
                        f"it could not be resumed exactly; use a multiple of {block:g}")


def stage_settings(recipe, tokenizer) -> dict:
    """What GRPOConfig gets once the tokenizer is loaded (the rest the stage sets is RLRecipe.trl_settings, which
    validate --trl builds too): for vLLM, the end of the turn as a stop token id (a stop string for a special
    token never matches once vLLM drops special tokens from the text)."""
    if not recipe.settings.use_vllm:
        return {}
    generation = dict(recipe.settings.generation_kwargs or {})
    generation.setdefault("stop_token_ids", [tokenizer.eos_token_id])
    return {"generation_kwargs": generation}


def build_prompts(recipe, tokenizer, out: Path):
    """prompts.jsonl (every prompt as the policy is sent it, in each of its modes), prompts.json (per source, mode
    and task) and the dataset TRL reads (memory-mapped from prompts.jsonl)."""
    from datasets import load_dataset

    renderer = Renderer(tokenizer, today_date=recipe.chat.today_date, knowledge_cutoff=recipe.chat.knowledge_cutoff)
    counts: dict[str, Counter] = {"source": Counter(), "mode": Counter(), "task": Counter()}

    def counted(rows):
        for row in rows:
            for key, counter in counts.items():
                counter[row[key] or "none"] += 1
            yield row

    quarantine = out / "quarantine.jsonl"
    rows = write_jsonl(out / "prompts.jsonl", counted(dataset_rows(recipe, renderer, quarantine)))
    # the reader writes the quarantine only when a row was set aside, and stops the run on a source with none usable
    quarantined = sum(1 for line in quarantine.open() if line.strip()) if quarantine.is_file() else 0
    if rows == 0:
        raise UserError(f"{recipe._source}: no usable prompts in data.sources"
                        + (f"; see {quarantine}" if quarantined else ""))
    first = json.loads((out / "prompts.jsonl").open().readline())["prompt"]
    check_tokenization(tokenizer, first)
    report = {"rows": rows, "quarantined": quarantined, "modes": dict(counts["mode"]), "tasks": dict(counts["task"]),
              "sources": [{"source": s.path, "name": s.name, "split": s.split, "mode": s.mode,
                           "rows": counts["source"][_label(s)]} for s in recipe.data.sources]}
    if is_main_process():
        write_json_atomic(out / "prompts.json", report)
        print(f"prompts: {rows} (modes {report['modes']}, tasks {report['tasks']}), quarantined {quarantined}")
    dataset = load_dataset("json", data_files=str(out / "prompts.jsonl"), split="train",
                           cache_dir=str(out / ".cache"))
    return dataset, report


def _label(source) -> str:
    from pipeline.core.schema import source_label

    return source_label(source.path, source.split, source.name)


def check_tokenization(tokenizer, prompt: str) -> None:
    """TRL tokenizes a text prompt with the tokenizer's special tokens added; a tokenizer that adds a BOS token
    would put one before our rendered prompt, which eval never sends. Refused rather than trained on."""
    added = tokenizer(prompt).input_ids
    if added != tokenizer(prompt, add_special_tokens=False).input_ids:
        raise UserError(f"{tokenizer.name_or_path}: its tokenizer adds special tokens to text ({added[:2]}...), "
                        "which TRL would put before every rendered prompt; this stage needs a tokenizer that adds "
                        "none (SmolLM's do not)")


def summarise_training(trainer, run, recipe) -> None:
    """The `rewards` section and its curve, from the log history; the policy-gradient loss, whose value has no
    trend to read (its mean is about zero whatever the policy learns), is not shown as a curve to read."""
    if not trainer.is_world_process_zero():
        return
    run.summary.pop("loss", None)
    section = rewards_section(trainer.state.log_history)
    if section is None:
        return
    plot_rewards(section, run.path / "rewards.png", f"{recipe.name} {recipe.stage}")
    run.summary["rewards"] = section
    run.summary["outputs"] = ["rewards.png", *run.summary.get("outputs", [])]
    run.metrics["reward"] = {"first": section["first"]["reward"], "last": section["last"]["reward"]}
