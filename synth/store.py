"""Exactly-once, resumable storage for generated rows.

Work is keyed by a hash of everything that determines a generation: the prompt messages, the model,
the sampling parameters and the template kwargs (mode). A shard file is append-only JSONL, flushed
and fsynced after every batch, and written by one process at a time (the shard run holds a lock on
it). On restart, the keys already on disk are skipped; a last line cut short by a crash is dropped
(its work is simply redone); an unreadable line is skipped and counted, never a reason to drop the
lines after it. Other shards' files are only ever read. Duplicate keys cannot arise: a key is
written by one shard only (`key_shard`), and once per run of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.preemption import check, deferred


def work_key(messages: list[dict], model: str, sampling: dict[str, Any], template_kwargs: dict[str, Any]) -> str:
    blob = json.dumps({"messages": messages, "model": model, "sampling": sampling, "template": template_kwargs},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def key_shard(key: str, n: int) -> int:
    return int(key[:8], 16) % n


class ShardStore:
    """One shard's JSONL file of {"key": ..., ...} rows, opened by the process that writes it.

    Loading skips (and counts in `bad_lines`) a line that is not a JSON object with a key, and keeps
    every line after it; only a last line cut short by a crash (no newline) is cut off, since this
    process is the file's only writer."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, self.bad_lines, good_size = read_shard(path) if path.exists() else ({}, 0, 0)
        if path.exists() and good_size != path.stat().st_size:
            with open(path, "r+b") as fh:
                fh.truncate(good_size)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, rows: Iterable[dict]) -> None:
        rows = [r for r in rows if r["key"] not in self.rows]
        if not rows:
            return
        with deferred():  # a stop signal (SIGTERM) waits until the batch is whole on disk
            with open(self.path, "a", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.rows.update((r["key"], r) for r in rows)
        check()  # and then stops the stage here, with every finished batch kept


def read_shard(path: Path) -> tuple[dict[str, dict], int, int]:
    """(rows by key, bad lines skipped, bytes up to the end of the last complete line), read-only.
    A line without its newline is being written (or was cut by a crash): not counted as bad."""
    rows, bad, complete = {}, 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            complete += len(line)
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
                continue
            if not isinstance(row, dict) or "key" not in row:
                bad += 1
                continue
            rows[row["key"]] = row
    return rows, bad, complete


def read_all(shard_dir: Path, skip: Path | None = None) -> dict[str, dict]:
    """Every row of every shard file (but `skip`), keyed. Other shards' files are only read: their
    writers may be appending to them right now."""
    rows: dict[str, dict] = {}
    for path in sorted(shard_dir.glob("shard-*.jsonl")):
        if path != skip:
            found, bad, _ = read_shard(path)
            if bad:
                print(f"warning: {path}: skipped {bad} unreadable line(s)")
            rows.update(found)
    return rows
