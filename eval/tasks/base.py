"""What every task shares: the Example record, think-block stripping, package data lookup."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THINK_CLOSE = "</think>"


@dataclass
class Example:
    """One prompt to send and what scoring needs. `meta` carries e.g. tools, length, mode."""

    id: str
    messages: list[dict[str, Any]]
    target: Any
    meta: dict[str, Any] = field(default_factory=dict)


def strip_think(text: str) -> str:
    """The answer part of a completion: everything after `</think>`. An unclosed think block
    means the model never answered (truncated while reasoning): the answer is empty."""
    text = text.strip()
    if THINK_CLOSE in text:
        return text.split(THINK_CLOSE, 1)[1].strip()
    if text.startswith("<think>"):
        return ""
    return text


def package_dir(package: str, install: str) -> Path:
    """Directory of an installed data package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the `{package}` data package is missing; {install} (`make setup` does)")
    return Path(list(spec.submodule_search_locations)[0])
