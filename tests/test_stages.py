"""Training stages end to end on the tiny SmolLM3 on CPU: what lands on disk, that weights moved,
APO's known first loss, resume after a crash, and two real processes training one model."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline.core.errors import UserError
from pipeline.core.recipe import load_recipe
from pipeline.core.summary import read_summary
from pipeline.training import apo, sft
from pipeline.training.preference import pair_logprobs, preference_stats
from pipeline.training.train import load_tokenizer

TRAINING = {"max_steps": 3, "learning_rate": 1.0e-3, "per_device_train_batch_size": 2, "bf16": False,
            "logging_steps": 1, "save_strategy": "no", "max_length": 128}


def recipe_for(write_recipe, tmp_path, stage, sources, name="recipe.yaml", top=None, **training):
    body = {"name": "t", "stage": stage, "output_dir": str(tmp_path / "runs" / stage),
            "model": {"name_or_path": "embedded:tiny-smollm3", "dtype": "float32"},
            "data": {"sources": sources}, "training": {**TRAINING, **training}, **(top or {})}
    return load_recipe(write_recipe(body, name))


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def assert_checkpoint(out, tiny_model, stage):
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "manifest.json",
            "README.md", "loss.png", "log_history.json"} <= files
    assert "Reasoning Mode" in (out / "chat_template.jinja").read_text()  # ours, not SmolLM2's
    # <|im_end|> ends generation, as the official configs set it
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    im_end = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in im_end if t["content"] == "<|im_end|>")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == im_end
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == stage
    assert manifest["metrics"]["steps"] == 3 and manifest["metrics"]["final_loss"] is not None
    assert manifest["metrics"]["tokens_per_s"] > 0
    assert json.loads((out / "config.json").read_text())["use_cache"] is True  # inference-ready
    card = (out / "README.md").read_text()
    assert "embedded:tiny-smollm3" in card and "| final_loss |" in card
    before, after = weights(tiny_model), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    # what the eval report reads of the run: its summary, with the loss trend of the logged steps
    summary = read_summary(out)
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert summary["stage"] == stage and summary["outputs"][0] == "loss.png" and summary["outputs"][-1] == "README.md"
    assert summary["loss"]["steps"] == len(losses) and summary["loss"]["first"] == pytest.approx(losses[0])
    table = "pairs.json" if stage == "apo" else "mixture.txt"
    report = json.loads((out / ("pairs.json" if stage == "apo" else "mixture.json")).read_text())
    assert summary["trained_on"]["table"] == table and table in summary["outputs"]
    assert summary["trained_on"]["sources"] == [{"source": s["source"], "label": s["source"], "rows": s["rows"]}
                                                for s in report["sources"]]  # local files: the label is the path
    return manifest


def test_midtrain_stage(write_recipe, tmp_path, tiny_model):
    """... stating its global batch: 4 rows a step, 2 per device, so 2 accumulation steps in one process."""
    recipe = recipe_for(write_recipe, tmp_path, "midtrain",
                        [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}],
                        packing=True, packing_strategy="wrapped", global_batch_size=4)
    out = sft.run(recipe)
    manifest = assert_checkpoint(out, tiny_model, "midtrain")
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["packing"]["trained_token_share"] == 1.0 and manifest["metrics"]["packing_efficiency"] > 0.95
    assert {k: manifest["batch"][k] for k in ("global_batch", "gpus", "per_device", "accumulation", "derived")} == {
        "global_batch": 4, "gpus": 1, "per_device": 2, "accumulation": 2, "derived": True}
    args = torch.load(out / "training_args.bin", weights_only=False)  # what the Trainer ran with
    assert args.gradient_accumulation_steps == 2 and not hasattr(args, "global_batch_size")


def test_a_gpu_count_that_cannot_make_the_global_batch_is_refused_before_anything_loads(
        write_recipe, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    recipe = recipe_for(write_recipe, tmp_path, "sft",
                        [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}],
                        packing=True, global_batch_size=4)
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it for 3 processes: 3 x 2 rows a micro-step
    monkeypatch.setattr(sft, "load_tokenizer", lambda *a, **k: pytest.fail("loaded the tokenizer"))
    assert main(["sft", "--recipe", recipe._source]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.global_batch_size 4 cannot be made on 3 GPU(s)" in err[0]
    assert "run on 1 or 2 GPUs" in err[0]
    assert not recipe.output_path().with_name("sft.partial").exists()


def test_sft_stage(write_recipe, tmp_path, tiny_model, capsys):
    # the tool-calling rows with the shipped bad rows among them (a source of bad rows only is an error)
    tools_and_bad = tmp_path / "tools_and_bad.jsonl"
    tools_and_bad.write_text((REPO / "data/demo/tools.jsonl").read_text()
                             + (REPO / "data/demo/bad_rows.jsonl").read_text())
    recipe = recipe_for(write_recipe, tmp_path, "sft", [
        {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"},
        {"path": str(tools_and_bad), "mode": "no_think"},
        {"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think", "fraction": 0.25}],
        packing=True, packing_strategy="bfd", assistant_only_loss=True)
    out = sft.run(recipe)
    # the attention it trained with, and why: the first log line and the manifest (auto on CPU is sdpa)
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("attention of model: sdpa (model.attn_implementation: auto; no GPU")
    manifest = assert_checkpoint(out, tiny_model, "sft")
    assert manifest["attention"]["model"]["requested"] == "auto" and manifest["attention"]["model"]["used"] == "sdpa"
    assert manifest["attention"]["model"]["why"].startswith("no GPU")
    assert manifest["metrics"]["quarantined_rows"] == 6 and manifest["metrics"]["mixture_rows"] == 54
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == 6
    assert "trained tokens" in (out / "mixture.txt").read_text()


def test_apo_stage_first_loss_is_one(write_recipe, tmp_path, tiny_model, recwarn):
    held_out = str(REPO / "data/demo/preferences_heldout.jsonl")
    recipe = recipe_for(write_recipe, tmp_path, "apo",
                        [{"path": str(REPO / "data/demo/preferences.jsonl"), "mode": "from_row"}],
                        top={"eval_pairs": held_out}, loss_type="apo_zero", beta=0.05, max_length=256,
                        activation_checkpointing=True)
    out = apo.run(recipe)
    # No library noise on every run: TRL and peft call transformers 4's checkpointing names
    # (`is_gradient_checkpointing`, ...), and the data loader asked for pinned memory on a CPU
    assert [str(w.message) for w in recwarn if "gradient_checkpointing" in str(w.message)
            or "pin_memory" in str(w.message)] == []
    manifest = assert_checkpoint(out, tiny_model, "apo")
    assert manifest["attention"]["model"]["used"] == "sdpa" and "ref_model" not in manifest["attention"]
    history = json.loads((out / "log_history.json").read_text())
    # apo_zero = sigmoid(-b*chosen_logratio) + sigmoid(b*rejected_logratio) = 0.5 + 0.5 when policy == reference
    assert history[0]["loss"] == pytest.approx(1.0, abs=1e-6)
    assert history[1]["loss"] != pytest.approx(1.0, abs=1e-6)

    # the held-out preference check: "start" is the untrained model, measured again here on its own
    report = json.loads((out / "preference.json").read_text())
    assert manifest["metrics"]["held_out_preference"] == report and "eval_pairs" in manifest["inputs"]
    assert read_summary(out)["held_out"] == report and "preference.json" in read_summary(out)["outputs"]
    pairs = apo.held_out_pairs(recipe)
    assert len(pairs) == report["start"]["pairs"] == report["end"]["pairs"] == 32
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(recipe)
    start = preference_stats(pair_logprobs(model, tokenizer, pairs))
    assert report["start"]["accuracy"] == start["accuracy"]
    assert report["start"]["mean_margin"] == pytest.approx(start["mean_margin"], abs=1e-3)
    # the reward margin against the start is beta x the change of the mean log-probability margin
    change = report["end"]["mean_margin"] - report["start"]["mean_margin"]
    assert report["reward_margin"] == pytest.approx(0.05 * change, abs=1e-3) and report["reward_margin"] != 0


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "Hi", "chosen": "Hello."}', "pair 2: no `rejected` column"),
    ('{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}',
     "pair 2: mode `from_row` but the row has no chat_template_kwargs.enable_thinking"),
    ('{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "chat_template_kwargs": {"enable_thinking": "no"}}',
     "pair 2: chat_template_kwargs.enable_thinking must be true or false"),
    # the training rows' own checks apply too (pipeline.data.rows.preference_row)
    ('{"prompt": "Hi", "chosen": "Hello.", "rejected": " ", "chat_template_kwargs": {"enable_thinking": false}}',
     "pair 2: empty rejected answer"),
])
def test_bad_held_out_pairs_fail_before_any_model_loads(write_recipe, tmp_path, monkeypatch, line, problem):
    good = json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.",
                       "chat_template_kwargs": {"enable_thinking": False}})
    held_out = tmp_path / "held.jsonl"
    held_out.write_text(good + "\n" + line + "\n")
    recipe = recipe_for(write_recipe, tmp_path, "apo",
                        [{"path": str(REPO / "data/demo/preferences.jsonl"), "mode": "from_row"}],
                        top={"eval_pairs": str(held_out)}, loss_type="apo_zero")
    monkeypatch.setattr(apo, "load_model", lambda spec: pytest.fail("a model was loaded before the pairs were read"))
    with pytest.raises(UserError) as e:
        apo.run(recipe)
    assert f"{held_out}: {problem}" in str(e.value) and "eval_pairs" in str(e.value)
    assert not recipe.output_path().exists()


def test_resume_after_crash_matches_uninterrupted_run(write_recipe, tmp_path, monkeypatch, uninterrupted_midtrain):
    sources = [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}]
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, packing=True, packing_strategy="wrapped")
    straight = uninterrupted_midtrain  # the same training as `common` (tests/conftest.py MIDTRAIN_TRAINING)
    resumed_recipe = recipe_for(write_recipe, tmp_path / "b", "midtrain", sources, **common)

    import trl

    original = trl.SFTTrainer.training_step

    def crash_on_step_three(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise RuntimeError("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", crash_on_step_three)
    with pytest.raises(RuntimeError, match="simulated kill"):
        sft.run(resumed_recipe)
    partial = resumed_recipe.output_path().with_name("midtrain.partial")
    assert json.loads((partial / "manifest.json").read_text())["status"] == "failed"
    assert (partial / "checkpoint-2").is_dir() and not resumed_recipe.output_path().exists()
    monkeypatch.setattr(trl.SFTTrainer, "training_step", original)

    resumed = sft.run(resumed_recipe)
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["resumed"] is True and manifest["status"] == "complete"

    def curve(out):
        history = json.loads((out / "log_history.json").read_text())
        return [(h["step"], round(h["loss"], 4)) for h in history if "loss" in h]

    assert curve(resumed) == curve(straight) and [s for s, _ in curve(resumed)] == [1, 2, 3, 4]
    # same tokens seen in total: the restarted run skipped the batches it had trained on
    tokens = [json.loads((o / "manifest.json").read_text())["metrics"]["tokens_seen"] for o in (straight, resumed)]
    assert tokens[0] == tokens[1] > 0
    a, b = weights(straight), weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_partial_run_of_another_recipe_is_not_resumed(write_recipe, tmp_path):
    sources = [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}]
    first = recipe_for(write_recipe, tmp_path, "midtrain", sources, packing=True, packing_strategy="wrapped")
    partial = first.output_path().with_name("midtrain.partial")
    partial.mkdir(parents=True)
    (partial / "manifest.json").write_text(json.dumps({"recipe_sha256": "0" * 64}))
    with pytest.raises(FileExistsError, match="interrupted run of a different recipe"):
        sft.run(first)


@pytest.mark.slow
def test_two_processes_train_the_same_model(write_recipe, tmp_path):
    """... with the global batch the recipe states (4 rows a step): 2 processes x 1 row x 2 accumulation steps."""
    recipe = recipe_for(write_recipe, tmp_path, "sft",
                        [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}],
                        packing=True, packing_strategy="bfd", assistant_only_loss=True, per_device_train_batch_size=1,
                        global_batch_size=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", "-m", "pipeline.cli", "sft", "--recipe", recipe._source],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((recipe.output_path() / "manifest.json").read_text())
    checksums = manifest["metrics"]["rank_param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert manifest["status"] == "complete"
    assert (manifest["batch"]["gpus"], manifest["batch"]["accumulation"]) == (2, 2)
    args = torch.load(recipe.output_path() / "training_args.bin", weights_only=False)
    assert args.gradient_accumulation_steps == 2


def test_lora_sft_saves_adapter_and_merged_model(write_recipe, tmp_path, tiny_model):
    body = {"name": "t", "stage": "sft", "output_dir": str(tmp_path / "runs" / "sft"),
            "model": {"name_or_path": "embedded:tiny-smollm3", "dtype": "float32"},
            "data": {"sources": [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}]},
            "training": {**TRAINING, "learning_rate": 1.0e-2, "packing": True, "assistant_only_loss": True},
            "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    out = sft.run(load_recipe(write_recipe(body)))
    assert (out / "adapter" / "adapter_config.json").is_file()
    before, after = weights(tiny_model), weights(out)
    assert set(after) == set(before)  # a plain full checkpoint, no lora_ tensors
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


def test_missing_tracker_fails_before_loading(write_recipe, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec  # the test must not depend on whether wandb is installed here
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    recipe = recipe_for(write_recipe, tmp_path, "sft",
                        [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}],
                        report_to=["wandb"])
    with pytest.raises(ValueError, match=r"report_to asks for wandb, which is not installed"):
        sft.run(recipe)
    assert not recipe.output_path().with_name("sft.partial").exists()


# ---- kills at the wrong moment (issue 12, items 3 and 4) ----------------------------------------
@pytest.fixture
def straight_midtrain(write_recipe, tmp_path, uninterrupted_midtrain):
    """The uninterrupted run (tests/conftest.py, trained once per session) and a fresh recipe of the same training."""
    sources = [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}]
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, packing=True, packing_strategy="wrapped")
    return uninterrupted_midtrain, recipe_for(write_recipe, tmp_path / "b", "midtrain", sources, **common)


def test_kill_during_checkpoint_save_resumes_from_the_last_complete_one(straight_midtrain, monkeypatch, capsys):
    straight, recipe = straight_midtrain
    import trl

    original = trl.SFTTrainer.training_step

    def crash_on_step_four(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise RuntimeError("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", crash_on_step_four)
    with pytest.raises(RuntimeError, match="simulated kill"):
        sft.run(recipe)
    monkeypatch.setattr(trl.SFTTrainer, "training_step", original)
    partial = recipe.output_path().with_name("midtrain.partial")
    # the kill hit while checkpoint-3 was being written: its weights are there, its trainer state is not
    half = partial / "checkpoint-3"
    half.mkdir()
    (half / "model.safetensors").write_bytes((partial / "checkpoint-2" / "model.safetensors").read_bytes())
    out = sft.run(recipe)
    assert "checkpoint-3 is incomplete" in capsys.readouterr().out
    assert (out.with_name("midtrain.incomplete") / "step-3").is_dir()  # set aside, not deleted
    assert not any("incomplete" in p.name for p in out.iterdir())  # and not part of the finished run
    a, b = weights(straight), weights(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_kill_between_last_checkpoint_and_promotion_only_redoes_the_save(straight_midtrain, monkeypatch):
    straight, recipe = straight_midtrain
    import pipeline.training.sft

    real_finish = pipeline.training.sft.finish
    monkeypatch.setattr(pipeline.training.sft, "finish", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        sft.run(recipe)
    monkeypatch.setattr(pipeline.training.sft, "finish", real_finish)
    assert (recipe.output_path().with_name("midtrain.partial") / "checkpoint-4" / "trainer_state.json").is_file()
    out = sft.run(recipe)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4  # not 5: no step past max_steps
    a, b = weights(straight), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 4
