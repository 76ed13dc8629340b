"""Training stages refuse, before loading anything, a recipe this machine cannot run, and say what to set."""

import pytest
import torch
import transformers.utils
from conftest import sft_recipe

from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from pipeline.train import check_environment


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
    flash = recipe(write_recipe, attn="flash_attention_2", bf16=True)
    pretend_gpu(monkeypatch)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    check_environment(flash)
