"""What `smolalign plan` shows of a synth recipe: prompts x modes x models x max_new_tokens (an upper bound
on the tokens generated), and GPU-hours at the vLLM throughput given (`--vllm-tokens-per-s`).

    smolalign plan recipes/smollm3/synth-traces.yaml --vllm-tokens-per-s 2500
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.inputs import classify_input
from pipeline.core.stages import PlanSection
from synth.prompts import load_prompts


def plan(recipe, planner) -> PlanSection:
    """The generations the recipe asks for, from the prompts its sources give (`count_prompts`)."""
    prompts, unknown, problems = count_prompts(recipe)
    models = 2 if recipe.weak else 1
    generations = prompts * len(recipe.modes) * models if prompts is not None else None
    max_new_tokens = recipe.sampling.max_new_tokens
    tokens = generations * max_new_tokens if generations is not None else None
    data = {"prompts": prompts, "modes": list(recipe.modes), "models": models, "generations": generations,
            "max_new_tokens": max_new_tokens, "generated_tokens_at_most": tokens,
            "prompt_sources_not_counted": unknown}
    if planner.vllm_tokens_per_s and tokens is not None:
        data["vllm_tokens_per_s"] = planner.vllm_tokens_per_s
        data["gpu_hours_at_most"] = tokens / planner.vllm_tokens_per_s / 3600
    return PlanSection(data=data, problems=problems)


def count_prompts(recipe) -> tuple[int | None, list[str], list[str]]:
    """(prompts, sources not counted, problems). When every source is a local file, the prompts are drawn as
    the stage draws them (synth.prompts.load_prompts: the one source reader, its budgets and quarantine); else
    the local sources' rows are counted with their fractions (a `tokens` budget needs the rows read)."""
    from pipeline.core.errors import UserError

    sources = recipe.prompts.sources
    if all(count_rows(s.path) is not None for s in sources):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return len(load_prompts(recipe, Path(tmp) / "quarantine.jsonl")), [], []
            except UserError as e:
                return None, [], [str(e)]
    prompts, unknown = 0, []
    for s in sources:
        n = count_rows(s.path)
        if n is None or s.tokens is not None:
            unknown.append(s.path)
            continue
        whole, part = divmod(s.fraction or 1.0, 1.0)  # as the reader draws a fraction (take_fraction)
        prompts += int(whole) * n + round(part * n)
    if unknown and not prompts:
        return None, unknown, []  # not one source could be counted here
    return min(prompts, recipe.max_prompts or prompts), unknown, []


def count_rows(path: str) -> int | None:
    """Rows of a local .jsonl (non-blank lines, read a line at a time) or .json list; None otherwise."""
    p = Path(path).expanduser()
    if classify_input(path) != "local" or not p.is_file():
        return None
    if p.suffix == ".jsonl":
        with open(p, encoding="utf-8", errors="replace") as fh:
            return sum(1 for line in fh if line.strip())
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return len(data) if isinstance(data, list) else 1
    return None


def plan_text(data: dict[str, Any]) -> list[str]:
    """The generation section as `smolalign plan` prints it."""
    if data["prompts"] is None and not data["prompt_sources_not_counted"]:
        return ["\n-- generation (synth): not known: the prompt sources cannot be drawn as written (problems below)"]
    if data["prompts"] is None:
        return ["\n-- generation (synth): not known yet: no prompt source is on this machine "
                f"({', '.join(data['prompt_sources_not_counted'])})"]
    lines = ["\n-- generation (synth)",
             f"  {data['prompts']:,} prompts x {len(data['modes'])} modes x {data['models']} model(s) = "
             f"{data['generations']:,} generations, at most {data['generated_tokens_at_most']:,} tokens "
             f"({data['max_new_tokens']} each)"]
    if data.get("prompt_sources_not_counted"):
        lines.append(f"  not counted (not on this machine): {', '.join(data['prompt_sources_not_counted'])}")
    if data.get("gpu_hours_at_most") is not None:
        lines.append(f"  at most {data['gpu_hours_at_most']:,.1f} GPU-hours at "
                     f"{data['vllm_tokens_per_s']:,.0f} tokens/s")
    else:
        lines.append("  GPU-hours: give the vLLM throughput you measured (--vllm-tokens-per-s)")
    return lines
