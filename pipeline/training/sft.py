"""SFT stage: dual-mode supervised fine-tuning with TRL's SFTTrainer.

    smolalign sft --recipe recipes/smollm3/sft.yaml          # make sft RECIPE=...
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m pipeline.cli sft --recipe ...

Reads top to bottom: seed -> tokenizer (+ our chat template) -> mixture (tokens, assistant-only
labels, packed) -> model -> train (resumes from the newest checkpoint of an interrupted run) -> save.
The mixture is built here rather than by TRL because TRL cannot budget sources by tokens,
quarantine bad rows, report per source and mode, or keep document boundaries in wrapped packs;
TRL then trains on the packed rows padding-free, so attention stays inside each document.
Mid-training runs this same code (see midtrain.py): the recipe switches the loss to every token.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pipeline.core.models import cache_dir
from pipeline.core.preemption import deferred
from pipeline.core.runs import is_main_process, stage_run
from pipeline.core.schema import TrainRecipe
from pipeline.data.mixture import build_sft_mixture
from pipeline.data.rows import format_report
from pipeline.training.sections import TRAINING_SECTIONS, trained_on_section
from pipeline.training.sft_plan import plan, plan_text
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

__all__ = ["SFTRecipe", "SUMMARY_SECTIONS", "plan", "plan_text", "prepare", "run"]
# What a run writes in summary.json beside the shared keys (its loss trend, the rows it trained on), and how the
# eval report shows it; `plan` / `plan_text` (sft_plan.py): its part of `smolalign plan`.
SUMMARY_SECTIONS = TRAINING_SECTIONS


class SFTRecipe(TrainRecipe):
    """sft: a dual-mode mixture (assistant-only loss, packed) and TRL's SFTConfig."""

    stage: Literal["sft"]

    def trl_settings(self) -> dict[str, Any]:
        return pre_packed(self)


def pre_packed(recipe: TrainRecipe) -> dict[str, Any]:
    """TRL's settings for the rows our mixture builds (SFT and mid-training): tokenized, masked (labels),
    packed and cut to max_length already, so TRL redoes none of it and trains packed rows padding-free."""
    return {"packing": False, "assistant_only_loss": False, "completion_only_loss": False,
            "padding_free": bool(recipe.settings.packing), "dataset_kwargs": {"skip_prepare_dataset": True},
            "max_length": None}


class _PrePackedWarningFilter(logging.Filter):
    """TRL sees `packing=False` (we pack ourselves) and warns that batch size 1 with padding-free
    "annihilates the benefits"; for rows packed to max_length that advice is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "annihilate the benefits of padding-free" not in record.getMessage()


def run(recipe, overwrite: bool = False) -> Path:
    from transformers import set_seed
    from trl import SFTTrainer

    check_environment(recipe)
    batch = training_batch(recipe)  # a GPU count that cannot make the global batch fails here, before any load
    attention = announce_attention(recipe)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe)
    with stage_run(recipe, overwrite) as run:
        record_attention(run, model=attention)
        announce_batch(run, batch)
        record_settings(run, recipe)
        quarantine = run.path / "quarantine.jsonl"
        dataset, report = build_sft_mixture(recipe, tokenizer, cache_dir() / "mixtures", quarantine)
        if is_main_process():
            (run.path / "mixture.json").write_text(json.dumps(report, indent=2))
            (run.path / "mixture.txt").write_text(format_report(report) + "\n")
            print(format_report(report))
        run.summary.update(outputs=["mixture.txt"], trained_on=trained_on_section("mixture", "mixture.txt", report))
        packed = bool(recipe.settings.packing)
        if packed:
            logging.getLogger("trl.trainer.sft_trainer").addFilter(_PrePackedWarningFilter())
        args = trl_args(recipe, run.path)  # with the recipe's trl_settings: pre_packed
        trainer = SFTTrainer(model=load_model(recipe.model, attention), args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config(recipe))
        with deferred():  # a stop signal ends the current step and saves it; a finished training is saved whole
            train_or_restore(trainer, run.path)
            finish(trainer, tokenizer, run, recipe, extra={
                "mixture_rows": report["rows"], "quarantined_rows": report["quarantined"],
                "packing_efficiency": report.get("packing", {}).get("efficiency"),
                "rank_param_checksums": rank_checksums(trainer.model),
            })
    return recipe.output_path()


def prepare(recipe, shard: tuple[int, int] | None = None) -> None:
    """`smolalign prepare`: build the mixture `run` will train on (the same code, the same cache entry),
    ahead of the GPU job. With `shard` (i, n): tokenize only share i of n of every source."""
    tokenizer = load_tokenizer(recipe)
    quarantine = recipe.output_path().with_name(recipe.output_path().name + ".quarantine.jsonl")
    dataset, report = build_sft_mixture(recipe, tokenizer, cache_dir() / "mixtures", quarantine, shard=shard)
    if shard is not None:
        print(f"prepare: share {shard[0]}/{shard[1]} tokenized; run once more without --shard to collect and pack")
        return
    print(format_report(report))
    print(f"prepare: {len(dataset)} rows -> {cache_dir() / 'mixtures' / report['fingerprint']}"
          + (f"; quarantined rows: {quarantine}" if report["quarantined"] else ""))
