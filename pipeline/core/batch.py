"""The global batch a training recipe states, and the gradient accumulation that makes it on the GPUs a
job runs on.

    training:
      global_batch_size: 128            # ours: rows per optimizer step, whatever the GPU count
      per_device_train_batch_size: 1    # TRL's: rows per GPU per micro-step

    batch = batch_for(recipe.settings, gpus=8)   # 128 = 8 GPUs x 1 x 16 accumulation steps

Global batch = GPUs x per_device_train_batch_size x gradient_accumulation_steps. The published SmolLM3 configs
give the accumulation, which holds their batch only on the GPU count they were written for (2 steps on 64
GPUs make 128; the same file on 8 GPUs makes 16), and the learning rates were tuned for that batch. A recipe
that states `global_batch_size` instead gets the accumulation derived from the world size at launch
(WORLD_SIZE, set by torchrun, accelerate and DeepSpeed's launcher); a GPU count that cannot make the batch
exactly is refused before anything loads, and `smolalign plan --gpus N` shows the same derivation.

`global_batch_size` is ours, not TRL's: `trl_training` replaces it with the derived accumulation before TRL's
config is built. A recipe may still give `gradient_accumulation_steps` itself (not both): its global batch then
follows the GPU count.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GLOBAL_BATCH = "global_batch_size"
# Keys of `training:` that are ours: checked here, never passed to TRL.
OWN_TRAINING_KEYS = (GLOBAL_BATCH,)


class BatchError(ValueError):
    """A global batch that this GPU count cannot make."""


@dataclass(frozen=True)
class Batch:
    """Rows per optimizer step and how they are made: gpus x per_device x accumulation = global_batch."""

    global_batch: int
    gpus: int
    per_device: int
    accumulation: int
    derived: bool  # the accumulation was derived from training.global_batch_size (else the recipe gave it)

    def describe(self) -> str:
        how = (f"accumulation derived from training.{GLOBAL_BATCH}" if self.derived
               else "gradient_accumulation_steps as the recipe gives it")
        return (f"global batch {self.global_batch} = {self.gpus} GPU(s) x {self.per_device} per device x "
                f"{self.accumulation} accumulation step(s) ({how})")


def world_size(environ: dict[str, str] | None = None) -> int:
    """Processes in this job, as the launcher says (WORLD_SIZE); 1 without a launcher."""
    value = (os.environ if environ is None else environ).get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise BatchError(f"WORLD_SIZE={value!r} is not a number of processes; launch with torchrun or accelerate")
    return int(value)


def batch_for(settings: Mapping[str, Any], gpus: int) -> Batch:
    """The batch of a recipe's resolved training settings (TrainRecipe.settings: TRL's defaults under what the
    recipe leaves out) on `gpus` processes. Raises BatchError when `global_batch_size` cannot be made exactly
    on this many GPUs."""
    per_device = int(settings["per_device_train_batch_size"])
    if GLOBAL_BATCH not in settings:
        accumulation = int(settings["gradient_accumulation_steps"])
        return Batch(gpus * per_device * accumulation, gpus, per_device, accumulation, derived=False)
    wanted, per_step = int(settings[GLOBAL_BATCH]), gpus * per_device
    if wanted % per_step:
        raise BatchError(f"training.{GLOBAL_BATCH} {wanted} cannot be made on {gpus} GPU(s) with "
                         f"per_device_train_batch_size {per_device}: a step takes a multiple of {per_step} rows; "
                         f"run on {_counts_that_make(wanted, per_device)} GPUs, or change per_device_train_batch_size")
    return Batch(wanted, gpus, per_device, wanted // per_step, derived=True)


def _counts_that_make(wanted: int, per_device: int) -> str:
    """The GPU counts that make `wanted` rows with `per_device` each: the divisors of wanted / per_device."""
    rows = wanted // per_device
    counts = [n for n in range(1, rows + 1) if rows % n == 0]
    shown = counts if len(counts) <= 12 else counts[:6] + ["..."] + counts[-3:]
    return ", ".join(map(str, shown[:-1])) + f" or {shown[-1]}" if len(shown) > 1 else str(shown[0])


def batch_problems(training: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a stated global batch whatever the GPU count: its type, a second way of giving the
    accumulation, a per-device batch that does not divide it."""
    if GLOBAL_BATCH not in training:
        return []
    where, wanted = f"training.{GLOBAL_BATCH}", training[GLOBAL_BATCH]
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        return [(where, f"{wanted!r} is not a number of rows per optimizer step (a whole number, 1 or more)")]
    if "gradient_accumulation_steps" in training:
        return [(where, "give global_batch_size or gradient_accumulation_steps, not both: the accumulation is "
                        "derived from global_batch_size and the GPU count at launch")]
    per_device = training.get("per_device_train_batch_size")
    if isinstance(per_device, int) and per_device > 0 and wanted % per_device:
        return [(where, f"{wanted} is not a multiple of per_device_train_batch_size {per_device}, so no GPU "
                        "count makes it")]
    return []


def trl_training(training: dict[str, Any], batch: Batch) -> dict[str, Any]:
    """`training` as TRL's config takes it: without our own keys, with the derived accumulation."""
    out = {k: v for k, v in training.items() if k not in OWN_TRAINING_KEYS}
    if batch.derived:
        out["gradient_accumulation_steps"] = batch.accumulation
    return out
