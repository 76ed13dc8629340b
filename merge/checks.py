"""Checks that checkpoints can be merged, before MergeKit reads a single weight.

Reads only config.json, the safetensors headers (whole files: pipeline/core/weights.py) and tokenizer.json,
so checking a soup of 3B checkpoints takes milliseconds. Each problem names the checkpoint and what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.runs import is_complete_checkpoint
from pipeline.core.weights import weights_problem

# Files only a transformers Trainer checkpoint holds: such a directory must be a complete checkpoint.
TRAINER_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")


class MergeCheckError(UserError):
    """Checkpoints that cannot be merged; the message lists every incompatibility."""


@dataclass
class Checkpoint:
    path: str
    architectures: tuple[str, ...]
    model_type: str
    tied: bool
    dtypes: frozenset[str]
    tensors: dict[str, tuple[int, ...]]
    vocab_size: int
    vocab_hash: str


def inspect(path: str | Path) -> Checkpoint:
    from safetensors import safe_open

    path = Path(path)
    refuse_unfinished(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MergeCheckError(f"{path}: no config.json; is this a model checkpoint?")
    config = json.loads(config_file.read_text())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise MergeCheckError(f"{path}: no .safetensors weights (MergeKit needs safetensors)")
    damaged = weights_problem(path)
    if damaged:
        raise MergeCheckError(f"{damaged}; was it cut short while being written? Rerun the stage that wrote it")
    tensors, dtypes = {}, set()
    for f in files:
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                tensor = st.get_slice(name)
                tensors[name] = tuple(tensor.get_shape())
                dtypes.add(str(tensor.get_dtype()))
    vocab = _vocab(path)
    return Checkpoint(
        path=str(path), architectures=tuple(config.get("architectures") or ()),
        model_type=config.get("model_type", ""),
        tied=bool(config.get("tie_word_embeddings", False)), dtypes=frozenset(dtypes), tensors=tensors,
        vocab_size=len(vocab), vocab_hash=hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest(),
    )


def refuse_unfinished(path: Path) -> None:
    """Only whole checkpoints are merged: not a run that has not finished (its manifest says so), nor a
    Trainer checkpoint cut short while saving (no whole trainer_state.json: a kill hit it), whatever
    its name, e.g. an old `checkpoint-N.incomplete` that a `checkpoint-*` soup glob matches."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        status = json.loads(manifest.read_text()).get("status")
        if status != "complete":
            raise MergeCheckError(f"{path}: an unfinished run (status {status}); rerun its stage to finish it, "
                                  "or merge its complete checkpoint-N directories")
    set_aside = path.name.startswith("checkpoint-") and not path.name.removeprefix("checkpoint-").isdigit()
    looks_like_trainer_checkpoint = path.name.startswith("checkpoint-") or any(
        (path / f).exists() for f in TRAINER_FILES)
    if set_aside or (looks_like_trainer_checkpoint and not is_complete_checkpoint(path)):
        raise MergeCheckError(f"{path}: not a complete checkpoint (a checkpoint-N directory with weights and a whole "
                              "trainer_state.json); it was cut short while saving (killed?): leave it out of the "
                              "soup, e.g. list the complete checkpoints instead of a glob")


def _vocab(path: Path) -> dict[str, int]:
    tok = path / "tokenizer.json"
    if not tok.is_file():
        raise MergeCheckError(f"{path}: no tokenizer.json; the merge output must carry a tokenizer")
    data = json.loads(tok.read_text())
    vocab = dict(data.get("model", {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab


def check_compatible(paths: list[str]) -> list[Checkpoint]:
    """Inspect every checkpoint and compare each with the first. Raises MergeCheckError."""
    infos = [inspect(p) for p in paths]
    ref, problems = infos[0], []
    for other in infos[1:]:
        where = f"{other.path} vs {ref.path}"
        if (other.architectures, other.model_type) != (ref.architectures, ref.model_type):
            problems.append(f"architecture differs ({where}): {other.architectures or other.model_type} "
                            f"vs {ref.architectures or ref.model_type}")
            continue
        if other.tied != ref.tied:
            problems.append(f"tied embeddings differ ({where}): tie_word_embeddings {other.tied} vs {ref.tied}")
        names = _comparable(other) ^ _comparable(ref)
        if names:
            problems.append(f"tensor names differ ({where}): {_few(names)}")
        shapes = [n for n in _comparable(other) & _comparable(ref) if other.tensors[n] != ref.tensors[n]]
        if shapes:
            n = sorted(shapes)[0]
            problems.append(f"tensor shapes differ ({where}): {len(shapes)} tensors, e.g. {n} "
                            f"{other.tensors[n]} vs {ref.tensors[n]}")
        if other.vocab_hash != ref.vocab_hash:
            problems.append(f"tokenizer vocabulary differs ({where}): {other.vocab_size} vs {ref.vocab_size} tokens "
                            "(merged embeddings would mix different tokens)")
        if other.dtypes != ref.dtypes:
            problems.append(f"dtype differs ({where}): {sorted(other.dtypes)} vs {sorted(ref.dtypes)}; "
                            "convert one so that the merge precision is a choice, not an accident")
    if problems:
        raise MergeCheckError("cannot merge:\n  " + "\n  ".join(problems))
    return infos


def _comparable(c: Checkpoint) -> set[str]:
    """Tensor names, ignoring an lm_head that a tied checkpoint may or may not store."""
    return {n for n in c.tensors if not (c.tied and n == "lm_head.weight")}


def _few(names: set[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
