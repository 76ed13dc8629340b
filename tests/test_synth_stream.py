"""Synthetic data streamed through the teacher (issue 29): every finished generation is stored at once.
"""

import json
import os

from synth.store import ShardStore


def test_the_store_writes_each_row_at_once_and_fsyncs_in_groups(tmp_path, monkeypatch):
    """A row is in the file (for a reader, and after a kill of the writer) as soon as it is added; fsync, the
    costly part, comes every `sync_rows` rows or `sync_seconds` seconds, and on close."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "shard.jsonl"
    with ShardStore(path, sync_rows=4, sync_seconds=3600) as store:
        for i in range(10):
            store.add({"key": f"k{i}", "text": "x"})
            assert len(path.read_text().splitlines()) == i + 1
        store.add({"key": "k3", "text": "again"})  # stored once
        assert len(synced) == 2
    assert len(synced) == 3 and [json.loads(line)["key"] for line in path.read_text().splitlines()] == [
        f"k{i}" for i in range(10)]
    with ShardStore(path, sync_rows=1000, sync_seconds=0) as store:
        store.add({"key": "late", "text": "y"})
        assert len(synced) == 4  # the group is old enough
