"""Packing tokenized documents into rows of `seq_length` tokens, without holding the corpus in memory.

    packed = pack(tokenized, seq_length, "bfd")     # or "wrapped"; columns input_ids, labels, seq_lengths

Both strategies first decide, from the documents' lengths alone (4 bytes a document), which pieces
of which documents go into each row; the rows are then built by a batched `datasets.map` over that
plan that reads the documents from the memory-mapped Arrow table and writes packed rows to Arrow on
disk, a few rows at a time. Peak memory is the plan (a few bytes per document) plus one batch of
rows, whatever the number of tokens.

- `bfd`: best-fit decreasing, every document whole (TRL's `bfd`): documents longest first, each
  into the row with the least room that still fits it. Documents longer than `seq_length` must be
  cut before packing (the mixture truncates them).
- `wrapped`: documents end to end in mixture order, cut every `seq_length` tokens; a document cut
  at a row boundary continues in the next row. Unlike TRL's `wrapped`, each row records where its
  document pieces start and end (`seq_lengths`), so attention stays inside documents.

`seq_lengths` is what TRL's padding-free collator turns into per-document `position_ids`.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

PACKED_FEATURES = {"input_ids": "int32", "labels": "int32", "seq_lengths": "int32"}
ROWS_PER_BATCH = 64  # packed rows built per map batch: 64 x 64k tokens x 2 columns x 4 bytes = 32 MB


def document_lengths(dataset) -> np.ndarray:
    """Token count of every document, read from the Arrow column (no token is materialised)."""
    if "length" in dataset.column_names:
        return np.asarray(dataset.with_format("numpy")["length"], dtype=np.int64)
    import pyarrow.compute as pc

    table = dataset.flatten_indices().data if dataset._indices is not None else dataset.data
    return np.asarray(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False), dtype=np.int64)


def bfd_plan(lengths: np.ndarray, seq_length: int) -> list[list[int]]:
    """Documents per row by best-fit decreasing. Free space is tracked per distinct value (at most
    `seq_length` of them) in a sorted list, so finding the best fit is a bisection."""
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    if len(lengths) and int(lengths.max()) > seq_length:
        raise ValueError(f"a document of {int(lengths.max())} tokens is longer than seq_length {seq_length}; "
                         "truncate documents before best-fit packing")
    rows: list[list[int]] = []
    spaces: list[int] = []  # distinct free-space values that some row has, sorted
    rows_with: dict[int, list[int]] = {}  # free space -> rows with exactly that much room
    for doc in np.argsort(-lengths, kind="stable"):
        need = int(lengths[doc])
        j = bisect.bisect_left(spaces, need)
        if j < len(spaces):
            space = spaces[j]
            row = rows_with[space].pop()
            if not rows_with[space]:
                del spaces[j], rows_with[space]
        else:
            space, row = seq_length, len(rows)
            rows.append([])
        rows[row].append(int(doc))
        left = space - need
        if left > 0:
            if left not in rows_with:
                bisect.insort(spaces, left)
                rows_with[left] = []
            rows_with[left].append(row)
    return rows


def wrapped_plan(lengths: np.ndarray, seq_length: int) -> list[list[tuple[int, int, int]]]:
    """(document, start, end) pieces per row when documents run end to end and are cut every
    `seq_length` tokens."""
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    total = int(ends[-1]) if len(ends) else 0
    rows = []
    for row_start in range(0, total, seq_length):
        row_end = min(row_start + seq_length, total)
        first = int(np.searchsorted(ends, row_start, side="right"))
        last = int(np.searchsorted(starts, row_end, side="left"))
        pieces = []
        for doc in range(first, last):
            lo, hi = max(row_start, int(starts[doc])), min(row_end, int(ends[doc]))
            if hi > lo:
                pieces.append((doc, lo - int(starts[doc]), hi - int(starts[doc])))
        rows.append(pieces)
    return rows


def pack(dataset, seq_length: int, strategy: str, num_proc: int | None = None, cache_file_name: str | None = None):
    """Packed `datasets.Dataset` (input_ids, labels, seq_lengths) from documents with input_ids and
    labels. `cache_file_name`: where the packed Arrow table goes (default: datasets' cache)."""
    from datasets import Dataset, Features, Sequence, Value

    lengths = document_lengths(dataset)
    if strategy == "wrapped":
        plan = [[list(piece) for piece in row] for row in wrapped_plan(lengths, seq_length)]
    elif strategy == "bfd":
        plan = [[[doc, 0, int(lengths[doc])] for doc in row] for row in bfd_plan(lengths, seq_length)]
    else:
        raise ValueError(f"unknown packing strategy {strategy!r}; use bfd or wrapped")
    documents = dataset.select_columns(["input_ids", "labels"])
    features = Features({k: Sequence(Value(v)) for k, v in PACKED_FEATURES.items()})
    return Dataset.from_dict({"pieces": plan}).map(
        _build_rows, fn_kwargs={"documents": documents}, batched=True, batch_size=ROWS_PER_BATCH,
        remove_columns=["pieces"], features=features, num_proc=_procs(num_proc, len(plan)),
        cache_file_name=cache_file_name, desc=f"packing ({strategy})")


def _build_rows(batch: dict[str, list], documents) -> dict[str, list[Any]]:
    """Packed rows for one batch of the plan: the documents it names, read in one `select`."""
    wanted = sorted({piece[0] for row in batch["pieces"] for piece in row})
    position = {doc: i for i, doc in enumerate(wanted)}
    rows = documents.select(wanted).with_format("numpy")
    ids, labels = rows["input_ids"], rows["labels"]
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "seq_lengths": []}
    for row in batch["pieces"]:
        parts = [(position[doc], start, end) for doc, start, end in row]
        out["input_ids"].append(np.concatenate([ids[p][s:e] for p, s, e in parts]).astype(np.int32))
        out["labels"].append(np.concatenate([labels[p][s:e] for p, s, e in parts]).astype(np.int32))
        out["seq_lengths"].append(np.array([e - s for _, s, e in parts], dtype=np.int32))
    return out


def _procs(num_proc: int | None, rows: int) -> int | None:
    if not num_proc or num_proc <= 1 or rows < 2 * ROWS_PER_BATCH:
        return None
    return min(num_proc, rows // ROWS_PER_BATCH)


def record_batches(dataset):
    """The dataset's Arrow record batches. From its own files with plain reads where it has them:
    through the memory map, every page read would stay resident in this process, so its memory
    would grow by the size of the data."""
    if dataset._indices is None and dataset.cache_files:
        import pyarrow as pa

        for entry in dataset.cache_files:
            with pa.OSFile(entry["filename"]) as f:
                yield from pa.ipc.open_stream(f)
        return
    table = dataset.flatten_indices().data if dataset._indices is not None else dataset.data
    yield from table.to_batches(max_chunksize=ROWS_PER_BATCH)


def packing_stats(packed, seq_length: int) -> dict[str, Any]:
    """Rows, documents, tokens, efficiency (non-pad share of rows x seq_length) and trained-token
    share, counted from Arrow one record batch at a time (never the whole label column at once)."""
    import pyarrow.compute as pc

    tokens = trained = docs = 0
    for batch in record_batches(packed):
        columns = dict(zip(batch.schema.names, batch.columns))
        tokens += int(pc.sum(pc.list_value_length(columns["input_ids"])).as_py() or 0)
        labels = pc.list_flatten(columns["labels"])
        trained += int(pc.sum(pc.cast(pc.not_equal(labels, -100), "int64")).as_py() or 0) if len(labels) else 0
        docs += int(pc.sum(pc.list_value_length(columns["seq_lengths"])).as_py() or 0)
    rows = len(packed)
    return {"packed_rows": rows, "documents": docs, "tokens": tokens,
            "efficiency": round(tokens / (rows * seq_length), 4) if rows else 0.0,
            "trained_token_share": round(trained / tokens, 4) if tokens else 0.0}
