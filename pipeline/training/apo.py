"""APO stage: Anchored Preference Optimization with TRL's DPO trainer (`loss_type: apo_zero`).

    smolalign apo --recipe recipes/smollm3/apo.yaml          # make apo RECIPE=...

Reads top to bottom: seed -> tokenizer (+ our chat template) -> preference pairs (each row with its
own mode in chat_template_kwargs) -> policy and reference -> train (resumes) -> save.

Reference model, by recipe: `ref_model:` loads a separate one; without it TRL keeps a frozen copy
of the policy (one more model in memory per GPU), or, with `training.precompute_ref_log_probs:
true`, runs the reference once over the data before training and keeps no copy (one extra pass,
no extra memory during training). With `peft:` the reference is the adapter-free base model.
Checkpoints (`save_steps`) are what the merge stage soups.

With `eval_pairs:` (held-out pairs), the stage measures what it exists for: how often the model
prefers the chosen answer before training (the SFT model, which is also the reference) and after,
the mean log-probability margins, and the implicit reward margin of the result against the start
(pipeline/training/preference.py); written to `preference.json` and the run's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from pipeline.core.errors import UserError
from pipeline.core.models import cache_dir
from pipeline.core.preemption import deferred
from pipeline.core.runs import is_main_process, stage_run
from pipeline.core.schema import ModelSpec, Source, TrainRecipe, TrainsOn
from pipeline.data.pairs import build_preference_mixture
from pipeline.data.rows import BadRow, preference_row
from pipeline.data.sources import iter_rows
from pipeline.training.apo_plan import plan, plan_text
from pipeline.training.preference import HELD_OUT, pair_logprobs, preference_stats, reward_margin
from pipeline.training.sections import TRAINING_SECTIONS, trained_on_section
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
    record_settings,
    train_or_restore,
    training_batch,
    trl_args,
)

__all__ = ["APORecipe", "SUMMARY_SECTIONS", "held_out_pairs", "plan", "plan_text", "preference_report", "run"]


class APORecipe(TrainRecipe):
    """apo: preference pairs, TRL's DPO trainer (`loss_type: apo_zero`), an optional reference model and
    held-out pairs."""

    trl_config: ClassVar[str] = "DPOConfig"
    trains_on: ClassVar[TrainsOn | None] = "pairs"
    stage: Literal["apo"]
    ref_model: ModelSpec | None = Field(
        None, description="The reference model. Default: a frozen copy of `model` (or precomputed log-probs).")
    eval_pairs: str | None = Field(
        None, description="Held-out preference pairs (.jsonl, the training rows' layout), scored before and after "
        "training: how often the model prefers chosen over rejected, and the reward margin.")

    def inputs(self) -> list[tuple[str, str]]:
        out = super().inputs()
        if self.ref_model:
            out.insert(1, ("ref_model.name_or_path", self.ref_model.name_or_path))
        if self.eval_pairs:
            out.append(("eval_pairs", self.eval_pairs))
        return out

    def keeps_reference_copy(self) -> bool:
        """Whether TRL keeps a frozen copy of the policy as the reference, on each GPU beside it: not with a
        `ref_model` (a model of its own), LoRA (the policy with its adapters off) or precomputed log-probs."""
        return self.ref_model is None and self.peft is None and not self.settings.precompute_ref_log_probs

    def stage_problems(self) -> list[tuple[str, str]]:
        t, problems = self.settings, []
        if t.padding_free:
            problems.append(("training.padding_free",
                             "TRL's DPO trainer ignores padding_free (it warns and pads); remove it"))
        if self.ref_model is not None and t.precompute_ref_log_probs:
            problems.append(("ref_model", "precompute_ref_log_probs computes them with the policy's start "
                                          "weights; drop `ref_model` or the precompute flag"))
        return problems


# What a run writes in summary.json beside the shared keys, and how the eval report shows it.
SUMMARY_SECTIONS = [*TRAINING_SECTIONS, HELD_OUT]


def run(recipe, overwrite: bool = False) -> Path:
    from transformers import set_seed
    from trl import DPOTrainer

    check_environment(recipe)
    batch = training_batch(recipe)  # a GPU count that cannot make the global batch fails here, before any load
    attention = {"model": announce_attention(recipe)}
    if recipe.ref_model:
        attention["ref_model"] = announce_attention(recipe, "ref_model")
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe)
    with stage_run(recipe, overwrite) as run:
        record_attention(run, **attention)
        announce_batch(run, batch)
        record_settings(run, recipe)
        dataset, report = build_preference_mixture(recipe, tokenizer, cache_dir() / "pairs",
                                                   run.path / "quarantine.jsonl")
        if is_main_process():
            (run.path / "pairs.json").write_text(json.dumps(report, indent=2))
            print(f"preference pairs: {report['rows']} ({report['modes']}), quarantined {report['quarantined']}")
        run.summary.update(outputs=["pairs.json"], trained_on=trained_on_section("pairs", "pairs.json", report))
        pairs = held_out_pairs(recipe) if recipe.eval_pairs else []  # a bad file fails before any model loads
        model = load_model(recipe.model, attention["model"])
        before = pair_logprobs(model, tokenizer, pairs)  # the starting point, before any step
        ref_model = (load_model(recipe.ref_model, attention["ref_model"], key="ref_model.name_or_path")
                     if recipe.ref_model else None)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=trl_args(recipe, run.path),
                             train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(recipe))
        with deferred():  # a stop signal ends the current step and saves it; a finished training is saved whole
            train_or_restore(trainer, run.path)
            extra = {}
            if pairs:
                extra["held_out_preference"] = preference_report(recipe, before,
                                                                 pair_logprobs(trainer.model, tokenizer, pairs))
                if is_main_process():
                    (run.path / "preference.json").write_text(json.dumps(extra["held_out_preference"], indent=2))
                    print(f"held-out preference: {extra['held_out_preference']}")
                run.summary["outputs"].append("preference.json")
                run.summary["held_out"] = extra["held_out_preference"]
            finish(trainer, tokenizer, run, recipe, extra={
                "pairs": report["rows"], "quarantined_pairs": report["quarantined"],
                "rank_param_checksums": rank_checksums(trainer.model), **extra,
            })
    return recipe.output_path()


def held_out_pairs(recipe) -> list[dict]:
    """The recipe's held-out pairs, read by the one loader, checked and given chat_template_kwargs exactly
    as training rows of mode `from_row` are (pipeline.data.rows.preference_row); a bad pair is an error naming
    the file and the pair, raised before any model loads."""
    source = Source(path=recipe.eval_pairs, mode="from_row")
    pairs = []
    for i, row in enumerate(iter_rows(source), 1):
        try:
            pairs.append(preference_row(recipe, source, row))
        except BadRow as e:
            raise UserError(f"{recipe.eval_pairs}: pair {i}: {e}"
                            " (eval_pairs: held-out pairs in the training rows' layout, each with "
                            "chat_template_kwargs.enable_thinking)") from None
    if not pairs:
        raise UserError(f"{recipe.eval_pairs}: no pairs (eval_pairs): add held-out pairs or remove the key")
    return pairs


def preference_report(recipe, before, after) -> dict:
    """Held-out preference before (the starting point, also the reference) and after training."""
    beta = recipe.settings.beta
    return {"pairs_file": recipe.eval_pairs, "start": {"model": recipe.model.name_or_path, **preference_stats(before)},
            "end": preference_stats(after), "beta": beta, "reward_margin": reward_margin(after, before, beta)}
