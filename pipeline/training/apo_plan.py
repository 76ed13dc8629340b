"""What `smolalign plan` shows of an APO recipe: its preference pairs, read as the stage reads them
(pairs per source and mode, prompt and answer lengths against max_length), what an epoch holds, and what
its reference model costs (a forward per trained token; a frozen copy of the weights unless `ref_model`,
LoRA or precomputed log-probs make it unneeded).

    smolalign plan recipes/smollm3/apo.yaml        # pipeline/planning/plan.py calls plan() and plan_text()
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.inputs import classify_input
from pipeline.core.schema import source_label
from pipeline.core.stages import PlanSection
from pipeline.core.text import table

# The reference model's forward over every trained token: a third of a training step's FLOPs.
REFERENCE_FORWARD = 1 / 3


def plan(recipe, planner) -> PlanSection:
    training = planner.training(recipe)
    data, problems = pairs_section(recipe, planner, training.max_length)
    max_length = training.max_length
    return PlanSection(data=data, problems=problems, work=work(recipe, planner, data, max_length),
                       sequences_per_row=2,  # DPO puts chosen and rejected through the model together
                       reference_forward=REFERENCE_FORWARD,
                       reference_copy=recipe.keeps_reference_copy())


def pairs_section(recipe, planner, max_length: int | None) -> tuple[dict[str, Any], list[str]]:
    """Pairs per source and mode (the stage's own budgets and checks), and token lengths of prompts and
    answers against max_length."""
    from pipeline.core.errors import UserError
    from pipeline.data.pairs import preference_rows

    how = "the pairs are read by the APO stage itself (no prepare step); they must be on this machine"
    remote = [s.path for s in recipe.data.sources if classify_input(s.path) == "hub"]
    if remote:
        return {"status": "unknown", "why": f"Hub datasets are not read offline: {', '.join(remote)}", "how": how}, []
    missing = [s.path for s in recipe.data.sources if not Path(s.path).expanduser().exists()]
    if missing:
        return {"status": "unknown", "why": f"not on this machine yet: {', '.join(missing)}", "how": how}, []
    tokenizer, why = planner.tokenizer(recipe)
    if tokenizer is None:
        return {"status": "unknown", "why": why, "how": how}, []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows, report = preference_rows(recipe, tokenizer, Path(tmp) / "quarantine.jsonl")
        except UserError as e:
            return {"status": "unusable"}, [str(e)]
    by = Counter((r["source"], "think" if r["thinking"] else "no_think") for r in rows)
    for i, s in enumerate(report["sources"]):
        source = recipe.data.sources[i]
        s["label"] = source_label(source.path, source.split, source.name)
        s["modes"] = {mode: by[(i, mode)] for mode in ("think", "no_think") if by[(i, mode)]}
    lengths = pair_lengths(rows, tokenizer)
    report["lengths"] = {k: percentiles(v) for k, v in lengths.items()}
    report["max_length"] = max_length
    report["pairs_over_max_length"] = sum(max(c, r) > max_length for c, r in zip(lengths["prompt_chosen"],
                                                                                  lengths["prompt_rejected"])
                                          ) if max_length else 0  # no max_length: nothing is cut
    report["tokens"] = sum(lengths["prompt_chosen"]) + sum(lengths["prompt_rejected"])
    return {"status": "read", **report}, []


def pair_lengths(rows: list[dict[str, Any]], tokenizer) -> dict[str, list[int]]:
    """Tokens of each pair's prompt (with the generation prompt), chosen and rejected answers, as rendered."""
    out: dict[str, list[int]] = {k: [] for k in ("prompt", "chosen", "rejected", "prompt_chosen", "prompt_rejected")}
    for r in rows:
        kwargs = r["chat_template_kwargs"]
        prompt = len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, **kwargs)["input_ids"])
        out["prompt"].append(prompt)
        for key in ("chosen", "rejected"):
            full = len(tokenizer.apply_chat_template(r["prompt"] + r[key], tokenize=True, return_dict=True,
                                                     **kwargs)["input_ids"])
            out[key].append(full - prompt)
            out[f"prompt_{key}"].append(full)
    return out


def percentiles(values: list[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(max(values))}


def work(recipe, planner, data: dict[str, Any], max_length: int) -> dict[str, Any]:
    """Pairs and tokens (both sides) an epoch holds: from the pairs read here, else estimated."""
    if data.get("status") == "read":
        return {"rows_per_epoch": data["rows"], "tokens_per_epoch": data["tokens"],
                "span": data["tokens"] / max(2 * data["rows"], 1), "work_from": "the pairs"}
    return estimated_work(recipe, planner, max_length)


def estimated_work(recipe, planner, max_length: int) -> dict[str, Any]:
    """An epoch's pairs and tokens from each source's known size (its chosen side) and the recipe's weight:
    a pair is prompt + chosen and prompt + rejected, the rejected side assumed as long as the chosen, each
    cut to max_length; attention runs over each source's mean side length, weighted by its tokens."""
    sized, unknown = planner.sized_sources(recipe)
    if unknown:
        return {"work_from": f"unknown: the size of {', '.join(unknown)} is not known here and the data is not "
                             "built or read"}
    pairs = tokens = spans = 0.0
    for source, size in sized:
        per_side = size["tokens_chosen"] / size["rows"]
        kept = min(per_side, max_length)
        n = source.tokens / per_side if source.tokens else size["rows"] * (source.fraction or 1.0)
        pairs += n
        tokens += n * kept * 2
        spans += n * kept * kept
    return {"rows_per_epoch": math.ceil(pairs), "tokens_per_epoch": tokens, "span": spans / (tokens / 2),
            "work_from": "estimate: each source's size in the smoltalk2 dataset card x the recipe's weights (rejected "
                         "answers as long as chosen ones; attention over each source's mean document length); the "
                         "built data gives exact figures"}


def plan_text(data: dict[str, Any]) -> list[str]:
    """The pairs section as `smolalign plan` prints it."""
    if data.get("status") != "read":
        return [f"\n-- what it trains on: not known yet: {data.get('why', data.get('status'))}; {data.get('how', '')}"]
    lines = ["\n-- preference pairs (read as the APO stage reads them)"]
    lines += table(["source", "pairs", "think", "no_think", "quarantined"],
                   [[s["label"], s["rows"], s["modes"].get("think", 0), s["modes"].get("no_think", 0),
                     s["quarantined"]] for s in data["sources"]])
    lines += table(["tokens", "p50", "p90", "p99", "max"],
                   [[k, *(f"{v[q]:,.0f}" for q in ("p50", "p90", "p99", "max"))]
                    for k, v in data["lengths"].items() if v])
    lines.append(f"  pairs longer than max_length {data['max_length']}: {data['pairs_over_max_length']}")
    return lines
