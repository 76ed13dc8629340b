"""The rl stage's part of `smolalign plan`: its prompts (read and rendered here where the sources and the
tokenizer are on this machine), the completions it generates, and what an epoch holds for the shared cost model
(pipeline/planning/plan.py): every completion at max_completion_length (an upper bound; RL completions grow
and shrink as training goes), generated, then trained on with its prompt `num_iterations` times.

Where the prompts cannot be read offline (a Hub dataset, a tokenizer not cached), a run with `max_steps` is still
costed: its steps x global batch completions at max_completion_length, the prompts' own tokens left out (said so).
With vLLM colocated (`use_vllm`, `vllm_mode: colocate`), the engine holds `vllm_gpu_memory_utilization` of every
GPU beside training; the memory line adds it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.batch import BatchError, batch_for
from pipeline.core.errors import UserError
from pipeline.core.stages import PlanSection
from pipeline.generation import Renderer
from rl.prompts import dataset_rows


def plan(recipe, planner) -> PlanSection:
    t = planner.training(recipe)
    generations, longest, iterations = int(t["num_generations"]), int(t["max_completion_length"]), int(
        t.get("num_iterations") or 1)
    data: dict[str, Any] = {"completions_per_prompt": generations, "max_completion_length": longest,
                            "num_iterations": iterations, "prompt_modes": recipe.prompt_modes,
                            "rewards": recipe.rewards.model_dump(), "loss_type": t.get("loss_type"),
                            "beta": t.get("beta"), "generation": generation_engine(t)}
    lengths, why = prompt_lengths(recipe, planner)
    section = PlanSection(data=data, reference_copy=bool(t.get("beta")) and recipe.peft is None,
                          reference_forward=1 / 3 if t.get("beta") else 0.0, reserved=reserved(t))
    if lengths:
        completions = len(lengths) * generations
        data.update(status="read", prompts=len(lengths), prompt_tokens=sum(lengths), longest_prompt=max(lengths))
        section.work = {"rows_per_epoch": completions * iterations,
                        "tokens_per_epoch": iterations * (generations * sum(lengths) + completions * longest),
                        "span": sum(lengths) / len(lengths) + longest,
                        "work_from": "the prompts read here, every completion at max_completion_length"}
        section.generated_tokens_per_epoch = completions * longest
        section.max_length = max(lengths) + longest
        return section
    data.update(status="unknown", why=why)
    completions = run_completions(recipe, planner, t)
    if completions:  # max_steps says how much the run generates, whatever the prompts
        section.work = {"rows_per_epoch": completions, "tokens_per_epoch": completions * longest, "span": longest,
                        "work_from": f"max_steps x global batch = {completions:,} completions at "
                                     "max_completion_length (the prompts' own tokens are not counted: " + why + ")"}
        section.generated_tokens_per_epoch = completions * longest / iterations
        section.max_length = longest
    return section


def prompt_lengths(recipe, planner) -> tuple[list[int], str | None]:
    """Tokens of every training prompt as the policy is sent it, or ([], why not) offline."""
    tokenizer, why = planner.tokenizer(recipe)
    if tokenizer is None:
        return [], why
    renderer = Renderer(tokenizer, today_date=recipe.chat.today_date, knowledge_cutoff=recipe.chat.knowledge_cutoff)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return [len(tokenizer(row["prompt"], add_special_tokens=False).input_ids)
                    for row in dataset_rows(recipe, renderer, Path(tmp) / "quarantine.jsonl")], None
    except (UserError, OSError, ConnectionError) as e:  # a Hub dataset offline, a file not written yet
        return [], f"the prompts cannot be read here ({str(e).splitlines()[0]})"


def run_completions(recipe, planner, t: dict[str, Any]) -> int | None:
    """Completions trained on over the run (max_steps x global batch), or None without max_steps."""
    if int(t.get("max_steps") or -1) <= 0:
        return None
    try:
        batch = batch_for(recipe.settings, planner.gpus)
    except BatchError:
        return None  # the shared cost says why this GPU count cannot run it
    return int(t["max_steps"]) * batch.global_batch


def generation_engine(t: dict[str, Any]) -> str:
    if not t.get("use_vllm"):
        return "transformers (generate on the training model)"
    if t.get("vllm_mode") == "server":
        return "vLLM server (its own GPUs: `trl vllm-serve`)"
    return f"vLLM colocated ({t.get('vllm_gpu_memory_utilization')} of each GPU)"


def reserved(t: dict[str, Any]) -> tuple[float, str] | None:
    """A colocated vLLM engine's share of each GPU (its KV cache and weights live beside training)."""
    if t.get("use_vllm") and t.get("vllm_mode", "colocate") == "colocate":
        return float(t["vllm_gpu_memory_utilization"]), "colocated vLLM"
    return None


def plan_text(data: dict) -> list[str]:
    head = (f"  {data['completions_per_prompt']} completions of each prompt, at most {data['max_completion_length']} "
            f"tokens each, trained on {data['num_iterations']} time(s); prompts in "
            f"{'both modes' if data['prompt_modes'] == 'both' else 'the mode each row asks for'}; reward = "
            f"{data['rewards']['task']:g} x task + {data['rewards']['format']:g} x format; loss {data['loss_type']}, "
            f"beta {data['beta']:g}; generation: {data['generation']}")
    if data.get("status") != "read":
        return ["\n-- prompts (the stage completes them itself)", head, f"  prompts: not known here: {data['why']}"]
    return ["\n-- prompts (the stage completes them itself)", head,
            f"  {data['prompts']:,} prompts (one per mode), {data['prompt_tokens']:,} tokens, the longest "
            f"{data['longest_prompt']:,}"]

