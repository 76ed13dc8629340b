"""Merge stage: exact linear arithmetic, incompatible inputs refused by name, output usable."""

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from eval.schema import EvalRecipe, EvalSpec
from merge.checks import MergeCheckError, check_compatible
from merge.stage import run
from merge.sweep import eval_recipe
from pipeline.cli import load
from pipeline.core.models import build_tiny_smollm3
from pipeline.core.recipe import RecipeError
from pipeline.core.summary import read_summary


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Three tiny SmolLM3 checkpoints with different weights (seeds 0, 1, 2)."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        (root / name).mkdir()
        build_tiny_smollm3(root / name, seed=seed)
        out[name] = root / name
    return out


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def merge_recipe(write_recipe, tmp_path, soup, long_context, **extra):
    body = {"name": "t", "stage": "merge", "output_dir": str(tmp_path / "merged"),
            "soup": [{"path": str(p)} for p in soup], "long_context": {"path": str(long_context)},
            "soup_weight": 0.9, "dtype": "float32", **extra}
    return load(write_recipe(body))


def test_final_merge_is_exactly_09_a_plus_01_b(write_recipe, tmp_path, ckpts, caplog, capsys, monkeypatch):
    import mergekit.architecture

    monkeypatch.setattr(mergekit.architecture, "WARNED_ARCHITECTURE_NAMES", set())  # it warns once a process
    logging.Logger.warning_once.cache_clear()  # and so does transformers (torch_dtype)
    out = run(merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"]))
    # mergekit has no layout file for SmolLM3 and infers it, correctly (below): not a warning that reads as an error
    assert not [r for r in caplog.records if "No JSON architecture" in r.getMessage()]
    assert not [r for r in caplog.records if "`torch_dtype` is deprecated" in r.getMessage()]  # mergekit's use
    assert "mergekit reads the layout of SmolLM3ForCausalLM from its weights" in capsys.readouterr().out
    a, b, m = weights(ckpts["a"]), weights(ckpts["b"]), weights(out)
    assert set(m) == set(a)
    for name in a:
        assert torch.allclose(m[name], 0.9 * a[name] + 0.1 * b[name], atol=1e-6), name
    config = json.loads((out / "config.json").read_text())
    assert config["no_rope_layers"] == [1, 1, 1, 0, 1, 1, 1, 0] and config["tie_word_embeddings"] is True
    assert config["use_cache"] is True
    eos = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    assert config["eos_token_id"] == eos == json.loads((out / "generation_config.json").read_text())["eos_token_id"]


def test_soup_then_merge_with_a_glob(write_recipe, tmp_path, ckpts):
    apo = tmp_path / "apo"
    for i, name in enumerate(("a", "c")):
        (apo / f"checkpoint-{i + 1}").parent.mkdir(exist_ok=True)
        import shutil

        shutil.copytree(ckpts[name], apo / f"checkpoint-{i + 1}")
        (apo / f"checkpoint-{i + 1}" / "trainer_state.json").write_text(json.dumps({"global_step": i + 1}))
    out = run(merge_recipe(write_recipe, tmp_path, [apo / "checkpoint-*"], ckpts["b"]))
    a, b, c, m = weights(ckpts["a"]), weights(ckpts["b"]), weights(ckpts["c"]), weights(out)
    for name in a:
        assert torch.allclose(m[name], 0.9 * (0.5 * a[name] + 0.5 * c[name]) + 0.1 * b[name], atol=1e-6), name
    assert (out / "soup" / "mergekit_config.yml").is_file()
    recorded = (out / "mergekit_final.yml").read_text()
    assert f"model: {out / 'soup'}" in recorded and ".partial" not in recorded
    manifest = json.loads((out / "manifest.json").read_text())
    lineage = manifest["inputs"]
    assert {"soup.0.path[0]", "soup.0.path[1]", "long_context.path"} <= set(lineage)
    assert manifest["metrics"]["soup_weights"] == [0.5, 0.5]
    # what the eval report reads: the inputs and their weights, and the merge's own files
    summary = read_summary(out)
    assert summary["merged"] == {"soup": [{"path": str(apo / "checkpoint-1"), "weight": 0.5},
                                          {"path": str(apo / "checkpoint-2"), "weight": 0.5}],
                                 "soup_weight": 0.9, "long_context": str(ckpts["b"])}
    assert summary["outputs"] == ["mergekit_final.yml", "soup/mergekit_config.yml", "lineage.json", "README.md"]


def test_merged_model_loads_and_generates_with_our_template(write_recipe, tmp_path, ckpts):
    out = run(merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"]))
    tok = AutoTokenizer.from_pretrained(out)
    assert "Reasoning Mode" in tok.chat_template
    assert "{% generation %}" in tok.chat_template.replace("{%- generation -%}", "{% generation %}")
    model = AutoModelForCausalLM.from_pretrained(out)
    inputs = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                     enable_thinking=False, return_tensors="pt", return_dict=True)
    assert tok.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    assert "| `" in (out / "README.md").read_text()


def _variant(ckpts, tmp_path, name, edit):
    import shutil

    path = tmp_path / name
    shutil.copytree(ckpts["a"], path)
    edit(path)
    return path


def test_incompatible_inputs_are_refused_by_name(ckpts, tmp_path):
    def other_shape(p):
        w = weights(p)
        w["model.norm.weight"] = torch.ones(32)
        save_file(w, str(p / "model.safetensors"), metadata={"format": "pt"})

    def other_vocab(p):
        data = json.loads((p / "tokenizer.json").read_text())
        data["model"]["vocab"]["zzzzzz"] = data["model"]["vocab"].pop(next(iter(data["model"]["vocab"])))
        (p / "tokenizer.json").write_text(json.dumps(data))

    def untied(p):
        c = json.loads((p / "config.json").read_text())
        c["tie_word_embeddings"] = False
        (p / "config.json").write_text(json.dumps(c))

    def bf16(p):
        w = {k: v.to(torch.bfloat16) for k, v in weights(p).items()}
        save_file(w, str(p / "model.safetensors"), metadata={"format": "pt"})

    def llama(p):
        c = json.loads((p / "config.json").read_text())
        c["architectures"], c["model_type"] = ["LlamaForCausalLM"], "llama"
        (p / "config.json").write_text(json.dumps(c))

    cases = {other_shape: "tensor shapes differ", other_vocab: "tokenizer vocabulary differs",
             untied: "tied embeddings differ", bf16: "dtype differs", llama: "architecture differs"}
    for edit, message in cases.items():
        bad = _variant(ckpts, tmp_path, edit.__name__, edit)
        with pytest.raises(MergeCheckError, match=message) as e:
            check_compatible([str(ckpts["a"]), str(bad)])
        assert str(bad) in str(e.value)


def complete_checkpoint(source, path):
    import shutil

    shutil.copytree(source, path)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (path / "optimizer.pt").write_bytes(b"optimizer state")
    return path


@pytest.mark.parametrize("cut_short", ["no trainer state", "half a trainer state", "old set-aside name",
                                       "unfinished run", "truncated weights"])
def test_the_soup_glob_never_merges_a_checkpoint_cut_short(write_recipe, tmp_path, ckpts, cut_short):
    """Issue 21 item 1: a kill while saving left a checkpoint that a `checkpoint-*` glob matches."""
    apo = tmp_path / "apo"
    complete_checkpoint(ckpts["a"], apo / "checkpoint-2")
    if cut_short == "unfinished run":
        bad = complete_checkpoint(ckpts["c"], tmp_path / "apo.partial")
        (bad / "manifest.json").write_text(json.dumps({"stage": "apo", "status": "running"}))
        soup = [apo / "checkpoint-*", bad]
    else:
        name = "checkpoint-4.incomplete" if "old" in cut_short else "checkpoint-4"
        bad = complete_checkpoint(ckpts["c"], apo / name)
        soup = [apo / "checkpoint-*"]
    if cut_short == "no trainer state":
        (bad / "trainer_state.json").unlink()
    elif cut_short == "half a trainer state":
        (bad / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    elif cut_short == "truncated weights":
        with open(bad / "model.safetensors", "r+b") as fh:
            fh.truncate((bad / "model.safetensors").stat().st_size - 64)
    recipe = merge_recipe(write_recipe, tmp_path, soup, ckpts["b"])
    with pytest.raises(MergeCheckError, match="cut short|unfinished run") as e:
        run(recipe)
    assert str(bad) in str(e.value)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()


def test_a_complete_trainer_checkpoint_copied_under_another_name_is_merged(write_recipe, tmp_path, ckpts):
    kept = complete_checkpoint(ckpts["a"], tmp_path / "best-apo")  # what is complete counts, not the name
    out = run(merge_recipe(write_recipe, tmp_path, [kept], ckpts["b"]))
    assert (out / "model.safetensors").is_file()


def test_failed_check_writes_nothing(write_recipe, tmp_path, ckpts):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    recipe = merge_recipe(write_recipe, tmp_path, [ckpts["a"]], empty)
    with pytest.raises(MergeCheckError, match="no config.json"):
        run(recipe)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()


def test_weight_sweep_scores_each_merge_and_names_the_best(write_recipe, tmp_path, ckpts):
    recipe = merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"], sweep={
        "weights": [0.5, 1.0], "eval": {"tasks": {"ruler": {"lengths": [512], "variants": ["niah_single_1"], "n": 1},
                                                  "mode": {"n": 2}},
                                        "modes": ["no_think"], "sampling": {"temperature": 0.0, "max_new_tokens": 4},
                                        "dtype": "float32"}})
    out = run(recipe)
    summary = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["weight"] for r in summary["rows"]] == [0.5, 1.0]
    assert set(summary["rows"][0]["scores"]) == {"ruler (no_think)", "mode (no_think)"}
    # the best weight is the highest mean score, ties going to the weight nearest soup_weight
    for row in summary["rows"]:
        assert row["mean"] == round(sum(row["scores"].values()) / len(row["scores"]), 4)
    means = {row["weight"]: row["mean"] for row in summary["rows"]}
    top = [w for w, m in means.items() if m == max(means.values())]
    assert summary["best_weight"] == min(top, key=lambda w: abs(w - recipe.soup_weight))
    assert summary["best_mean"] == max(means.values())
    assert (out / "sweep" / "sweep.png").is_file() and "Best weight" in (out / "sweep" / "sweep.md").read_text()
    a, b = weights(ckpts["a"]), weights(ckpts["b"])
    half, whole = weights(out / "sweep" / "w0.5"), weights(out / "sweep" / "w1")
    for name in a:
        assert torch.allclose(half[name], 0.5 * a[name] + 0.5 * b[name], atol=1e-6)
        assert torch.allclose(whole[name], a[name], atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["sweep_best_weight"] == summary["best_weight"]
    run_summary = read_summary(out)  # what the eval report reads: the sweep and its table, whole
    assert run_summary["sweep"]["rows"] == summary["rows"]
    assert run_summary["sweep"]["best_weight"] == summary["best_weight"]
    assert run_summary["sweep"]["table"] == (out / "sweep" / "sweep.md").read_text()
    assert run_summary["stage"] == "merge" and run_summary["outputs"] == ["sweep/sweep.md", "mergekit_final.yml",
                                                                        "lineage.json", "README.md"]


def test_bad_sweep_weight_is_refused(write_recipe, tmp_path, ckpts):
    with pytest.raises(RecipeError, match=r"sweep.weights \(line \d+\): sweep weights must be in \(0, 1\]"):
        merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"], sweep={"weights": [0.0, 1.5]})
    with pytest.raises(RecipeError, match=r"sweep.eval.tasks.ruler.depth \(line \d+\): unknown option"):
        merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"],
                     sweep={"weights": [0.5], "eval": {"tasks": {"ruler": {"depth": 1}}}})


# ---- the sweep's eval is the eval stage's own spec, composed ------------------------------------
def test_every_eval_setting_reaches_the_sweep(write_recipe, tmp_path, ckpts):
    """Each merge is scored with an EvalRecipe made from `sweep.eval`: every field of the eval spec arrives
    as given (one class: a field the eval gains arrives too), the merge is its one model."""
    spec = {"tasks": {"mode": {"n": 3}}, "modes": ["no_think"], "dtype": "float16",
            "backend": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "concurrency": 3},
            "sampling": {"temperature": 0.3, "max_new_tokens": 7, "seed": 5},
            "chat": {"template": "model", "today_date": "02 February 2024"}}
    assert set(spec) == set(EvalSpec.model_fields)  # this test sets every field the spec has
    recipe = merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"], seed=3,
                          sweep={"weights": [0.5], "eval": spec})
    built = eval_recipe(recipe, tmp_path / "w0.5")
    assert (built.models, built.seed, built.name, built.stage) == ([str(tmp_path / "w0.5")], 3, "t", "eval")
    assert {k: v for k, v in built.model_dump().items() if k in spec} == EvalSpec.model_validate(spec).model_dump()


# What the shipped merge recipes said before the sweep's eval became an eval spec, verbatim.
OLD_SWEEPS = {
    "demo": {"sweep": [0.5, 0.9, 1.0], "sweep_tasks": {"mode": {"n": 6}}, "sweep_modes": ["think", "no_think"],
             "backend": {"kind": "transformers", "batch_size": 12},
             "sampling": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 96}},
    "smollm3": {"sweep": [0.7, 0.8, 0.9, 1.0],
                "sweep_tasks": {"ruler": {"lengths": [4096, 16384, 65536], "n": 20}, "math": {"n": 100}},
                "backend": {"kind": "vllm", "max_model_len": 65536},
                "sampling": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 16384}},
}


@pytest.mark.parametrize("name", OLD_SWEEPS)
def test_the_shipped_sweeps_score_as_they_did(name):
    recipe = load(REPO / "recipes" / name / "merge.yaml")
    old = OLD_SWEEPS[name]
    # the eval recipe the sweep built before: the copied fields, with the merge recipe's dtype, chat and seed
    before = EvalRecipe(name=recipe.name, stage="eval", models=["w"], tasks=old["sweep_tasks"],
                        modes=old.get("sweep_modes", ["think", "no_think"]), backend=old["backend"],
                        sampling=old["sampling"], chat=recipe.chat, dtype=recipe.dtype, seed=recipe.seed)
    assert recipe.sweep.weights == old["sweep"]
    assert eval_recipe(recipe, Path("w")).model_dump() == before.model_dump()


def test_a_recipe_in_the_sweeps_old_layout_is_told_where_each_key_went(write_recipe, tmp_path, ckpts):
    with pytest.raises(RecipeError) as e:
        merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"], sweep=[0.5], sweep_tasks={"mode": {}},
                     backend={"kind": "transformers"})
    [(_, message)] = e.value.problems
    for moved in ("`sweep: [weights]` -> `sweep.weights`", "`sweep_tasks` -> `sweep.eval.tasks`",
                  "`backend` -> `sweep.eval.backend`"):
        assert moved in message


def test_how_the_sweeps_server_is_reached_is_not_part_of_the_runs_identity(write_recipe, tmp_path, ckpts):
    """As for eval and synth: fixing the server's address or retry budget resumes a run, and `plan` says so."""
    from pipeline.core.runs import identity_hash
    from pipeline.planning.plan import changes_identity

    def recipe(**backend):
        backend = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", **backend}
        return merge_recipe(write_recipe, tmp_path, [ckpts["a"]], ckpts["b"],
                            sweep={"weights": [0.5], "eval": {"tasks": {"mode": {}}, "backend": backend}})

    base = identity_hash(recipe())
    assert identity_hash(recipe(base_url="http://127.0.0.1:10/v1", timeout_s=30, retry_budget_s=5)) == base
    with pytest.raises(RecipeError, match="`batch_size` is a setting of backend `transformers`, not `openai`"):
        recipe(batch_size=3)  # the HTTP client never read it, yet it changed the run's identity before
    assert not changes_identity("sweep.eval.backend.base_url") and changes_identity("sweep.eval.backend.kind")
    assert not changes_identity("backend.retry_budget_s") and changes_identity("sweep.eval.tasks")
