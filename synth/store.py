"""Exactly-once, resumable storage for generated rows.

Work is keyed by a hash of everything that determines a generation: the prompt messages, the model,
the sampling parameters and the template kwargs (mode). A shard file is append-only JSONL written by
one process at a time (the shard run holds a lock on it). Each row is handed to the operating system
as soon as its generation finishes, so a killed process loses nothing it finished; the file is fsynced
in groups (every `sync_rows` rows or `sync_seconds` seconds, and on close), so a lost machine loses at
most the last group. On restart, the keys already on disk are skipped; a last line cut short by a
crash is dropped (its work is simply redone); an unreadable line is skipped and counted, never a
reason to drop the lines after it. Other shards' files are only ever read. Duplicate keys cannot
arise: a key is written by one shard only (`key_shard`), and once per run of it.

While generating, the store holds the keys only: its memory follows the number of generations, not
the length of the traces.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.core.preemption import check, deferred

SYNC_ROWS = 256  # rows between two fsyncs...
SYNC_SECONDS = 10.0  # ...or seconds, whichever comes first


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
    process is the file's only writer. Use it as a context manager (or call `close`): the last group
    of rows is fsynced there."""

    def __init__(self, path: Path, sync_rows: int = SYNC_ROWS, sync_seconds: float = SYNC_SECONDS):
        self.path = path
        self.sync_rows, self.sync_seconds = sync_rows, sync_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        self.keys: set[str] = set()
        self.bad_lines = 0
        if path.exists():
            self.keys, self.bad_lines, good_size = shard_keys(path)
            if good_size != path.stat().st_size:
                with open(path, "r+b") as fh:
                    fh.truncate(good_size)
        self._file = None
        self._unsynced, self._synced_at = 0, time.monotonic()

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, row: dict) -> None:
        """Write one row now (a kill of this process keeps it); fsync when the group is full or old."""
        if row["key"] in self.keys:
            return
        with deferred():  # a stop signal (SIGTERM) waits until the row is whole in the file
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            # flushed to the OS at once: a kill keeps it; a kill in the middle of the line leaves a torn last
            # line, which loading cuts off
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            self.keys.add(row["key"])
            self._unsynced += 1
            if self._unsynced >= self.sync_rows or time.monotonic() - self._synced_at >= self.sync_seconds:
                self.sync()
        check()  # and then stops the stage here, with every finished row kept (closing the store fsyncs them)

    def append(self, rows: Iterable[dict]) -> None:
        """Add rows and fsync them."""
        for row in rows:
            self.add(row)
        self.sync()

    def sync(self) -> None:
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
        self._unsynced, self._synced_at = 0, time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scan_shard(path: Path, on_row: Callable[[dict], None]) -> tuple[int, int]:
    """Calls `on_row` with each row of a shard file, reading one line at a time; returns (unreadable lines
    skipped, bytes up to the end of the last complete line). A last line without its newline is being
    written, or was cut by a crash: not read, not counted as bad."""
    bad, complete = 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            complete += len(line)
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if isinstance(row, dict) and "key" in row:
                on_row(row)
            else:
                bad += 1
    return bad, complete


def shard_keys(path: Path) -> tuple[set[str], int, int]:
    """(keys, unreadable lines skipped, bytes up to the end of the last complete line), read-only."""
    keys: set[str] = set()
    bad, complete = scan_shard(path, lambda row: keys.add(row["key"]))
    return keys, bad, complete


def read_shard(path: Path) -> tuple[dict[str, dict], int, int]:
    """(rows by key, unreadable lines skipped, bytes up to the end of the last complete line), read-only."""
    rows: dict[str, dict] = {}
    bad, complete = scan_shard(path, lambda row: rows.__setitem__(row["key"], row))
    return rows, bad, complete


def _shard_files(shard_dir: Path, skip: Path | None) -> list[Path]:
    return [path for path in sorted(shard_dir.glob("shard-*.jsonl")) if path != skip]


def read_all(shard_dir: Path, skip: Path | None = None) -> dict[str, dict]:
    """Every row of every shard file (but `skip`), keyed. Other shards' files are only read: their
    writers may be appending to them right now."""
    rows: dict[str, dict] = {}
    for path in _shard_files(shard_dir, skip):
        found, bad, _ = read_shard(path)
        if bad:
            print(f"warning: {path}: skipped {bad} unreadable line(s)")
        rows.update(found)
    return rows


def keys_of_all(shard_dir: Path, skip: Path | None = None) -> set[str]:
    """The keys of every shard file (but `skip`): what is done, without holding the generations."""
    keys: set[str] = set()
    for path in _shard_files(shard_dir, skip):
        found, bad, _ = shard_keys(path)
        if bad:
            print(f"warning: {path}: skipped {bad} unreadable line(s)")
        keys |= found
    return keys
