"""`smolalign plan` (issue 24): the differences from the published SmolLM3 config and from another variant,
the mixture figures against `prepare`'s own report and the packed rows, a source that trains nothing, and
the memory and step estimates against measured runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from conftest import REPO

from pipeline.cli import main
from pipeline.core.recipe import load_recipe
from pipeline.core.runs import identity_hash
from pipeline.core.schema import source_label
from pipeline.planning import costs
from pipeline.planning.plan import source_sizes
from pipeline.training.train import load_tokenizer


def run_plan(tmp_path, *args, capsys=None) -> tuple[int, dict]:
    out = tmp_path / "plan.json"
    rc = main(["plan", *map(str, args), "--out", str(out)])
    return rc, json.loads(out.read_text())


def rows_by_key(rows):
    return {r["key"]: r for r in rows}


# ----------------------------------------------------------------------------------------------
# Differences
# ----------------------------------------------------------------------------------------------
def test_the_real_sft_recipe_shows_the_known_differences_from_the_published_config_with_reasons(tmp_path, capsys):
    rc, plan = run_plan(tmp_path, REPO / "recipes/smollm3/sft.yaml")
    assert rc == 0
    [p] = plan["plans"]
    rows = rows_by_key(p["published"]["rows"])
    assert p["published"]["commit"] == "925acdfe4b2b4e38c3dabd1851bc418f0b656351"
    strategy = rows["training.packing_strategy"]
    assert (strategy["published"], strategy["ours"], strategy["changes_identity"]) == ("ffd", "bfd", True)
    assert "no longer has" in strategy["note"]
    epochs = rows["training.num_train_epochs"]
    assert (epochs["published"], epochs["ours"]) == (5, 4) and "blog" in epochs["note"]
    # same value under a renamed key: not a difference, listed as a rename with what became of the old key
    assert not {"training.warmup_steps", "training.activation_checkpointing"} & set(rows)
    renamed = rows_by_key(p["published"]["renamed"])
    warmup = renamed["training.warmup_steps"]
    assert (warmup["published_as"], warmup["value"]) == ("warmup_ratio", 0.03)
    assert "removed in transformers 5" in warmup["note"]
    assert renamed["training.activation_checkpointing"]["published_as"] == "gradient_checkpointing"
    assert "strftime_now" in rows["chat.template"]["note"]
    # the published global batch on 8 GPUs: the accumulation is derived, so neither is a difference
    assert not {"global batch (GPUs x per-device x accumulation)", "training.gradient_accumulation_steps"} & set(rows)
    # equal values are not differences, and the 25 splits and their weights are the published ones
    assert not {"training.learning_rate", "training.max_length", "training.lr_scheduler_kwargs"} & set(rows)
    assert not [k for k in rows if k.startswith("data.sources")]
    assert rows["training.push_to_hub"]["changes_identity"] is False
    # the mixture is not built here (its model is not either): said so, with how to build it
    assert p["data"]["status"] == "unknown" and "make prepare RECIPE=" in p["data"]["how"]
    out = capsys.readouterr().out
    assert "ffd" in out and "warmup_ratio -> training.warmup_steps (0.03)" in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("training.warmup_steps")]


PUBLISHED_BATCH = {"midtrain": 128, "sft": 128, "apo": 32}


@pytest.mark.parametrize("gpus", [8, 16, 64])
@pytest.mark.parametrize("stage", ["midtrain", "sft", "apo"])
def test_the_real_recipes_train_with_the_published_global_batch_on_any_gpu_count(tmp_path, capsys, stage, gpus):
    """128 (mid-training, SFT) and 32 (APO) rows a step, as published, on 8, 16 and 64 GPUs: the accumulation is
    derived from the GPU count. APO's 32 pairs cannot be made on 64 GPUs (64 rows a micro-step at least): refused,
    naming the counts that can."""
    rc, plan = run_plan(tmp_path, REPO / f"recipes/smollm3/{stage}.yaml", "--gpus", gpus)
    [p] = plan["plans"]
    out = capsys.readouterr().out
    wanted = PUBLISHED_BATCH[stage]
    if wanted < gpus:
        assert rc == 2 and p["cost"]["global_batch"] is None and "steps" not in p["cost"]
        [problem] = plan["problems"]
        assert f"global_batch_size {wanted} cannot be made on {gpus} GPU(s)" in problem
        assert "run on 1, 2, 4, 8, 16 or 32 GPUs" in problem
        return
    accumulation = wanted // gpus
    assert rc == 0 and p["cost"]["global_batch"] == wanted and p["cost"]["gpu_hours"] > 0  # APO's too, offline
    assert f"global batch {wanted} = {gpus} GPU(s) x 1 per device x {accumulation} accumulation step(s)" in out
    assert p["resolved"]["training"]["gradient_accumulation_steps"].startswith("derived at launch")
    rows = rows_by_key(p["published"]["rows"])
    assert not {"global batch (GPUs x per-device x accumulation)", "training.gradient_accumulation_steps"} & set(rows)


def test_the_sources_sizes_with_the_published_weights_give_the_blogs_token_counts():
    """The per-split sizes (smoltalk2 dataset card) are the ones the published mixtures were made of: with the
    published weights they add up to the blog's ~35B (mid-training) and ~1.8B (SFT) tokens an epoch."""
    from pipeline.planning.plan import published

    for stage in ("midtrain", "sft"):
        pub = published()["stages"][stage]
        total = sum(s["weight"] * s["tokens"] for s in pub["sources"])
        assert total == pytest.approx(pub["tokens_per_epoch"]["value"], rel=0.06), stage


@pytest.mark.parametrize("stage", ["midtrain", "sft"])
def test_a_changed_weight_keeps_the_cost_estimate_and_moves_it_by_that_sources_tokens(tmp_path, stage):
    """Not built here: the estimate comes from each source's size and the recipe's weights, so raising one weight
    adds that share of its source (times the epochs) instead of dropping the estimate."""
    recipe = REPO / f"recipes/smollm3/{stage}.yaml"
    base = load_recipe(recipe)
    first = base.data.sources[0]
    _, before = run_plan(tmp_path, recipe)
    rc, after = run_plan(tmp_path, recipe, "--set", f"data.sources.0.fraction={(first.fraction or 1.0) + 0.5}")
    size = source_sizes()[source_label(first.path, first.split, first.name)]["tokens"]
    a, b = before["plans"][0]["cost"], after["plans"][0]["cost"]
    assert rc == 0 and b["work_from"].startswith("estimate: each source's size") and b["gpu_hours"] > a["gpu_hours"]
    assert b["tokens"] - a["tokens"] == pytest.approx(0.5 * size * base.training["num_train_epochs"], rel=1e-6)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_trainable_parameters_are_what_peft_makes_trainable(tiny_model, targets):
    """The reference is peft itself: the adapters it adds to the tiny SmolLM3 for the same r and targets."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert costs.lora_parameters(costs.model_shape(tiny_model), 4, targets) == (trainable, [])


def test_a_lora_variant_is_planned_as_lora(tmp_path, capsys):
    """Memory, GPU-hours and differences of a LoRA variant of the real SFT and APO recipes: gradients and optimizer
    states for the adapters alone, fewer FLOPs a token, one `peft` row, no APO reference copy."""
    for stage in ("sft", "apo"):
        text = (REPO / f"recipes/smollm3/{stage}.yaml").read_text()
        lora = tmp_path / f"lora-{stage}.yaml"
        lora.write_text(text.replace("\ntraining:", "\npeft: {r: 16, lora_alpha: 32}\ntraining:"))
        _, full = run_plan(tmp_path, REPO / f"recipes/smollm3/{stage}.yaml")
        rc, plan = run_plan(tmp_path, lora, "--against", REPO / f"recipes/smollm3/{stage}.yaml")
        a, b = full["plans"][0]["cost"], plan["plans"][0]["cost"]
        assert rc == 0 and b["lora"]["trainable_parameters"] == costs.lora_parameters(costs.SMOLLM3_3B, 16,
                                                                                      "all-linear")[0]
        assert b["memory"]["optimizer_gib"] < a["memory"]["optimizer_gib"] / 100
        assert b["memory"]["gradients_gib"] < a["memory"]["gradients_gib"] / 10
        speedup = b["lora"]["speedup"]
        assert a["gpu_hours"] / b["gpu_hours"] == pytest.approx(speedup) and 1.2 < speedup < 1.5
        assert ("reference_model_gib" in a["memory"], "reference_model_gib" in b["memory"]) == (stage == "apo", False)
        published_rows = rows_by_key(plan["plans"][0]["published"]["rows"])
        assert published_rows["peft"]["ours"].startswith("LoRA r=16") and published_rows["peft"]["note"]
        [row] = plan["plans"][0]["against"]["rows"]
        assert (row["key"], row["other"]) == ("peft", "none (full fine-tuning)")
    assert "LoRA: 30,228,480 trainable parameters" in capsys.readouterr().out


def test_a_recipe_giving_the_accumulation_shows_the_batch_it_makes_and_how_to_state_it(tmp_path):
    text = (REPO / "recipes/smollm3/sft.yaml").read_text().replace("global_batch_size: 128",
                                                                   "gradient_accumulation_steps: 2")
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(text)
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "8")
    row = rows_by_key(plan["plans"][0]["published"]["rows"])["global batch (GPUs x per-device x accumulation)"]
    assert rc == 0 and (row["published"], row["ours"]) == ("128 (64 GPUs)", "16 on 8 GPU(s)")
    assert "`global_batch_size: 128` instead of gradient_accumulation_steps" in row["note"]
    assert plan["plans"][0]["cost"]["global_batch"] == 16


def test_a_renamed_key_with_a_different_value_is_a_difference_that_changes_the_identity(tmp_path):
    rc, plan = run_plan(tmp_path, REPO / "recipes/smollm3/sft.yaml", "--set", "training.warmup_steps=0.05")
    row = rows_by_key(plan["plans"][0]["published"]["rows"])["training.warmup_steps"]
    assert rc == 0 and (row["published"], row["ours"], row["changes_identity"]) == (0.03, 0.05, True)
    assert row["published_as"] == "warmup_ratio" and "removed in transformers 5" in row["note"]
    assert "training.warmup_steps" not in rows_by_key(plan["plans"][0]["published"]["renamed"])


@pytest.mark.parametrize("stage, key, published, ours", [
    ("midtrain", "training.packing_strategy", "not set (TRL default: bfd)", "wrapped"),
    ("apo", "training.padding_free", True, False),
])
def test_the_other_published_stages_show_their_traps(tmp_path, stage, key, published, ours):
    rc, plan = run_plan(tmp_path, REPO / f"recipes/smollm3/{stage}.yaml", "--gpus", "16")
    row = rows_by_key(plan["plans"][0]["published"]["rows"])[key]
    assert rc == 0 and (row["published"], row["ours"]) == (published, ours) and row["note"]


def test_each_stage_gives_its_own_reason_for_a_difference(tmp_path):
    """The published mid-training template is plain ChatML: its row must not carry SFT's reason (the date)."""
    _, mid = run_plan(tmp_path, REPO / "recipes/smollm3/midtrain.yaml")
    _, sft = run_plan(tmp_path, REPO / "recipes/smollm3/sft.yaml")
    mid_note = rows_by_key(mid["plans"][0]["published"]["rows"])["chat.template"]["note"]
    sft_note = rows_by_key(sft["plans"][0]["published"]["rows"])["chat.template"]["note"]
    assert "plain ChatML" in mid_note and "strftime" not in mid_note and "strftime_now" in sft_note


def test_against_lists_exactly_the_changed_keys_and_which_change_the_identity(tmp_path, capsys):
    base = yaml.safe_load((REPO / "recipes/demo/sft.yaml").read_text())
    variant = json.loads(json.dumps(base))
    variant["training"]["learning_rate"] = 1.0e-4
    variant["training"]["logging_steps"] = 5
    variant["description"] = "a learning-rate and mixture variant"
    [tools] = [s for s in variant["data"]["sources"] if s["path"] == "data/demo/tools.jsonl"]
    tools["fraction"] = 2.0
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(base, sort_keys=False))
    b.write_text(yaml.safe_dump(variant, sort_keys=False))
    rc, plan = run_plan(tmp_path, a, "--against", b)
    found = {r["key"]: r["changes_identity"] for r in plan["plans"][0]["against"]["rows"]}
    assert rc == 0 and found == {"training.learning_rate": True, "data.sources[data/demo/tools.jsonl].fraction": True,
                                 "training.logging_steps": False, "description": False}
    # each verdict is what the run identity itself does with that one change alone
    recipe = load_recipe(a)
    for override, changes in [("training.learning_rate=1.0e-4", True), ("data.sources.4.fraction=2.0", True),
                              ("training.logging_steps=5", False), ("description=x", False)]:
        assert (identity_hash(load_recipe(a, [override])) != identity_hash(recipe)) is changes, override
    assert "training.learning_rate" in capsys.readouterr().out


def test_a_recipe_that_does_not_load_is_one_line_per_problem_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "recipes/smollm3/sft.yaml").read_text().replace("packing_strategy: bfd",
                                                                           "packing_strategy: ffd"))
    rc = main(["plan", str(bad), "--out", str(tmp_path / "plan.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "training.packing_strategy" in err[0] and "bfd" in err[0]



def test_plan_shows_and_writes_no_secret(tmp_path, capsys):
    """A hub_token set in the recipe and a token in its description were printed in the differences table
    and written to plan.json in clear (the resolved recipe)."""
    token, secret = "hf_" + "Q7dLmP2xVb9KcR4tWz8NfYs1HgJe6Ua3Ko", "not-token-shaped-secret-42"
    rc, plan = run_plan(tmp_path, REPO / "recipes/smollm3/sft.yaml", "--set", f"training.hub_token={secret}",
                        "--set", f"description=pushed with {token}", "--against", REPO / "recipes/smollm3/sft.yaml")
    shown = capsys.readouterr()
    written = (tmp_path / "plan.json").read_text()
    assert rc == 0 and "training.hub_token" in shown.out and plan["plans"][0]["resolved"]["training"]["hub_token"]
    for text in (shown.out, shown.err, written):
        assert secret not in text and token not in text


def test_a_short_secret_is_hidden_by_its_key_in_both_tables_and_plan_json(tmp_path, capsys):
    """A hub_token under 6 characters is not remembered as a secret (short values would blank out ordinary
    words), so only its key can hide it: before, the differences tables printed and wrote it."""
    short = "Zq7x"
    other = tmp_path / "other.yaml"
    other.write_text((REPO / "recipes/smollm3/sft.yaml").read_text())
    rc, plan = run_plan(tmp_path, REPO / "recipes/smollm3/sft.yaml", "--set", f"training.hub_token={short}",
                        "--against", other)
    shown = capsys.readouterr()
    written = (tmp_path / "plan.json").read_text()
    [p] = plan["plans"]
    assert rc == 0 and rows_by_key(p["published"]["rows"])["training.hub_token"]["ours"] == "<redacted>"
    assert rows_by_key(p["against"]["rows"])["training.hub_token"]["this"] == "<redacted>"
    assert "training.hub_token" in shown.out
    for text in (shown.out, shown.err, written):
        assert short not in text


@pytest.mark.parametrize("option, text", [
    ("--launcher", "- a list\n"), ("--launcher", "a: [\n"),
    ("--launcher", "distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: x}\n"), ("--out", None)])
def test_a_bad_launcher_file_or_out_path_is_one_line_naming_it_and_exit_2(tmp_path, capsys, option, text):
    """They were tracebacks (AttributeError, a YAML ScannerError, ValueError, FileExistsError)."""
    bad = tmp_path / "launcher.yaml"
    if text is None:
        bad.write_text("a file where plan.json's directory would go")
        out = bad / "plan.json"
    else:
        bad.write_text(text)
        out = tmp_path / "plan.json"
    args = ["--out", str(out)] + ([option, str(bad)] if option == "--launcher" else [])
    rc = main(["plan", str(REPO / "recipes/smollm3/sft.yaml"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and option in err[0] and str(bad) in err[0], err

# ----------------------------------------------------------------------------------------------
# What it trains on: the mixture cache that `prepare` built
# ----------------------------------------------------------------------------------------------
def write_sft(tmp_path, model, sources, name="sft.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "name": "plan-test", "stage": "sft", "model": {"name_or_path": model, "dtype": "float32"},
        "data": {"sources": sources, "num_proc": 1},
        "training": {"max_length": 512, "packing": True, "packing_strategy": "bfd", "assistant_only_loss": True,
                     "bf16": False, "per_device_train_batch_size": 2, "num_train_epochs": 2}}))
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_mixture_figures_equal_prepares_report_and_the_packed_rows(tmp_path, tiny_model, own_cache, capsys):
    recipe = write_sft(tmp_path, tiny_model, [
        {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think", "fraction": 2.0},
        {"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}])
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "1")
    assert rc == 0 and plan["plans"][0]["data"]["status"] == "not built"
    assert "make prepare RECIPE=" in plan["plans"][0]["data"]["how"]
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    [cache] = [p for p in (own_cache / "mixtures").iterdir() if p.is_dir()]
    report = json.loads((cache / "report.json").read_text())
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "1")
    data = plan["plans"][0]["data"]
    assert rc == 0 and data["status"] == "built" and data["cache"] == str(cache)
    for mine, theirs in zip(data["sources"], report["sources"]):
        assert {k: mine[k] for k in theirs} == theirs
    assert data["modes"] == report["modes"] and data["packing"] == report["packing"]
    # and against the packed rows themselves, counted here from the Arrow files
    tokens = trained = 0
    for labels in packed_column(cache, "labels"):
        tokens += len(labels)
        trained += sum(t != -100 for t in labels)
    assert report["rows_over_max_length"] == 0  # nothing cut: the sources' totals are the rows' totals
    assert [s["rows_over_max_length"] for s in data["sources"]] == [0, 0]
    assert sum(s["tokens"] for s in data["sources"]) == tokens
    assert sum(s["trained_tokens"] for s in data["sources"]) == trained
    assert sum(s["share_of_trained_tokens"] for s in data["sources"]) == pytest.approx(1.0)
    cost = plan["plans"][0]["cost"]
    assert cost["rows_per_epoch"] == report["packing"]["packed_rows"]
    assert cost["steps"] == 2 * -(-report["packing"]["packed_rows"] // 2)  # 2 epochs, 1 GPU x 2 rows, no accumulation
    out = capsys.readouterr().out
    assert f"{data['sources'][0]['trained_tokens']:,}" in out and "fill" in out


@pytest.mark.parametrize("bad", ["nothing", "next_to_nothing", "cut"])
def test_a_source_whose_rows_train_nothing_makes_plan_fail_naming_it(tmp_path, tiny_model, own_cache, capsys, bad):
    chat = {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think", "fraction": 80.0}
    if bad == "nothing":  # every row quarantined (no assistant turn); allow_empty lets the build through
        rows = tmp_path / "no_answers.jsonl"
        rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}]}) + "\n"
                                for i in range(4)))
        other = {"path": str(rows), "mode": "no_think", "allow_empty": True}
    elif bad == "cut":  # long documents whose answers lie past max_length (512): cut away before training
        rows = tmp_path / "long_prompts.jsonl"
        rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "Summarise: " + "words " * 700},
                                                         {"role": "assistant", "content": f"Short {i}."}]}) + "\n"
                                for i in range(4)))
        other = {"path": str(rows), "mode": "no_think"}
    else:  # one short row among 2,560: a share of the trained tokens under 0.1%
        other = {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think", "tokens": 1}
    recipe = write_sft(tmp_path, tiny_model, [chat, other])
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    capsys.readouterr()
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"data.sources.1 ({other['path']})" in err[0]
    assert {"nothing": "trains nothing: 0 trained tokens", "cut": "trains nothing within max_length 512",
            "next_to_nothing": "trains next to nothing"}[bad] in err[0]
    assert plan["problems"] and plan["plans"][0]["data"]["status"] == "built"


def test_apo_pairs_per_source_and_mode_with_lengths(tmp_path, tiny_model):
    # the demo's pairs and one that is quarantined (an empty rejected answer), so both counts are known
    demo = (REPO / "data/demo/preferences.jsonl").read_text()
    pairs = [json.loads(line) for line in demo.splitlines() if line]
    bad = {"prompt": "Hi", "chosen": "Hello.", "rejected": " ", "chat_template_kwargs": {"enable_thinking": True}}
    (tmp_path / "pairs.jsonl").write_text(demo + json.dumps(bad) + "\n")
    recipe = tmp_path / "apo.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "plan-test", "stage": "apo", "model": {"name_or_path": tiny_model, "dtype": "float32"},
        "data": {"sources": [{"path": str(tmp_path / "pairs.jsonl"), "mode": "from_row"}]},
        "training": {"loss_type": "apo_zero", "max_length": 256, "bf16": False}}))
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "1")
    data = plan["plans"][0]["data"]
    [source] = data["sources"]
    think = sum(bool((p.get("chat_template_kwargs") or {}).get("enable_thinking", True)) for p in pairs)
    assert rc == 0 and source["quarantined"] == 1 and source["rows"] == len(pairs)
    assert source["modes"] == {"think": think, "no_think": len(pairs) - think}
    lengths = data["lengths"]
    assert 0 < lengths["prompt"]["p50"] <= lengths["prompt"]["max"] < lengths["prompt_chosen"]["max"]
    over = data["pairs_over_max_length"]
    assert (over > 0) == (max(lengths["prompt_chosen"]["max"], lengths["prompt_rejected"]["max"]) > 256)


# ----------------------------------------------------------------------------------------------
# What it costs
# ----------------------------------------------------------------------------------------------
def test_the_memory_estimate_is_within_20_percent_of_the_h100_measurements():
    """README: SmolLM3-3B shape, one 8192-token row, activation checkpointing, bf16 AdamW on one H100:
    peak allocated 24.3 GiB with Liger, 30.4 GiB without."""
    for liger, measured in ((True, 24.3), (False, 30.4)):
        estimate = costs.memory_per_gpu(costs.SMOLLM3_3B, dtype="bfloat16", sharding=("none", 0), gpus=1,
                                        seq_length=8192, checkpointing=True, liger=liger)
        assert estimate["parameters"] == costs.MEASURED_H100["parameters"]
        assert abs(estimate["total_gib"] - measured) / measured < 0.2, (liger, estimate["total_gib"])


def test_each_zero_stage_shards_what_deepspeed_shards():
    """ZeRO-0 shards nothing (DDP with fp32 master weights and AdamW states); 1 the optimizer; 2 the
    gradients too; 3 the weights too. ZeRO-0's optimizer was divided by the GPU count."""
    p = costs.parameters(costs.SMOLLM3_3B)
    parts = {stage: costs.memory_per_gpu(costs.SMOLLM3_3B, dtype="bfloat16", sharding=("zero", stage), gpus=8,
                                         seq_length=8192, checkpointing=True, liger=True) for stage in range(4)}
    sharded = {stage: [round(m[k] * costs.GIB / p, 6) for k in ("weights_gib", "gradients_gib", "optimizer_gib")]
               for stage, m in parts.items()}
    assert sharded == {0: [2, 2, 12], 1: [2, 2, 1.5], 2: [2, 0.25, 1.5], 3: [0.25, 0.25, 1.5]}


def test_a_deepspeed_launcher_without_zero_stage_is_costed_at_accelerates_default_stage():
    """accelerate's DeepSpeedPlugin runs ZeRO-2 when the config names no zero_stage."""
    from accelerate.utils import DeepSpeedPlugin

    assert costs.launcher_sharding({"distributed_type": "DEEPSPEED", "deepspeed_config": {}}) == (
        "zero", DeepSpeedPlugin().zero_stage)


def test_measured_throughput_from_gpu_check_is_used_and_named(tmp_path):
    measured = tmp_path / "gpu-check.json"
    measured.write_text(json.dumps({
        "environment": {"date_utc": "2026-12-01T10:00:00Z", "gpu": "NVIDIA H200"},
        "throughput": [{"seq_length": 8192, "attn_implementation": "flash_attention_2",
                        "activation_checkpointing": True, "liger": True, "tokens_per_s": 15000, "mfu": 0.28,
                        "peak_memory_gib": 24.0, "status": "ok"},
                       {"seq_length": 8192, "activation_checkpointing": True, "liger": False, "tokens_per_s": 1,
                        "status": "failed"}]}))
    table = costs.read_gpu_check(measured)
    speed = costs.tokens_per_second(costs.SMOLLM3_3B, "h200", 8192, measured=table)
    assert speed["tokens_per_s"] == pytest.approx(15000) and not speed["estimate"]
    assert "2026-12-01" in speed["source"] and "H200" in speed["source"]
    default = costs.tokens_per_second(costs.SMOLLM3_3B, "h100", 2048)  # the README's measured run: 4 documents in 8k
    assert default["tokens_per_s"] == pytest.approx(12542) and costs.read_gpu_check(tmp_path / "none.json") is None
    assert costs.tokens_per_second(costs.SMOLLM3_3B, "a100", 2048)["estimate"]


@pytest.mark.parametrize("text", ["[1, 2]", '"h100"', '{"environment": "h100", "throughput": "fast"}',
                                  '{"throughput": [{"status": "ok", "tokens_per_s": "fast", "seq_length": "8k"}]}'])
def test_a_gpu_check_file_of_another_layout_is_not_used(tmp_path, text):
    """The plan runs on its built-in figure, as for a file that does not parse (it was a traceback)."""
    other = tmp_path / "gpu-check.json"
    other.write_text(text)
    assert costs.read_gpu_check(other) is None
    rc, plan = run_plan(tmp_path, REPO / "recipes/smollm3/sft.yaml", "--gpu-check", other)
    assert rc == 0 and "estimate from the one measured figure" in plan["plans"][0]["cost"]["throughput"]["source"]


def test_the_measured_row_is_the_recipes_attention_implementation(tmp_path):
    """gpu-check measures flex_attention, sdpa and flash_attention_2 at each length; sdpa computes the full
    square of a packed row. An sdpa recipe was costed at the first row of the file (flex_attention's)."""
    rows = [{"seq_length": 65536, "documents": 8, "attn_implementation": impl, "activation_checkpointing": True,
             "liger": True, "tokens_per_s": tps, "status": "ok"}
            for impl, tps in (("flex_attention", 5000), ("sdpa", 1000), ("flash_attention_2", 6000))]
    measured = tmp_path / "gpu-check.json"
    measured.write_text(json.dumps({"environment": {"gpu": "NVIDIA H100 80GB HBM3"}, "throughput": rows}))
    table = costs.read_gpu_check(measured)
    for impl, tps in (("sdpa", 1000), ("flex_attention", 5000), ("flash_attention_2", 6000), ("auto", 6000)):
        speed = costs.tokens_per_second(costs.SMOLLM3_3B, "h100", 8192, measured=table, attn_implementation=impl)
        assert speed["tokens_per_s"] == pytest.approx(tps), impl


def test_throughput_measured_on_a_gpu_plan_cannot_scale_is_not_passed_off_as_another_kind(tmp_path):
    """An L40S's tokens/s is not an H100's: without that GPU's peak the figure cannot be scaled to one."""
    measured = tmp_path / "gpu-check.json"
    row = {"seq_length": 8192, "documents": 4, "activation_checkpointing": True, "liger": True,
           "tokens_per_s": 1000, "status": "ok"}
    measured.write_text(json.dumps({"environment": {"gpu": "NVIDIA L40S", "date_utc": "2026-12-01T10:00:00Z"},
                                    "throughput": [row]}))
    speed = costs.tokens_per_second(costs.SMOLLM3_3B, "h100", 2048, measured=costs.read_gpu_check(measured))
    assert speed["tokens_per_s"] == pytest.approx(12542)  # the built-in H100 figure, not the L40S one
    assert "L40S" in speed["source"]  # says why the measurement was not used


@pytest.mark.slow
@pytest.mark.e2e
def test_the_memory_estimate_is_within_20_percent_of_the_demo_sft_runs_peak_rss(tmp_path, smollm2):
    """The demo SFT recipe (SmolLM2-135M, float32, 384-token packed rows, no checkpointing) run for real for
    2 steps in a subprocess (measured: training 2,960 MiB, estimate 2,694 MiB, -9%); its peak RSS less
    that of a process that imports the same libraries and loads nothing is the training memory the
    estimate is about."""
    recipe = yaml.safe_load((REPO / "recipes/demo/sft.yaml").read_text())
    recipe["model"]["name_or_path"] = smollm2  # the demo's midtrain output has this checkpoint's shape
    recipe["data"]["sources"] = [dict(s, path=str(REPO / s["path"])) for s in recipe["data"]["sources"]
                                 if s["path"].startswith("data/demo/dual_")]
    recipe["training"]["max_steps"] = 2  # the peak comes with the first optimizer step (AdamW's states)
    recipe["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "SMOLALIGN_CACHE": str(tmp_path / "cache")}
    baseline = peak_rss(["-c", "import torch, transformers, trl, datasets, pipeline.training.sft"], env)
    peak = peak_rss(["-m", "pipeline.cli", "sft", "--recipe", str(path)], env)
    estimate = costs.memory_per_gpu(costs.model_shape(smollm2), dtype="float32", sharding=("none", 0), gpus=1,
                                    seq_length=384, checkpointing=False, liger=False)["total_gib"] * costs.GIB
    training = peak - baseline
    print(f"peak {peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB, training {training / 2**20:.0f} MiB, "
          f"estimate {estimate / 2**20:.0f} MiB")
    assert abs(estimate - training) / training < 0.2


def peak_rss(args: list[str], env: dict[str, str]) -> int:
    """Peak resident memory (bytes) of a fresh Python process running `args` (and of its children)."""
    code = ("import resource, subprocess, sys; r = subprocess.run([sys.executable] + sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_plan_json_lands_where_asked_and_names_every_recipe(tmp_path):
    rc, plan = run_plan(tmp_path, REPO / "recipes/smollm3/midtrain.yaml", REPO / "recipes/smollm3/synth-traces.yaml")
    assert rc == 0 and [p["stage"] for p in plan["plans"]] == ["midtrain", "synth-traces"]
    assert Path(tmp_path / "plan.json").is_file()


@pytest.mark.slow
def test_steps_and_tokens_equal_what_the_trainer_then_does(tmp_path, tiny_model, own_cache):
    """Planned optimizer steps and tokens against the SFT stage's own run of the same recipe (1 epoch, 2 rows
    a device, accumulation 3, one process), as transformers counts them. Its token count leaves out every
    token equal to the pad id (here the end-of-turn token, which is also eos), so those are counted apart."""
    recipe = write_sft(tmp_path, tiny_model, [
        {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}])
    text = yaml.safe_load(recipe.read_text())
    text["training"].update(num_train_epochs=1, gradient_accumulation_steps=3, save_strategy="no", report_to="none")
    text["output_dir"] = str(tmp_path / "run")
    recipe.write_text(yaml.safe_dump(text))
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "1")
    cost = plan["plans"][0]["cost"]
    batches = -(-cost["rows_per_epoch"] // 2)
    assert rc == 0 and batches % 3  # batches that do not divide by the accumulation: the rounding is tested
    assert main(["sft", "--recipe", str(recipe)]) == 0
    metrics = json.loads((tmp_path / "run" / "manifest.json").read_text())["metrics"]
    [cache] = [p for p in (own_cache / "mixtures").iterdir() if p.is_dir()]
    pad = load_tokenizer(load_recipe(recipe)).pad_token_id
    pads = sum(ids.count(pad) for ids in packed_column(cache, "input_ids"))
    assert cost["steps"] == metrics["steps"] and cost["tokens"] - pads == metrics["tokens_seen"]


def packed_column(cache: Path, name: str):
    """One column of the packed rows, read from the cache's Arrow files."""
    for file in json.loads((cache / "dataset" / "files.json").read_text()):
        with pa.OSFile(str(cache / "dataset" / file)) as f:
            for batch in pa.ipc.open_stream(f):
                yield from batch.column(name).to_pylist()


def test_rows_over_max_length_are_counted_per_source(tmp_path, tiny_model, own_cache, capsys):
    recipe = write_sft(tmp_path, tiny_model, [
        {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"},
        {"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}])
    text = yaml.safe_load(recipe.read_text())
    text["training"]["max_length"] = 160
    recipe.write_text(yaml.safe_dump(text))
    assert main(["prepare", "--recipe", str(recipe)]) == 0
    rc, plan = run_plan(tmp_path, recipe, "--gpus", "1")
    data = plan["plans"][0]["data"]
    over = [s["rows_over_max_length"] for s in data["sources"]]
    assert rc == 0 and sum(over) == data["rows_over_max_length"] > 0 and all(n <= s["rows"] for n, s in
                                                                               zip(over, data["sources"]))
    # what the plan counts as trained is what the packed rows train, after the cut
    [cache] = [p for p in (own_cache / "mixtures").iterdir() if p.is_dir()]
    trained = sum(sum(t != -100 for t in labels) for labels in packed_column(cache, "labels"))
    assert sum(s["trained_tokens_kept"] for s in data["sources"]) == trained
    assert sum(s["trained_tokens"] for s in data["sources"]) > trained


def test_synth_generations_and_gpu_hours(tmp_path):
    """The demo synth-pairs recipe: 8 of the 16 questions (max_prompts) x 2 modes x 2 models (teacher and weak)
    x 96 new tokens at most, costed at a stated vLLM throughput."""
    rc, plan = run_plan(tmp_path, REPO / "recipes/demo/synth-pairs.yaml", "--vllm-tokens-per-s", "100")
    data = plan["plans"][0]["data"]
    questions = sum(1 for line in (REPO / "data/demo/questions.jsonl").read_text().splitlines() if line.strip())
    assert rc == 0 and questions > 8 and (data["prompts"], data["generations"]) == (8, 8 * 2 * 2)
    assert data["generated_tokens_at_most"] == 32 * 96
    assert data["gpu_hours_at_most"] == pytest.approx(32 * 96 / 100 / 3600)
    assert "cost" not in plan["plans"][0]  # no training
