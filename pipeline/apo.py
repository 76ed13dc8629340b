"""APO stage: Anchored Preference Optimization with TRL's DPO trainer (`loss_type: apo_zero`).

    smolalign apo --recipe recipes/smollm3/apo.yaml          # make apo RECIPE=...

Reads top to bottom: seed -> tokenizer (+ our chat template) -> preference pairs (each row with its
own mode in chat_template_kwargs) -> policy and reference -> train (resumes) -> save.

Reference model, by recipe: `ref_model:` loads a separate one; without it TRL keeps a frozen copy
of the policy (one more model in memory per GPU), or, with `training.precompute_ref_log_probs:
true`, runs the reference once over the data before training and keeps no copy (one extra pass,
no extra memory during training). With `peft:` the reference is the adapter-free base model.
Checkpoints (`save_steps`) are what the merge stage soups.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data import build_preference_mixture
from pipeline.runs import is_main_process, stage_run
from pipeline.train import (
    check_environment,
    finish,
    load_model,
    load_tokenizer,
    peft_config,
    rank_checksums,
    train_or_restore,
    trl_args,
)


def run(recipe, overwrite: bool = False) -> Path:
    from transformers import set_seed
    from trl import DPOTrainer

    check_environment(recipe)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe)
    with stage_run(recipe, overwrite) as run:
        dataset, report = build_preference_mixture(recipe, run.path / "quarantine.jsonl")
        if is_main_process():
            (run.path / "pairs.json").write_text(json.dumps(report, indent=2))
            print(f"preference pairs: {report['rows']} ({report['modes']}), quarantined {report['quarantined']}")
        model = load_model(recipe.model)
        ref_model = load_model(recipe.ref_model) if recipe.ref_model else None
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=trl_args(recipe, run.path),
                             train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(recipe))
        train_or_restore(trainer, run.path)
        finish(trainer, tokenizer, run, recipe, extra={
            "pairs": report["rows"], "quarantined_pairs": report["quarantined"],
            "rank_param_checksums": rank_checksums(trainer.model),
        })
    return recipe.output_path()
