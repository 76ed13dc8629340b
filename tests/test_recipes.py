"""Recipes: every shipped recipe loads, bad recipes fail before anything loads, with exact errors."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli, sft_recipe

from pipeline.core.batch import GLOBAL_BATCH, batch_for, trl_training
from pipeline.core.checks import trl_config_class
from pipeline.core.inputs import check_inputs
from pipeline.core.recipe import RecipeError, load_recipe, recipe_hash

SHIPPED = sorted((REPO / "recipes").glob("smollm3/*.yaml")) + sorted((REPO / "recipes").glob("demo/*.yaml"))


def line(path: Path, start: str) -> int:
    """1-based line of the first line of `path` that starts (after indentation) with `start`."""
    return 1 + next(i for i, text in enumerate(path.read_text().splitlines()) if text.strip().startswith(start))


def problems_of(path, overrides=(), stage=None) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides, stage=stage)
    return e.value.problems


# --------------------------------------------------------------------------------------------
# Shipped recipes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.stage == path.stem
    assert recipe.name == path.parent.name


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem in ("midtrain", "sft", "apo")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_training_block_builds_the_trl_config(path, tmp_path):
    """The pass-through block is accepted by TRL itself, not just by our key check; our own key (the global
    batch) reaches TRL as the accumulation it means on 8 GPUs."""
    recipe = load_recipe(path)
    cls = trl_config_class(recipe.stage)
    batch = batch_for(recipe.training, 8, {})
    training = trl_training(recipe.training, batch)
    args = dict(training, output_dir=str(tmp_path), bf16=False, use_liger_kernel=False, report_to="none")
    config = cls(**args)
    for key, value in training.items():
        if key not in ("bf16", "use_liger_kernel", "report_to", "loss_type"):
            assert getattr(config, key) == value, key
    assert 8 * config.per_device_train_batch_size * config.gradient_accumulation_steps == batch.global_batch
    assert GLOBAL_BATCH not in training


def test_real_recipe_has_published_hyperparameters():
    mid = load_recipe(REPO / "recipes/smollm3/midtrain.yaml")
    assert mid.model.name_or_path == "HuggingFaceTB/SmolLM3-3B-Base"
    assert mid.training["learning_rate"] == 2e-5 and mid.training["max_length"] == 32768
    assert mid.training["packing_strategy"] == "wrapped" and mid.training["num_train_epochs"] == 4
    assert mid.training["max_grad_norm"] == 0.2 and mid.training["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    sft = load_recipe(REPO / "recipes/smollm3/sft.yaml")
    assert sft.training["packing_strategy"] == "bfd" and sft.training["assistant_only_loss"] is True
    assert sft.training["max_length"] == 65536
    assert {s.mode for s in sft.data.sources} == {"think", "no_think"}
    apo = load_recipe(REPO / "recipes/smollm3/apo.yaml")
    assert apo.training["loss_type"] == "apo_zero" and apo.training["beta"] == 0.05
    assert apo.training["learning_rate"] == 1e-6 and apo.training["max_length"] == 24576
    assert apo.training["warmup_steps"] == 0.1 and apo.training["num_train_epochs"] == 1
    merge = load_recipe(REPO / "recipes/smollm3/merge.yaml")
    assert merge.soup_weight == 0.9 and merge.long_context.path == "runs/smollm3/midtrain"
    pairs = load_recipe(REPO / "recipes/smollm3/synth-pairs.yaml")
    assert (pairs.teacher.name_or_path, pairs.weak.name_or_path) == ("Qwen/Qwen3-32B", "Qwen/Qwen3-0.6B")
    assert set(pairs.modes) == {"think", "no_think"}
    traces = load_recipe(REPO / "recipes/smollm3/synth-traces.yaml")
    assert traces.modes == ["think"] and traces.backend.kind == "vllm"


def test_accelerate_configs_parse():
    kinds = {}
    for name in ("ddp", "zero3", "fsdp2"):
        cfg = yaml.safe_load((REPO / "recipes/accelerate" / f"{name}.yaml").read_text())
        kinds[name] = cfg["distributed_type"]
        assert cfg["num_processes"] == 8 and cfg["mixed_precision"] == "bf16"
    assert kinds == {"ddp": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}
    zero3 = yaml.safe_load((REPO / "recipes/accelerate/zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero_stage"] == 3


# --------------------------------------------------------------------------------------------
# Bad recipes: the exact errors
# --------------------------------------------------------------------------------------------
def test_unknown_key_names_line_suggestion_and_allowed(write_recipe):
    recipe = sft_recipe()
    recipe["model"]["attn_implementaton"] = "sdpa"
    path = write_recipe(recipe)
    [(key, msg)] = problems_of(path)
    assert key == f"model.attn_implementaton (line {line(path, 'attn_implementaton:')})"
    assert "unknown key (did you mean `attn_implementation`?)" in msg
    assert "allowed here: name_or_path, revision, dtype, attn_implementation" in msg


def test_wrong_type_and_bad_literal(write_recipe):
    recipe = sft_recipe()
    recipe["model"]["dtype"] = "float64"
    recipe["data"]["seed"] = "abc"
    problems = dict(problems_of(write_recipe(recipe)))
    assert "'auto', 'float32', 'bfloat16' or 'float16'" in problems["model.dtype (line 5)"]
    assert "valid integer, unable to parse string as an integer (got 'abc')" in problems["data.seed (line 10)"]


def test_error_message_names_the_file(write_recipe):
    recipe = sft_recipe()
    del recipe["model"]
    path = write_recipe(recipe)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: invalid recipe (1 problem)\n  model: required key is missing")


def test_removed_packing_strategy_ffd(write_recipe):
    recipe = sft_recipe()
    recipe["training"]["packing_strategy"] = "ffd"
    [(key, msg)] = problems_of(write_recipe(recipe))
    assert key.startswith("training.packing_strategy")
    assert "'ffd' is not one of TRL's choices: bfd, bfd_split, wrapped" in msg
    assert "best-fit decreasing is `bfd`" in msg


def test_unknown_trl_argument_with_suggestion(write_recipe):
    recipe = sft_recipe()
    recipe["training"]["learning_rte"] = 1e-5
    [(key, msg)] = problems_of(write_recipe(recipe))
    assert key.startswith("training.learning_rte")
    assert msg == "not an argument of TRL's SFTConfig (did you mean `learning_rate`?)"


def test_a_bad_value_under_a_secret_key_is_named_by_its_key_not_shown(write_recipe):
    """A 4-character hub_token is not remembered as a secret (too short), so the message must not quote it."""
    recipe = sft_recipe()
    recipe["training"]["hub_token"] = 1234
    [(key, msg)] = problems_of(write_recipe(recipe))
    assert key.startswith("training.hub_token") and "1234" not in msg
    assert msg == "<redacted> is not a valid str (or null)"


@pytest.mark.parametrize("training, problem", [
    ({"global_batch_size": 128, "gradient_accumulation_steps": 2}, "not both"),
    ({"global_batch_size": "128"}, "not a number of rows"),
    ({"global_batch_size": True}, "not a number of rows"),
    ({"global_batch_size": 0}, "not a number of rows"),
    ({"global_batch_size": 6, "per_device_train_batch_size": 4}, "not a multiple of per_device_train_batch_size 4"),
])
def test_a_global_batch_that_no_gpu_count_can_make_is_refused_by_validate(write_recipe, training, problem):
    recipe = sft_recipe()
    recipe["training"] = {**recipe["training"], **training}
    found = problems_of(write_recipe(recipe))
    assert len(found) == 1 and found[0][0].startswith("training.global_batch_size (line") and problem in found[0][1]


def test_transformers4_keys_get_their_replacement(write_recipe):
    recipe = sft_recipe()
    recipe["training"].update(warmup_ratio=0.03, gradient_checkpointing=True)
    path = write_recipe(recipe)
    problems = dict(problems_of(path))
    warm, ckpt = line(path, "warmup_ratio:"), line(path, "gradient_checkpointing:")
    assert "use `warmup_steps` with a float in [0, 1)" in problems[f"training.warmup_ratio (line {warm})"]
    assert "use `activation_checkpointing`" in problems[f"training.gradient_checkpointing (line {ckpt})"]


def test_max_seq_length_is_one_problem_naming_its_new_name(write_recipe):
    """TRL renamed it to max_length: one problem that says so, not a second, misleading "packing needs a
    max_length" (the recipe has one, under the old name)."""
    recipe = sft_recipe()
    recipe["training"]["max_seq_length"] = recipe["training"].pop("max_length")
    [(key, message)] = problems_of(write_recipe(recipe))
    assert key.startswith("training.max_seq_length (line") and "use `max_length`" in message


def test_assistant_only_loss_needs_generation_markers(write_recipe, tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    recipe = sft_recipe(chat={"template": str(plain)})
    recipe["training"]["assistant_only_loss"] = True
    [(key, msg)] = problems_of(write_recipe(recipe))
    assert key.startswith("chat.template")
    assert "assistant_only_loss needs `{% generation %}` markers" in msg
    # the same template with markers passes
    plain.write_text("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}")
    assert load_recipe(write_recipe(recipe)).training["assistant_only_loss"] is True


def test_midtrain_refuses_assistant_only_loss_and_bfd(write_recipe):
    recipe = sft_recipe(stage="midtrain")
    recipe["training"]["assistant_only_loss"] = True
    msgs = " | ".join(m for _, m in problems_of(write_recipe(recipe)))
    assert "mid-training trains on every token" in msgs
    assert "mid-training uses wrapped packing" in msgs


def test_apo_refuses_padding_free_and_unknown_loss(write_recipe):
    recipe = sft_recipe(stage="apo")
    recipe["training"] = {"loss_type": "apo_one", "padding_free": True, "beta": 0.05}
    path = write_recipe(recipe)
    problems = dict(problems_of(path))
    loss, free = line(path, "loss_type:"), line(path, "padding_free:")
    assert "'apo_one' is not one of TRL's choices: sigmoid, hinge" in problems[f"training.loss_type (line {loss})"]
    assert "ignores padding_free" in problems[f"training.padding_free (line {free})"]


def test_sft_loss_type_is_checked_against_sfts_own_losses(write_recipe):
    """SFTConfig has its own `loss_type` (nll, dft): a valid SFT loss validates, a DPO loss does not."""
    recipe = sft_recipe()
    recipe["training"]["loss_type"] = "dft"
    assert load_recipe(write_recipe(recipe, "dft.yaml")).training["loss_type"] == "dft"
    recipe["training"]["loss_type"] = "apo_zero"
    problems = dict(problems_of(write_recipe(recipe, "apo_zero.yaml")))
    message = next(m for k, m in problems.items() if k.startswith("training.loss_type"))
    assert "'apo_zero' is not one of TRL's choices: nll, dft" in message


@pytest.mark.parametrize("key, value", [("ref_model", {"name_or_path": "embedded:tiny-smollm3"}),
                                        ("eval_pairs", "data/demo/preferences_heldout.jsonl")])
def test_an_apo_setting_in_another_stages_recipe_names_the_stage_it_belongs_to(write_recipe, key, value):
    """APO's own keys live on its recipe class: in an SFT recipe they are unknown, and the message says whose
    they are (found in the registry's recipe classes, so no shared module names the stage)."""
    [(where, msg)] = problems_of(write_recipe(sft_recipe(**{key: value})))
    assert where.startswith(key)
    assert msg.startswith("unknown key (a key of the apo recipe, not of this one); allowed here:")
    apo = load_recipe(REPO / "recipes/demo/apo.yaml", [f"{key}={json.dumps(value)}"])
    assert apo.model_dump(exclude_defaults=True)[key] == value  # where it belongs, the same key is APO's own


def test_stage_mismatch_says_which_command(write_recipe):
    path = write_recipe(sft_recipe())
    [(key, msg)] = problems_of(path, stage="apo")
    assert key == "stage" and f"run `smolalign sft --recipe {path}`" in msg


def test_not_yaml_and_not_a_mapping(write_recipe):
    assert "not valid YAML" in problems_of(write_recipe("a: [1, 2"))[0][1]
    assert "a recipe is a YAML mapping" in problems_of(write_recipe("- 1\n- 2\n"))[0][1]


def test_enforce_eager_only_for_the_vllm_backend(write_recipe):
    body = {"name": "t", "stage": "eval", "models": ["m"], "tasks": {"mode": {}}}
    recipe = load_recipe(write_recipe({**body, "backend": {"kind": "vllm", "enforce_eager": True}}))
    assert recipe.backend.enforce_eager is True
    [(key, msg)] = problems_of(write_recipe({**body, "backend": {"kind": "transformers", "enforce_eager": True}}))
    assert key.startswith("backend") and "`enforce_eager` is a setting of backend `vllm`" in msg
    [(key, msg)] = problems_of(write_recipe({**body, "backend": {"kind": "vllm", "enforce_eager": "sometimes"}}))
    assert key.startswith("backend.enforce_eager")


@pytest.mark.parametrize("written, stored", [("2025-08-15", "15 August 2025"), ("'2025-08-15'", "15 August 2025"),
                                             ("15 August 2025", "15 August 2025"), ("'1 July 2025'", "01 July 2025")])
def test_a_date_is_stored_as_the_system_turn_writes_it(write_recipe, written, stored):
    """An unquoted YAML date is a date object, not text: it is written as the template shows dates."""
    text = yaml.safe_dump(sft_recipe()) + f"chat:\n  today_date: {written}\n  knowledge_cutoff: 2025-06-01\n"
    recipe = load_recipe(write_recipe(text))
    assert (recipe.chat.today_date, recipe.chat.knowledge_cutoff) == (stored, "June 2025")


@pytest.mark.parametrize("written", ["yesterday", "'2025/08/15'", "'August 15, 2025'", "20250815"])
def test_a_date_written_another_way_is_refused(write_recipe, written):
    path = write_recipe(yaml.safe_dump(sft_recipe()) + f"chat:\n  today_date: {written}\n")
    [(key, message)] = problems_of(path)
    assert key.startswith("chat.today_date (line") and "e.g. `01 July 2025`" in message
    assert "datetime" not in message


def test_budget_fraction_and_tokens_exclusive(write_recipe):
    recipe = sft_recipe()
    recipe["data"]["sources"][0].update(fraction=0.5, tokens=1000)
    [(key, msg)] = problems_of(write_recipe(recipe))
    assert key.startswith("data.sources.0") and "either `fraction` or `tokens`" in msg


def test_missing_inputs_are_named(write_recipe, tmp_path):
    recipe = sft_recipe(model={"name_or_path": "runs/nowhere/midtrain"})
    recipe["data"]["sources"].append({"path": str(tmp_path / "absent.jsonl")})
    loaded = load_recipe(write_recipe(recipe))  # loading does not need inputs
    with pytest.raises(RecipeError) as e:
        check_inputs(loaded)
    problems = dict(e.value.problems)
    assert "run that stage first (`make midtrain`)" in problems["model.name_or_path"]
    assert "does not exist" in problems["data.sources.0.path"]
    assert "absent.jsonl' does not exist" in problems["data.sources.1.path"]


def test_unknown_embedded_model(write_recipe, tmp_path):
    (tmp_path / "data.jsonl").write_text("")
    recipe = sft_recipe(model={"name_or_path": "embedded:gpt-5"})
    recipe["data"]["sources"][0]["path"] = str(tmp_path / "data.jsonl")
    with pytest.raises(RecipeError) as e:
        check_inputs(load_recipe(write_recipe(recipe)))
    assert e.value.problems == [("model.name_or_path", "unknown embedded model 'embedded:gpt-5'; known: "
                                                       "embedded:smollm2-135m-instruct, embedded:tiny-smollm3")]


# --------------------------------------------------------------------------------------------
# --set overrides and hashing
# --------------------------------------------------------------------------------------------
def test_overrides_keep_yaml_types_and_reach_lists(write_recipe):
    path = write_recipe(sft_recipe())
    recipe = load_recipe(path, ["training.learning_rate=1e-5", "training.bf16=false",
                                "data.sources.0.fraction=0.25", "model.dtype=bfloat16", "peft.r=8"])
    assert recipe.training["learning_rate"] == 1e-5 and recipe.training["bf16"] is False
    assert recipe.data.sources[0].fraction == 0.25 and recipe.model.dtype == "bfloat16"
    assert recipe.peft.r == 8 and recipe.peft.lora_alpha == 32


def test_override_errors(write_recipe):
    path = write_recipe(sft_recipe())
    assert "key.path=value" in problems_of(path, ["training.learning_rate"])[0][1]
    assert "out of range" in problems_of(path, ["data.sources.3.fraction=1"])[0][1]
    assert "unknown key" in problems_of(path, ["model.colour=red"])[0][1]
    assert "holds a value" in problems_of(path, ["name.x=1"])[0][1]


def test_recipe_hash_tracks_content(write_recipe):
    path = write_recipe(sft_recipe())
    a, b = load_recipe(path), load_recipe(path)
    assert recipe_hash(a) == recipe_hash(b)
    assert recipe_hash(load_recipe(path, ["training.max_steps=2"])) != recipe_hash(a)


# --------------------------------------------------------------------------------------------
# The CLI: exit code 2 and the message, before any model loads
# --------------------------------------------------------------------------------------------
def test_cli_rejects_bad_recipe_before_loading(write_recipe, tmp_path):
    recipe = sft_recipe()
    recipe["training"]["packing_strategy"] = "ffd"
    path = write_recipe(recipe)
    cache = tmp_path / "cache"  # the recipe's embedded model would be built here if anything loaded it
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "sft", "--recipe", str(path)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "SMOLALIGN_CACHE": str(cache)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert not cache.exists()
    assert f"error: {path}: invalid recipe (1 problem)" in proc.stderr
    at = line(path, "packing_strategy:")
    assert f"training.packing_strategy (line {at}): 'ffd' is not one of TRL's choices" in proc.stderr


def test_cli_validate_reports_each_file(write_recipe, monkeypatch, capfd):
    good = write_recipe(sft_recipe(), "good.yaml")
    bad = write_recipe(sft_recipe(stage="eval"), "bad.yaml")
    proc = run_cli(monkeypatch, capfd, "validate", good, bad)
    assert proc.returncode == 2
    assert f"ok    {good} (sft)" in proc.stdout
    assert f"FAIL  {bad}: invalid recipe" in proc.stdout and "models: required key is missing" in proc.stdout


def test_validate_checks_launcher_configs_as_launcher_configs(write_recipe, capsys):
    """`smolalign validate recipes/accelerate/*.yaml` (as a new user types it): ok, as accelerate configs; a
    launcher config given to a stage says what it is and where it goes."""
    from pipeline.cli import main

    configs = sorted(str(p) for p in (REPO / "recipes/accelerate").glob("*.yaml"))
    bad = write_recipe("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 7}\n", "bad.yaml")
    assert main(["validate", *configs]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("ok    ") and "accelerate launcher config" in line for line in out)
    assert main(["validate", str(bad)]) == 2 and "zero_stage of 0 to 3" in capsys.readouterr().out
    assert main(["sft", "--recipe", configs[0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "accelerate launcher config" in err[-1] and "stage: required key is missing" not in "".join(err)


def test_every_trl_choice_field_is_checked():
    """Guard: if TRL drops `choices` metadata, our value check would silently stop working."""
    fields = {f.name: f for f in dataclasses.fields(trl_config_class("sft"))}
    assert fields["packing_strategy"].metadata["choices"] == ["bfd", "bfd_split", "wrapped"]


def test_packing_without_padding_free_is_refused(write_recipe):
    """The leak is measured in test_data.test_packed_forward_equals_per_document_forward."""
    recipe = sft_recipe()
    recipe["training"]["padding_free"] = False
    [(key, msg)] = problems_of(write_recipe(recipe))
    assert key.startswith("training.padding_free") and "attend across documents" in msg


def test_cli_synth_refuses_a_non_synth_recipe(write_recipe, monkeypatch, capfd):
    path = write_recipe(sft_recipe())
    proc = run_cli(monkeypatch, capfd, "synth", "--recipe", path)
    assert proc.returncode == 2 and "runs synth-traces or synth-pairs recipes; this one is `sft`" in proc.stderr


OFFICIAL_SFT_SPLITS = {
    "smoltalk_smollm3_smol_magpie_ultra_no_think": 0.5, "smoltalk_smollm3_smol_summarize_no_think": None,
    "smoltalk_smollm3_smol_rewrite_no_think": None, "smoltalk_smollm3_systemchats_30k_no_think": None,
    "smoltalk_smollm3_explore_instruct_rewriting_no_think": None,
    "smoltalk_smollm3_everyday_conversations_no_think": None, "smoltalk_multilingual_8languages_lang_5_no_think": None,
    "tulu_3_sft_personas_instruction_following_no_think": None, "hermes_function_calling_v1_no_think": None,
    "xlam_traces_no_think": None, "table_gpt_no_think": None, "OpenHermes_2.5_no_think": 0.5,
    "OpenThoughts3_1.2M_no_think_no_think": 0.4, "Mixture_of_Thoughts_science_no_think": None,
    "LongAlign_64k_context_lang_annotated_lang_6_no_think": None, "multi_turn_reasoning_if_think": None,
    "smoltalk_everyday_convs_reasoning_Qwen3_32B_think": None, "smoltalk_systemchats_Qwen3_32B_think": None,
    "smolagents_toolcalling_traces_think": None, "s1k_1.1_think": None,
    "LongAlign_64k_Qwen3_32B_yarn_131k_think": None,
    "aya_dataset_Qwen3_32B_think": None, "smoltalk_multilingual8_Qwen3_32B_think": 0.3,
    "OpenThoughts3_1.2M_think": 0.02, "table_gpt_Qwen3_32B_think": None,
}


def test_sft_recipe_has_the_25_official_splits_with_their_weights():
    sft = load_recipe(REPO / "recipes/smollm3/sft.yaml")
    splits = {s.split: s.fraction for s in sft.data.sources}
    assert splits == OFFICIAL_SFT_SPLITS
    assert all(s.mode == ("think" if s.split.endswith("_think") and not s.split.endswith("no_think") else "no_think")
               for s in sft.data.sources)


def test_a_stage_rule_is_listed_where_it_was_before_the_recipes_moved_beside_their_stages(write_recipe):
    """A stage's own rules (APO's padding_free, then its reference model), then the shared combinations: TRL
    checks, the stage's rules and the shared ones keep the order users saw before (the review found it
    reversed)."""
    body = {"name": "t", "stage": "apo", "model": {"name_or_path": "embedded:tiny-smollm3"},
            "ref_model": {"name_or_path": "embedded:tiny-smollm3"},
            "data": {"sources": [{"path": "data/demo/preferences.jsonl"}]},
            "training": {"padding_free": True, "precompute_ref_log_probs": True, "bf16": True, "fp16": True}}
    keys = [key.split(" ")[0] for key, _ in problems_of(write_recipe(body))]
    assert keys == ["training.padding_free", "ref_model", "training.bf16"]
