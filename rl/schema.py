"""The rl stage's recipe, beside the stage (rl/stage.py) that runs it; registered in pipeline/core/stages.py.

`training:` is TRL's GRPOConfig (loss variants, generation, vLLM: TRL's own keys, checked against TRL);
the rest says where the prompts come from, in which modes, what a completion earns and on what the stage
checks itself before and after.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.core.schema import Strict, TrainRecipe, TrainsOn
from pipeline.generation import BackendSpec, SamplingSpec, TransformersBackendSpec

# Keys of GRPOConfig the stage sets itself, and why.
STAGE_OWNED = {
    "reward_weights": "set by `rewards:` (task and format weights), in the order the stage passes its rewards",
    "chat_template_kwargs": "the stage renders every prompt itself in the mode its row asks for (`prompt_modes`); "
                            "TRL's one set of template arguments would put every prompt in one mode",
    "remove_unused_columns": "the rewards read the prompts' task, reference and mode columns; TRL must keep them",
}

# Values GRPOConfig documents only in prose (TRL 1.16: grpo_config.py's help, grpo_trainer.py's branches); TRL
# itself refuses a wrong one only at the first loss, after the model loaded and generated.
CHOICES = {
    "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"),
    "vllm_mode": ("colocate", "server"),
    "importance_sampling_level": ("token", "sequence"),
    "scale_rewards": ("group", "batch", "none", True, False),
}


class RewardWeights(Strict):
    """What a completion earns: the weighted sum of these rewards, each in [0, 1]."""

    task: float = Field(1.0, ge=0, description="The reward of the prompt row's own eval task, against the row's "
                        "`reference` (Task.training_rows writes both): math-verify equivalence, the share of IFEval "
                        "instructions followed, BFCL's checker, RULER's match, mode adherence. A row without a task "
                        "earns none (see `task`).")
    format: float = Field(0.5, ge=0, description="The format of the prompt's mode (eval's mode task): in /think one "
                          "closed think block with reasoning, then an answer; in /no_think no think tag and no "
                          "reasoning aloud. Keeps RL on one mode from erasing the other.")

    @model_validator(mode="after")
    def _some(self):
        if self.task == 0 and self.format == 0:
            raise ValueError("every reward weight is 0: a completion would earn nothing")
        return self


class HeldOutSpec(Strict):
    """Prompts the stage never trains on, scored before training (the starting checkpoint) and after, with the
    eval stage's own generation and prompts: the task reward and the format adherence, per task and mode."""

    path: str = Field(description="Prompt rows (.jsonl), as the training sources hold them: a task's rows "
                      "(Task.training_rows) carry `task` and `reference`.")
    backend: BackendSpec = TransformersBackendSpec()
    sampling: SamplingSpec | None = Field(None, description="Default: greedy, with training.max_completion_length "
                                          "new tokens (what training allows a completion).")


class RLRecipe(TrainRecipe):
    """rl: prompts alone; TRL's GRPOTrainer samples `num_generations` completions of each, the prompt rows' eval
    tasks and each mode's format reward them, and the policy moves toward the better ones."""

    trl_config: ClassVar[str] = "GRPOConfig"
    trains_on: ClassVar[TrainsOn | None] = "prompts"
    stage: Literal["rl"]
    prompt_modes: Literal["row", "both"] = Field(
        "row", description="`row`: each prompt in the mode its source (or, with `mode: from_row`, the row) asks for; "
        "`both`: each prompt once in /think and once in /no_think.")
    task: str | None = Field(None, description="The eval task that rewards rows naming none (a Hub dataset's "
                             "prompts), against the row's `reference_column`; rows with a `task` column keep theirs.")
    reference_column: str | None = Field(None, description="The column holding what `task` scores a row against "
                                         "(a math dataset's answer: `solution`, `answer`). Default: `reference`, "
                                         "else `answer`.")
    rewards: RewardWeights = RewardWeights()
    eval_prompts: HeldOutSpec | None = Field(None, description="Held-out prompts, scored before and after training.")
    rollouts_every: int = Field(1, ge=0, description="Keep every completion of every Nth step with its rewards "
                                "(rollouts/step-N.jsonl); 0 keeps none.")

    def inputs(self) -> list[tuple[str, str]]:
        out = super().inputs()
        if self.eval_prompts:
            out.append(("eval_prompts.path", self.eval_prompts.path))
        return out

    def trl_settings(self) -> dict:
        """What the stage sets in GRPOConfig itself: the reward weights in the order of its reward functions
        (rl/rewards.py: task, then format), the dataset's extra columns kept for them, and no token count of
        transformers' own (TRL counts a step's prompt and completion tokens; transformers' count looks for input
        ids the generation batch does not have, and warns at every step)."""
        return {"reward_weights": [self.rewards.task, self.rewards.format], "remove_unused_columns": False,
                "include_num_input_tokens_seen": "no"}

    def stage_problems(self) -> list[tuple[str, str]]:
        problems = [(f"training.{key}", f"set by the stage, not here: {why}")
                    for key, why in STAGE_OWNED.items() if key in self.training]
        for key, allowed in CHOICES.items():
            if key in self.training and self.training[key] not in allowed:
                kind = "loss" if key == "loss_type" else "choice"
                problems.append((f"training.{key}", f"{self.training[key]!r} is not a TRL GRPO {kind}; allowed: "
                                 + ", ".join(str(a) for a in allowed if not isinstance(a, bool))))
        for i, source in enumerate(self.data.sources):
            if source.tokens is not None:
                problems.append((f"data.sources.{i}.tokens", "a token budget is for training rows; prompts are "
                                 "drawn with `fraction` (the completions' tokens are what the stage trains on)"))
        return problems
