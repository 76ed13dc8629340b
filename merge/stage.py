"""Merge stage: a MergeKit soup of APO checkpoints, then a linear merge with the long-context
(mid-training) checkpoint, soup_weight : 1 - soup_weight (0.9 : 0.1 in the SmolLM3 recipe).

    smolalign merge --recipe recipes/smollm3/merge.yaml         # make merge RECIPE=...

Reads top to bottom: expand the soup's inputs (globs such as `runs/x/apo/checkpoint-*`) -> check
that every input can be merged (architecture, tensor shapes, vocabulary, tied embeddings, dtype)
-> soup (linear, uniform or given weights) into `soup/` -> final linear merge at the top of the
run dir -> the APO model's tokenizer with our chat template (set explicitly, not MergeKit's copy)
-> the MergeKit configs used, a model card and the manifest (every input's fingerprint) -> with
`sweep:`, merges at each of its weights scored by its eval spec (the eval stage's own), a table, a plot
and the best weight (merge/sweep.py). Its summary.json holds `merged` (MERGED, below: {"soup": [{"path",
"weight"}, ...], "soup_weight": 0.9, "long_context": "runs/x/midtrain"}, the soup's weights summing to 1)
and, with a sweep, `sweep` (merge/sweep.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from eval.tasks import check_tasks
from merge.checks import check_compatible
from merge.sweep import SWEEP, sweep, table
from pipeline.core.chat import end_of_turn_as_eos, template_text
from pipeline.core.errors import UserError
from pipeline.core.inputs import expand_glob, is_glob
from pipeline.core.runs import stage_run
from pipeline.core.summary import Section


def check(recipe) -> list[tuple[str, str]]:
    """Stage-specific recipe checks: the sweep's eval tasks and their options."""
    return check_tasks(recipe.sweep.eval.tasks, key="sweep.eval.tasks") if recipe.sweep else []


def soup_inputs(recipe) -> list[tuple[str, float]]:
    """(path, weight) for every soup member; a glob expands to its matches, uniform weights unless set."""
    members = []
    for item in recipe.soup:
        paths = expand_glob(item.path) if is_glob(item.path) else [item.path]
        members += [(p, item.weight) for p in paths]
    if any(w is None for _, w in members):
        if any(w is not None for _, w in members):
            raise UserError(f"{recipe._source}: give every soup member a weight, or none (uniform)")
        members = [(p, 1.0 / len(members)) for p, _ in members]
    return members


def linear_config(members: list[tuple[str, float]], dtype: str) -> dict:
    return {"merge_method": "linear", "dtype": dtype, "parameters": {"normalize": False},
            "models": [{"model": path, "parameters": {"weight": weight}} for path, weight in members]}


class _Unless(logging.Filter):
    """Drops a library's log records that start with `start`."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


INFERRED_ARCHITECTURE = "SmolLM3ForCausalLM"
# mergekit 0.1.5 ships no layout file for SmolLM3 and warns "No JSON architecture found for SmolLM3ForCausalLM",
# which reads as an error; it then reads the layout from the weights, which is right (tests/test_merge.py: the
# merge is exact and keeps no_rope_layers): the stage says so in its own words (say_inferred_layout).
logging.getLogger("mergekit.architecture").addFilter(_Unless(f"No JSON architecture found for "
                                                            f"{INFERRED_ARCHITECTURE}"))
# mergekit sets `config.torch_dtype`, which transformers 5 renamed `dtype`: its deprecation is mergekit's to fix.
logging.getLogger("transformers.configuration_utils").addFilter(_Unless("`torch_dtype` is deprecated"))


def say_inferred_layout(paths: list[str]) -> None:
    architectures = {a for p in paths for a in json.loads((Path(p) / "config.json").read_text()).get("architectures",
                                                                                                      [])}
    if INFERRED_ARCHITECTURE in architectures:
        print(f"mergekit reads the layout of {INFERRED_ARCHITECTURE} from its weights (it ships no layout file for "
              "it): the merged tensors and no_rope_layers are checked to come out right")


def run_mergekit(config: dict, out: Path, record: Path, partial: Path, final: Path) -> None:
    """Merge into `out`; write the config to `record` with paths as they will be once the run
    directory is promoted (`partial` -> `final`), so it can be rerun as written."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    out.mkdir(parents=True, exist_ok=True)
    record.write_text(yaml.safe_dump(config, sort_keys=False).replace(str(partial), str(final)))
    run_merge(MergeConfiguration.model_validate(config), str(out),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, lazy_unpickle=True, quiet=True))


def run(recipe, overwrite: bool = False) -> Path:
    from transformers import AutoTokenizer

    members = soup_inputs(recipe)
    total = sum(w for _, w in members)
    members = [(p, w / total) for p, w in members]  # the soup is an average
    check_compatible([p for p, _ in members] + [recipe.long_context.path])
    say_inferred_layout([recipe.long_context.path])  # check_compatible found every input of one architecture
    with stage_run(recipe, overwrite) as run:
        if len(members) > 1:
            soup = run.path / "soup"
            run_mergekit(linear_config(members, recipe.dtype), soup, soup / "mergekit_config.yml", run.path, run.final)
        else:
            soup = Path(members[0][0])
        # The tokenizer of the (first) APO checkpoint, with our template set explicitly.
        tokenizer = AutoTokenizer.from_pretrained(members[0][0])
        template = template_text(recipe.chat.template, Path(recipe._source or ".").parent)
        if template is not None:
            tokenizer.chat_template = template

        def merge_at(weight: float, out: Path) -> None:
            config = linear_config([(str(soup), weight), (recipe.long_context.path, round(1 - weight, 10))]
                                   if weight < 1 else [(str(soup), 1.0)], recipe.dtype)
            run_mergekit(config, out, out / "mergekit_final.yml", run.path, run.final)
            tokenizer.save_pretrained(str(out))
            inference_ready(out, tokenizer)

        merge_at(recipe.soup_weight, run.path)
        if recipe.sweep:
            result = sweep(recipe, soup, run.path / "sweep", merge_at)
            run.metrics.update({"sweep_best_weight": result["best_weight"], "sweep_best_mean": result["best_mean"]})
            run.summary["sweep"] = {"rows": result["rows"], "best_weight": result["best_weight"],
                                    "file": "sweep/sweep.md", "table": table(result)}
        run.metrics.update({"soup_members": len(members), "soup_weights": [w for _, w in members],
                            "soup_weight": recipe.soup_weight})
        write_model_card(run, recipe, members)
        run.summary["merged"] = {"soup": [{"path": p, "weight": w} for p, w in members],
                                 "soup_weight": recipe.soup_weight, "long_context": recipe.long_context.path}
        # those written: save_summary drops the others
        run.summary["outputs"] = ["sweep/sweep.md", "mergekit_final.yml", "soup/mergekit_config.yml", "lineage.json",
                                  "README.md"]
    return recipe.output_path()


def inference_ready(path: Path, tokenizer) -> None:
    """The merged checkpoint as generation needs it: a KV cache (mid-training checkpoints were saved
    with use_cache=False and MergeKit copies their config) and `<|im_end|>` as EOS in config.json and
    a generation_config.json (MergeKit writes none), as the official configs set it."""
    from transformers import GenerationConfig

    end_of_turn_as_eos(tokenizer)
    tokenizer.save_pretrained(str(path))
    eos = tokenizer.eos_token_id
    config = json.loads((path / "config.json").read_text())
    config.update(use_cache=True, eos_token_id=eos)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=config.get("bos_token_id"),
                     do_sample=True, temperature=0.6, top_p=0.95).save_pretrained(str(path))  # SmolLM3's defaults


def write_model_card(run, recipe, members) -> None:
    lines = "\n".join(f"| `{p}` | {w:.4f} |" for p, w in members)
    card = f"""---
library_name: transformers
tags: [smolalign, merge, mergekit, dual-mode]
---
# {recipe.name} — merge

Linear merge `{recipe.soup_weight}` × soup + `{1 - recipe.soup_weight:.2f}` × long-context checkpoint
`{recipe.long_context.path}` (SmolLM3 recipe: restores long-context scores lost in APO).

## Soup members
| checkpoint | weight |
|---|---|
{lines}

MergeKit configs: `soup/mergekit_config.yml` (when the soup has several members) and
`mergekit_final.yml`. Lineage (fingerprints and recipe hashes of every input): `manifest.json`.
Ships the smolalign dual-mode chat template.
"""
    (run.path / "README.md").write_text(card)
    (run.path / "lineage.json").write_text(json.dumps(run.manifest["inputs"], indent=2))


# ----------------------------------------------------------------------------------------------
# What a run writes in summary.json beside the shared keys, and how the eval report shows it
# ----------------------------------------------------------------------------------------------
def merged_cell(merged: dict, view) -> str:
    rest = round(1 - merged["soup_weight"], 10)
    return f"{merged['soup_weight']:g} x soup of {len(merged['soup'])} + {rest:g} x `{merged['long_context']}`"


def merged_lines(merged: dict, view) -> list[str]:
    """What the run merged, with the weights."""
    soup = ", ".join(f"`{s['path']}` ({s['weight']:g})" for s in merged["soup"] if isinstance(s, dict))
    return ["", f"Merged: {merged['soup_weight']:g} x the soup of {soup}; {round(1 - merged['soup_weight'], 10):g} x "
            f"`{merged['long_context']}`."]


MERGED = Section("merged", required={"soup": None, "soup_weight": None, "long_context": None}, glance="merged from",
                 cell=merged_cell, lines=merged_lines)
SUMMARY_SECTIONS = [MERGED, SWEEP]
