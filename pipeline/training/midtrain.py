"""Mid-training stage: general-reasoning traces, ChatML, loss on every token, wrapped packing.

    smolalign midtrain --recipe recipes/smollm3/midtrain.yaml     # make midtrain RECIPE=...

The training loop, its plan and its summary sections are the SFT stage's (pipeline/training/sft.py); what
makes it mid-training is the recipe, and its class below enforces it: no assistant-only loss (every token is
trained) and `packing_strategy: wrapped`. Our wrapped packer keeps document boundaries (`seq_lengths`), so each
packed row is trained padding-free with attention inside each document.
"""

from __future__ import annotations

from typing import Any, Literal

from pipeline.core.schema import TrainRecipe
from pipeline.training.sft import SUMMARY_SECTIONS, plan, plan_text, pre_packed, prepare, run

__all__ = ["MidtrainRecipe", "SUMMARY_SECTIONS", "plan", "plan_text", "prepare", "run"]


class MidtrainRecipe(TrainRecipe):
    """midtrain: SFT's recipe, with the loss on every token and wrapped packing."""

    stage: Literal["midtrain"]

    def trl_settings(self) -> dict[str, Any]:
        return pre_packed(self)

    def stage_problems(self) -> list[tuple[str, str]]:
        t, problems = self.settings, []
        if t.assistant_only_loss or t.completion_only_loss:
            problems.append(("training.assistant_only_loss",
                             "mid-training trains on every token; remove assistant_only_loss/completion_only_loss"))
        if t.packing and t.packing_strategy != "wrapped":
            problems.append(("training.packing_strategy", "mid-training uses wrapped packing: set `wrapped`"))
        return problems
