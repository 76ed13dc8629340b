"""What the training stages share: tokenizer + template, model loading, TRL arguments, resume,
progress, and the finished checkpoint (weights, our chat template, loss curve, model card).

The stages themselves (midtrain.py, sft.py, apo.py) read top to bottom: seed -> model -> data ->
train -> save. TRL does the training; nothing here re-implements it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.batch import Batch, BatchError, batch_for, world_size
from pipeline.core.chat import end_of_turn_as_eos, generation_markers_problem, template_text
from pipeline.core.checks import trl_config_class, trl_kwargs
from pipeline.core.errors import UserError
from pipeline.core.files import pyplot, save_figure, write_json_atomic
from pipeline.core.inputs import hub_errors
from pipeline.core.models import flash_attn_import_error, resolve_model
from pipeline.core.preemption import Preempted, deferred, requested
from pipeline.core.redaction import redact
from pipeline.core.runs import checkpoint_problem, is_main_process, set_aside_dir
from pipeline.core.schema import ModelSpec, TrainRecipe
from pipeline.training.sections import loss_section


# ----------------------------------------------------------------------------------------------
# Tokenizer, template, model
# ----------------------------------------------------------------------------------------------
def load_tokenizer(recipe: TrainRecipe, local_files_only: bool = False):
    """The model's tokenizer with our chat template installed (so every checkpoint ships it).
    `local_files_only`: a Hub model's tokenizer from the local Hugging Face cache only (`plan`, offline)."""
    from transformers import AutoTokenizer

    with hub_errors(recipe.model.name_or_path, "model.name_or_path"):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(recipe.model.name_or_path),
                                                  revision=recipe.model.revision, local_files_only=local_files_only)
    template = template_text(recipe.chat.template, Path(recipe._source or ".").parent)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    end_of_turn_as_eos(tokenizer)  # what every checkpoint we write ships
    problem = generation_markers_problem(tokenizer.chat_template or "", recipe.chat.template)
    if recipe.settings.get("assistant_only_loss") and problem:  # `chat.template: model` is known only now
        raise UserError(f"{recipe.model.name_or_path}: {problem}")
    return tokenizer


@dataclass(frozen=True)
class Attention:
    """The attention kernel a stage trains with, and why: what the manifest and the first log line say."""

    requested: str
    used: str
    why: str
    warning: str | None = None

    def log_line(self, name: str = "model") -> str:
        return f"attention of {name}: {self.used} ({name}.attn_implementation: {self.requested}; {self.why})"


# Above this packed length, sdpa's dense per-row mask and full-square attention cost more than they are worth.
SDPA_PACKED_WARN_TOKENS = 16384


def choose_attention(spec: ModelSpec, packed_length: int | None = None) -> Attention:
    """The attention implementation for `spec` on this machine.

    `auto`: flash_attention_2 where flash-attn imports (varlen kernels: per-document attention of packed rows
    with no mask at all); else flex_attention on a GPU (torch's own; transformers builds a BlockMask from the
    document ids it reads off `position_ids`, and the kernel skips the masked blocks); else sdpa, the CPU path
    (the demo and the tests). An explicit value is honoured; sdpa on a GPU with packed rows above 16k tokens
    gets a warning, since it materialises an L x L mask per row and computes the whole square."""
    import torch

    cuda = torch.cuda.is_available()
    if spec.attn_implementation != "auto":
        warning = None
        if spec.attn_implementation == "sdpa" and cuda and packed_length and packed_length > SDPA_PACKED_WARN_TOKENS:
            warning = (f"warning: sdpa on packed rows of {packed_length} tokens builds a {packed_length} x "
                       f"{packed_length} mask per row ({packed_length ** 2 / 2 ** 30:.1f} GiB) and computes attention "
                       "over the whole square; model.attn_implementation: auto uses flash-attn or flex_attention")
        return Attention(spec.attn_implementation, spec.attn_implementation, "set in the recipe", warning)
    if not cuda:
        return Attention("auto", "sdpa", "no GPU: sdpa, which masks packed rows per document from position_ids")
    broken = flash_attn_import_error()
    if broken is None:
        return Attention("auto", "flash_attention_2", "flash-attn imports: varlen kernels, no mask")
    return Attention("auto", "flex_attention", f"GPU without flash-attn ({broken}): torch's flex_attention, "
                                               "a block mask from position_ids that skips masked blocks")


def packed_length(recipe: TrainRecipe) -> int | None:
    """Tokens per packed row, or None when the stage does not pack."""
    return recipe.settings.get("max_length") if recipe.settings.get("packing") else None


def load_model(spec: ModelSpec, attention: Attention | None = None, key: str = "model.name_or_path"):
    import torch
    from transformers import AutoModelForCausalLM

    attention = attention or choose_attention(spec)
    dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    with hub_errors(spec.name_or_path, key):
        model = AutoModelForCausalLM.from_pretrained(resolve_model(spec.name_or_path), revision=spec.revision,
                                                     dtype=dtype, attn_implementation=attention.used)
    # Packed rows are only isolated without a KV cache; training never needs one.
    model.config.use_cache = False
    return model


def check_environment(recipe: TrainRecipe) -> None:
    """Fail before loading anything when the recipe needs hardware or packages this machine lacks."""
    import torch

    t = recipe.settings
    if not torch.cuda.is_available():
        if t.bf16 or t.fp16:
            raise UserError(f"{recipe._source}: training.bf16/fp16 need a GPU and none is visible; "
                             "use --set training.bf16=false on CPU")
        if recipe.model.attn_implementation.startswith("flash_attention"):
            raise UserError(f"{recipe._source}: model.attn_implementation={recipe.model.attn_implementation} "
                             "needs a GPU; use sdpa on CPU (--set model.attn_implementation=sdpa)")
        if recipe.model.attn_implementation == "flex_attention":
            # measured: torch's flex_attention runs forward on CPU but raises NotImplementedError on backward
            raise UserError(f"{recipe._source}: model.attn_implementation=flex_attention trains only on a GPU "
                             "(torch's flex_attention has no backward on CPU); --set model.attn_implementation=auto "
                             "(sdpa here, flex_attention or flash-attn on a GPU)")
    elif recipe.model.attn_implementation == "flash_attention_2":
        import transformers.utils

        # transformers would only fail at model load, after the data is built. flex_attention is the fix that
        # needs no package; sdpa is a choice to make knowingly: it materialises each packed row's
        # block-diagonal mask, L x L (4 GiB at 64k), and computes the whole square
        if not transformers.utils.is_flash_attn_2_available():
            raise UserError(f"{recipe._source}: model.attn_implementation=flash_attention_2 but flash-attn is not "
                             "installed: `pip install -e '.[gpu]'`, or --set model.attn_implementation=auto "
                             "(flex_attention: per-document masking of packed rows from torch itself), or "
                             "--set model.attn_implementation=sdpa (an L x L mask per row: fine for short rows)")
    trackers = t.report_to
    for tracker in [trackers] if isinstance(trackers, str) else trackers:
        if tracker in ("wandb", "trackio"):
            import importlib.util

            if importlib.util.find_spec(tracker) is None:
                raise UserError(f"{recipe._source}: training.report_to asks for {tracker}, which is not installed: "
                                 "`pip install -e '.[tracking]'`, or --set training.report_to=none")
    if t.use_liger_kernel:
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            raise UserError(f"{recipe._source}: training.use_liger_kernel needs `pip install -e '.[gpu]'`") from None


def announce_attention(recipe: TrainRecipe, name: str = "model") -> Attention:
    """Choose the attention of the recipe's `model` (or `ref_model`) and say so: the stage's first log line,
    and its warning if it has one. The stage records it in the manifest (record_attention)."""
    attention = choose_attention(getattr(recipe, name), packed_length(recipe))
    if is_main_process():
        print(attention.log_line(name), flush=True)
        if attention.warning:
            print(attention.warning, flush=True)
    return attention


def record_attention(run, **attentions: Attention) -> None:
    """What each model trained with, in the run's manifest: requested, used, why (and any warning)."""
    run.manifest["attention"] = {name: asdict(a) for name, a in attentions.items()}
    if is_main_process():
        run.save_manifest()


def peft_config(recipe: TrainRecipe):
    if recipe.peft is None:
        return None
    from peft import LoraConfig

    p = recipe.peft
    return LoraConfig(r=p.r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                      target_modules=p.target_modules, task_type="CAUSAL_LM")


# ----------------------------------------------------------------------------------------------
# The global batch and TRL arguments
# ----------------------------------------------------------------------------------------------
def training_batch(recipe: TrainRecipe) -> Batch:
    """The recipe's global batch on this launch's processes (WORLD_SIZE): with `training.global_batch_size`,
    the accumulation that makes it. A GPU count that cannot make it is refused in one line; stages call this
    before anything loads."""
    try:
        return batch_for(recipe.settings, world_size())
    except BatchError as e:
        raise UserError(f"{recipe._source}: {e}") from None


def record_settings(run, recipe: TrainRecipe) -> None:
    """TRL's defaults the run trains with besides what its recipe states (the recipe itself is in the manifest):
    `training_defaults` in the manifest, from the table of the pinned TRL's fields (TrainRecipe.settings)."""
    settings = recipe.settings
    run.manifest["training_defaults"] = {"trl_config": recipe.trl_config,
                                         "values": {k: v for k, v in settings.items() if not settings.given(k)}}
    if is_main_process():
        run.save_manifest()


def announce_batch(run, batch: Batch) -> None:
    """The global batch and how it is made: the stage's log and its manifest (`batch`)."""
    run.manifest["batch"] = {**asdict(batch), "described": batch.describe()}
    if is_main_process():
        print(batch.describe(), flush=True)
        run.save_manifest()


def trl_args(recipe: TrainRecipe, output_dir: Path, **at_run_time):
    """TRL's config for this launch, from what the check before the run builds too (pipeline/core/checks.py
    trl_kwargs: the recipe's `training:` with the derived accumulation, and the stage's trl_settings), with
    the machine's own settings, the run's directory and what a stage can only know once it runs
    (`at_run_time`: rl's end-of-turn token id, from the tokenizer, for vLLM)."""
    import torch

    cls = trl_config_class(recipe.stage)
    batch = training_batch(recipe)
    quiet_library_deprecations()
    # Defaults the recipe may override: no tracker unless asked; count tokens, which makes
    # transformers log `train_tokens_per_second` next to the loss (progress bar and trackers); pinned
    # memory only where there is a GPU to copy to (torch warns on every run otherwise).
    kwargs: dict[str, Any] = {"report_to": "none", "include_num_input_tokens_seen": "non_padding",
                              "dataloader_pin_memory": torch.cuda.is_available()}
    kwargs.update(_without_secrets(trl_kwargs(recipe, batch)), **at_run_time, output_dir=str(output_dir))
    args = cls(**kwargs)
    if batch.derived and args.train_batch_size != batch.per_device:
        # one process driving several GPUs (torch DataParallel) multiplies the per-device batch by their count
        raise UserError(f"{recipe._source}: training.global_batch_size {batch.global_batch} would be "
                        f"{batch.global_batch * args.train_batch_size // batch.per_device} here: one process drives "
                        f"{args.n_gpu} GPUs; launch one process per GPU (accelerate launch or torchrun)")
    return args


def quiet_library_deprecations() -> None:
    """TRL 1.16 and peft 0.21 still call transformers 4's names (`is_gradient_checkpointing`,
    `gradient_checkpointing_enable` / `_disable`), which transformers 5 deprecates with a warning on every run:
    theirs to change, nothing a recipe can do (ours say `activation_checkpointing`). Only those warnings go."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated",
                            category=FutureWarning)


def _without_secrets(training: dict[str, Any]) -> dict[str, Any]:
    """The training block as TRL may keep it: transformers pickles its arguments whole into every
    `training_args.bin`, so `hub_token` goes to the environment (HF_TOKEN, where huggingface_hub looks
    when the Trainer pushes) instead, and anything token-shaped in another value (a run_name) is cut out."""
    out = {}
    for key, value in training.items():
        if key == "hub_token":
            if value:
                os.environ["HF_TOKEN"] = value
            continue
        out[key] = redact(value, key)
    return out


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` dirs a run can resume from, newest first. transformers writes trainer_state.json
    after the weights, optimizer and RNG states, so a checkpoint without it (or without weights) was
    cut short by a kill while saving. It is moved out of the run to `<out>.incomplete/step-N` and said
    so: never deleted, never resumed from, and out of reach of transformers' `save_total_limit`
    rotation (which counts every `checkpoint-*` name and would delete a complete one for it), of
    the merge's `checkpoint-*` globs, and of the finished run. Only the main process moves it; the other
    ranks of a distributed job skip it."""
    found = []
    for ckpt in sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir()), key=_step, reverse=True):
        numbered = ckpt.name.removeprefix("checkpoint-").isdigit()
        problem = checkpoint_problem(ckpt) if numbered else "an old set-aside name"
        if problem is None:
            found.append(ckpt)
            continue
        if not is_main_process():  # every rank looks; one moves (several would race on the rename)
            continue
        aside = _free_name(set_aside_dir(output_dir) / f"step-{_step(ckpt)}")
        aside.parent.mkdir(parents=True, exist_ok=True)
        ckpt.rename(aside)
        print(f"{ckpt.name} is incomplete ({problem}; killed while saving?): set aside as {aside}; "
              "resuming from the newest complete checkpoint")
    return found


def _step(ckpt: Path) -> int:
    """N of `checkpoint-N` (also of an old `checkpoint-N.incomplete`); -1 when there is none."""
    digits = ckpt.name.removeprefix("checkpoint-").split(".")[0]
    return int(digits) if digits.isdigit() else -1


def _free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ... when a set-aside checkpoint of the same step is there already."""
    n, candidate = 0, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def train_or_restore(trainer, output_dir: Path) -> None:
    """Train, resuming from the newest complete checkpoint of an interrupted run. When that
    checkpoint already holds the last planned step (the kill came after it, before the run was
    finished), training is not resumed, which would step past max_steps: its weights and trainer
    state are loaded and only the final save is redone.

    A stop signal (SIGTERM, SIGUSR1: pipeline/core/preemption.py) ends training at the end of the optimizer
    step it came in, on every rank; that step is saved as a complete checkpoint and Preempted is raised,
    so the same command resumes exactly there."""
    checkpoints = complete_checkpoints(output_dir) if output_dir.is_dir() else []
    newest = checkpoints[0] if checkpoints else None
    if newest is not None:
        state = json.loads((newest / "trainer_state.json").read_text())
        if state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]:
            print(f"{newest.name}: training had finished (step {state['global_step']} of {state['max_steps']}); "
                  "redoing only the final save")
            restore_checkpoint(trainer, newest)
            return
        print(f"resuming from {newest.name} (step {state.get('global_step')} of {state.get('max_steps')})")
    stop = save_and_stop_on_signal(output_dir)
    trainer.add_callback(stop)
    with deferred():  # a stop signal sets a flag; the callback acts on it at the end of the step
        trainer.train(resume_from_checkpoint=str(newest) if newest else None)
    if stop.saved is not None:
        trainer.accelerator.wait_for_everyone()  # no rank leaves (its launcher would stop the rest) before all saved
        raise Preempted(stop.signal_name, stop.saved)


# Written into a checkpoint saved because of a stop signal, off the recipe's save schedule: once a later
# checkpoint is saved, or the run finishes, it is removed, so that a finished run holds the checkpoints its
# recipe asked for (a merge soup globs them) and save_total_limit's rotation never counts it.
PREEMPTION_MARK = "preempted.json"


def save_and_stop_on_signal(output_dir: Path):
    """A TrainerCallback: at the end of each optimizer step, when any rank was sent a stop signal, save the
    step as a checkpoint and stop training. `saved` is then that checkpoint, `signal_name` the signal."""
    from transformers import TrainerCallback

    class SaveAndStopOnSignal(TrainerCallback):
        saved: Path | None = None
        signal_name = ""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and args.should_save:  # a scheduled save: the marked ones are superseded
                drop_preemption_checkpoints(output_dir)
            name = signal_of_any_rank(requested(), args.device)
            if name is None:
                return
            checkpoint = output_dir / f"checkpoint-{state.global_step}"
            if not control.should_save and args.should_save:
                checkpoint.mkdir(parents=True, exist_ok=True)
                write_json_atomic(checkpoint / PREEMPTION_MARK, {"signal": name, "step": state.global_step})
            control.should_save = control.should_training_stop = True
            self.saved, self.signal_name = checkpoint, name

        def on_epoch_end(self, args, state, control, **kwargs):
            if control.should_save and args.should_save:  # save_strategy: epoch
                drop_preemption_checkpoints(output_dir)

    return SaveAndStopOnSignal()


def signal_of_any_rank(name: str | None, device) -> str | None:
    """The stop signal any rank was sent (by name), on every rank, or None: the ranks that were sent one and
    those that were not (or not yet) stop after the same step. One all_reduce of one number per step."""
    import signal

    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return name
    number = torch.tensor([signal.Signals[name].value if name else 0], device=device)
    dist.all_reduce(number, op=dist.ReduceOp.MAX)
    return signal.Signals(int(number.item())).name if number.item() else None


def drop_preemption_checkpoints(output_dir: Path) -> None:
    """Remove the checkpoints saved only because of a stop signal (PREEMPTION_MARK)."""
    for checkpoint in output_dir.glob("checkpoint-*"):
        if (checkpoint / PREEMPTION_MARK).is_file():
            shutil.rmtree(checkpoint)


def restore_checkpoint(trainer, checkpoint: Path) -> None:
    """The weights and trainer state of `checkpoint`, as training left them."""
    from safetensors.torch import load_file
    from transformers import TrainerState

    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        # partitioned weights: only the Trainer knows how to gather them back
        trainer._load_from_checkpoint(str(checkpoint))
    elif (checkpoint / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainer.model, load_file(checkpoint / "adapter_model.safetensors"))
    elif (checkpoint / "model.safetensors").is_file():
        missing, unexpected = trainer.model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        tied = {"lm_head.weight"} if trainer.model.config.tie_word_embeddings else set()
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"{checkpoint}: weights do not fit the model "
                               f"(missing {missing}, unexpected {unexpected})")
    else:
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(trainer.model, str(checkpoint), strict=False)
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


# ----------------------------------------------------------------------------------------------
# Finishing a checkpoint
# ----------------------------------------------------------------------------------------------
def finish(trainer, tokenizer, run, recipe: TrainRecipe, extra: dict[str, Any] | None = None) -> None:
    """Final weights + tokenizer/template at the top of the run dir, loss curve, card, metrics.

    With LoRA the adapter is kept in `adapter/` and the merged full model goes to the top, so the
    next stage (and vLLM, MergeKit) loads the run dir like any checkpoint."""
    # Training ran without a KV cache (packed rows need that); a checkpoint saved with
    # use_cache=False would make every later generate() recompute the whole prefix per token.
    trainer.model.config.use_cache = True
    end_of_turn_as_eos(tokenizer, trainer.model)  # generate() and vLLM stop at the end of the turn
    if recipe.peft is not None:
        trainer.save_model(str(run.path / "adapter"))
        if trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(str(run.path))
    else:
        trainer.save_model(str(run.path))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(run.path))
        history = trainer.state.log_history
        (run.path / "log_history.json").write_text(json.dumps(history, indent=1))
        losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
        if losses:
            plot_loss(losses, run.path / "loss.png", f"{recipe.name} {recipe.stage}")
        run.metrics.update(final_metrics(history, trainer.state), **(extra or {}))
        write_model_card(run, recipe)
        run.summary["outputs"] = ["loss.png", *run.summary.get("outputs", []), "README.md"]
        loss = loss_section(history)
        if loss:
            run.summary["loss"] = loss
    if trainer.args.should_save:  # the final weights are saved: no resume will need them
        drop_preemption_checkpoints(run.path)


def final_metrics(history: list[dict], state) -> dict[str, Any]:
    import torch

    losses = [h["loss"] for h in history if "loss" in h]
    speeds = [h["train_tokens_per_second"] for h in history if "train_tokens_per_second" in h]
    metrics = {"steps": state.global_step, "first_loss": losses[0] if losses else None,
               "final_loss": losses[-1] if losses else None, "tokens_seen": state.num_input_tokens_seen,
               "tokens_per_s": speeds[-1] if speeds else None}
    if torch.cuda.is_available():  # what sizing a job needs beside the speed (this rank's GPU)
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return metrics


def plot_loss(points: list[tuple[int, float]], path: Path, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_model_card(run, recipe: TrainRecipe) -> None:
    m = run.metrics
    sources = "\n".join(f"- `{s.path}`" + (f" ({s.name}/{s.split})" if s.name else "") + f", mode {s.mode}"
                        + (f", fraction {s.fraction}" if s.fraction else "")
                        + (f", {s.tokens} tokens" if s.tokens else "")
                        for s in recipe.data.sources)
    card = f"""---
library_name: transformers
tags: [smolalign, {recipe.stage}, dual-mode]
base_model: {recipe.model.name_or_path}
---
# {recipe.name} — {recipe.stage}

Trained by the smolalign stage `{recipe.stage}` from `{recipe.model.name_or_path}`.
Recipe: `{recipe._source}` (sha256 `{run.manifest['recipe_sha256'][:12]}`); the full resolved recipe,
input fingerprints and versions are in `manifest.json`.

## Data
{sources}

## Results
| metric | value |
|---|---|
""" + "\n".join(f"| {k} | {v} |" for k, v in m.items() if not isinstance(v, (dict, list))) + """

## Chat format
Ships the smolalign dual-mode template (`/think`, `/no_think`, `enable_thinking`); the same template
rendered the training data, so `apply_chat_template` here and in vLLM matches training.
"""
    (run.path / "README.md").write_text(card)


def param_checksum(model) -> str:
    """sha256 of all parameters (float32 bytes): equal across ranks iff they hold the same model."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode() + p.detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def rank_checksums(model) -> list[str]:
    """Every rank's parameter checksum (one entry when not distributed)."""
    import torch.distributed as dist

    mine = param_checksum(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out
