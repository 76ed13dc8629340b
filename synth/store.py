"""Exactly-once, resumable storage for generated rows.

Work is keyed by a hash of everything that determines a generation: the prompt messages, the model,
the sampling parameters and the template kwargs (mode). A shard file is append-only JSONL, flushed
and fsynced after every batch. On restart, the keys already on disk are skipped; a last line cut
short by a crash is dropped (its work is simply redone). Duplicate keys cannot arise: a key is
written by one shard only (`key_shard`), and once per run of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def work_key(messages: list[dict], model: str, sampling: dict[str, Any], template_kwargs: dict[str, Any]) -> str:
    blob = json.dumps({"messages": messages, "model": model, "sampling": sampling, "template": template_kwargs},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def key_shard(key: str, n: int) -> int:
    return int(key[:8], 16) % n


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/8") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


class ShardStore:
    """One shard's JSONL file of {"key": ..., ...} rows."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        good, size = [], 0
        with open(self.path, "rb") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a crash: it and anything after it is redone
                if not line.endswith(b"\n"):
                    break
                good.append(row)
                size += len(line)
        if size != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(size)
        self.rows = {r["key"]: r for r in good}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, rows: Iterable[dict]) -> None:
        rows = [r for r in rows if r["key"] not in self.rows]
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.update((r["key"], r) for r in rows)


def read_all(shard_dir: Path, skip: Path | None = None) -> dict[str, dict]:
    """Every row of every shard file (but `skip`), keyed."""
    rows: dict[str, dict] = {}
    for path in sorted(shard_dir.glob("shard-*.jsonl")):
        if path != skip:
            rows.update(ShardStore(path).rows)
    return rows
