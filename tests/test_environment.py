"""Training stages refuse, before loading anything, a recipe this machine cannot run, and say what to set."""

import sys
import types

import pytest
import torch
import transformers.utils
from conftest import sft_recipe

from pipeline.core.errors import UserError
from pipeline.core.recipe import load_recipe
from pipeline.training.train import check_environment, choose_attention


def recipe(write_recipe, attn="sdpa", **training):
    body = sft_recipe()
    body["model"]["attn_implementation"] = attn
    body["training"].update(training)
    return load_recipe(write_recipe(body))


def pretend_gpu(monkeypatch):
    """After the recipes load (their checks build TRL configs, which touch CUDA when it is said to exist)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_cpu_refuses_bf16_and_flash_attention(write_recipe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"training.bf16/fp16 need a GPU .* --set training.bf16=false"):
        check_environment(recipe(write_recipe, bf16=True))
    with pytest.raises(UserError, match=r"attn_implementation=flash_attention_2 needs a GPU"):
        check_environment(recipe(write_recipe, attn="flash_attention_2"))
    check_environment(recipe(write_recipe))  # sdpa in fp32 runs on CPU
    check_environment(recipe(write_recipe, attn="auto"))  # auto is sdpa here


def test_cpu_refuses_training_with_flex_attention(write_recipe, monkeypatch):
    """Measured: torch's flex_attention has no backward on CPU (NotImplementedError at the first step, after
    the data is built); it is refused before anything loads. Its forward runs on CPU (test_data.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"model.attn_implementation=flex_attention trains only on a GPU .*"
                                        r"--set model.attn_implementation=auto"):
        check_environment(recipe(write_recipe, attn="flex_attention"))


def test_gpu_without_flash_attn_is_refused_with_the_fix(write_recipe, monkeypatch):
    flash, sdpa = recipe(write_recipe, attn="flash_attention_2"), recipe(write_recipe, attn="sdpa")
    pretend_gpu(monkeypatch)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    with pytest.raises(UserError) as e:
        check_environment(flash)
    message = str(e.value)
    assert "model.attn_implementation=flash_attention_2" in message and "flash-attn is not installed" in message
    assert "pip install -e '.[gpu]'" in message and "--set model.attn_implementation=sdpa" in message
    check_environment(sdpa)


def test_gpu_with_flash_attn_passes(write_recipe, monkeypatch):
    """The same bf16 flash-attn recipe on a GPU passes exactly when flash-attn is there (the check asks)."""
    flash = recipe(write_recipe, attn="flash_attention_2", bf16=True)
    pretend_gpu(monkeypatch)
    installed, asked = [False], []
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: asked.append(1) or installed[0])
    with pytest.raises(UserError, match="flash-attn is not installed"):
        check_environment(flash)
    installed[0] = True
    assert check_environment(flash) is None and len(asked) == 2


def test_auto_attention_follows_the_machine(write_recipe, monkeypatch):
    """auto: sdpa on CPU (the demo and the tests), flash_attention_2 where flash-attn imports, else
    flex_attention on a GPU; each with the reason the manifest and the first log line give."""
    auto = recipe(write_recipe, attn="auto").model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = choose_attention(auto)
    assert (cpu.requested, cpu.used) == ("auto", "sdpa") and cpu.why.startswith("no GPU")

    pretend_gpu(monkeypatch)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    flex = choose_attention(auto)
    assert flex.used == "flex_attention" and "flash-attn is not installed" in flex.why and flex.warning is None

    # installed but built for another torch: it does not import, so it is not chosen
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` raises ImportError
    broken = choose_attention(auto)
    assert broken.used == "flex_attention" and "flash-attn is installed but does not import" in broken.why

    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert choose_attention(auto).used == "flash_attention_2"


def test_explicit_attention_is_honoured_and_sdpa_on_long_packed_rows_warns(write_recipe, monkeypatch):
    specs = {impl: recipe(write_recipe, attn=impl).model for impl in ("eager", "sdpa", "flex_attention")}
    pretend_gpu(monkeypatch)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    for impl, spec in specs.items():
        chosen = choose_attention(spec)
        assert (chosen.requested, chosen.used, chosen.why) == (impl, impl, "set in the recipe")
    sdpa = specs["sdpa"]
    warning = choose_attention(sdpa, packed_length=65536).warning
    assert warning == ("warning: sdpa on packed rows of 65536 tokens builds a 65536 x 65536 mask per row (4.0 GiB) "
                       "and computes attention over the whole square; model.attn_implementation: auto uses "
                       "flash-attn or flex_attention")
    assert choose_attention(sdpa, packed_length=16384).warning is None  # up to 16k: 256 MiB, fine
    assert choose_attention(specs["flex_attention"], packed_length=65536).warning is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_attention(sdpa, packed_length=65536).warning is None  # CPU: nothing better to suggest
