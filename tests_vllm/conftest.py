"""Fixtures for the real-vLLM tests (run by `make test-vllm` in `.venv-vllm`, never by `make test`).

The engines are vLLM's CPU build, started with `enforce_eager` (~30 s each instead of ~100 s with
torch.compile): fixtures share them across tests where a test allows.

Models: the embedded SmolLM2 demo checkpoint (real weights, real text), and a tiny SmolLM3 built here
with head_dim 64 (the CPU attention kernel refuses the shared tiny model's head_dim 16) whose weights
are set so that greedy decoding follows a fixed chain of tokens, special tokens included: a real
model through the real engine, with an output known in advance.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# This checkout's code, whichever copy the venv has installed (the engine processes get it via PYTHONPATH)
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
# One small KV cache per engine (the default 4 GiB would crowd the shared machine).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Added to the scripted model's tokenizer as *special* tokens: the worst case for detokenisers that
# skip special tokens (the real SmolLM3 and Qwen3 tokenizers have them as added tokens).
TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
# After the generation prompt's last token ("\n"), greedy decoding writes exactly this, then <|im_end|>.
CHAIN = ["<think>", "Let", " me", " think", "</think>", "Answer", ":", " yes", "<tool_call>", "{", "}",
         "</tool_call>"]
CHAIN_TEXT = "".join(CHAIN)


def pytest_collection_modifyitems(items):
    """No vLLM is a failure, never a skip: these tests exist to run the real engine."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.exit("tests_vllm/ needs vLLM: run them with `make test-vllm` (it builds .venv-vllm)", returncode=1)


# Lines the tests want in the final summary (the parity counts), whatever pytest's capture settings.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARY:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def smollm2() -> str:
    from pipeline.core.models import resolve_model

    return resolve_model("embedded:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def scripted_smollm3(smollm2, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("scripted-smollm3")
    build_scripted_smollm3(smollm2, out)
    return str(out)


@pytest.fixture(scope="session")
def scripted_smollm3_copy(smollm2, tmp_path_factory) -> str:
    """The same model at another path: another model's name, for a teacher and a weak model that are both
    fast on hundreds of prompts."""
    out = tmp_path_factory.mktemp("scripted-smollm3-copy")
    build_scripted_smollm3(smollm2, out)
    return str(out)


def build_scripted_smollm3(tokenizer_from: str, out: Path) -> None:
    """SmolLM3 (NoPE layer 3, GQA 2:1, head_dim 64) whose attention and MLP write nothing into the
    residual stream, so the last position's logits depend on its own token only; the embeddings of the
    chain tokens are orthonormal and the LM head maps each to its successor (margin ~34 logits)."""
    import torch
    from transformers import AutoTokenizer, SmolLM3Config, SmolLM3ForCausalLM

    from pipeline.core.chat import END_OF_TURN, install_template

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.add_tokens(TAGS, special_tokens=True)
    install_template(tokenizer)
    ids = [tokenizer("\n", add_special_tokens=False).input_ids[-1]]
    for piece in CHAIN + [END_OF_TURN]:
        piece_ids = tokenizer(piece, add_special_tokens=False).input_ids
        assert len(piece_ids) == 1, f"chain piece {piece!r} is not one token: {piece_ids}"
        ids += piece_ids
    assert len(set(ids)) == len(ids), "a token repeats in the chain: its successor would be ambiguous"

    config = SmolLM3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=False,
        no_rope_layer_interval=4, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = SmolLM3ForCausalLM(config)
    basis = torch.linalg.qr(torch.randn(128, 128))[0]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (token, successor) in enumerate(zip(ids, ids[1:])):
            model.model.embed_tokens.weight[token] = basis[i]
            model.lm_head.weight[successor] = 3 * basis[i]  # margin ~34 logits: sampling keeps the chain too
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@pytest.fixture
def write_recipe(tmp_path):
    def write(body: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    return write
