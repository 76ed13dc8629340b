"""Packing tokenized documents into rows of `seq_length` tokens, without holding the corpus in memory.

    packed = pack(tokenized, seq_length, "bfd")     # or "wrapped"; columns input_ids, labels, seq_lengths

Both strategies first decide, from the documents' lengths alone, which pieces of which documents go
into each row: BFD as two integer arrays (documents in row order, row offsets), wrapped from the
documents' end offsets, a batch of rows at a time. The plan goes to .npy files; the rows are then
built by a batched `datasets.map` over row numbers whose workers memory-map the plan, read the
documents from the memory-mapped Arrow table and write packed rows to Arrow on disk, a few rows at a
time. Memory: a few integers per document in the planning process, one batch of rows per worker.

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
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.mapped import release_mapped_pages

PACKED_FEATURES = {"input_ids": "int32", "labels": "int32", "seq_lengths": "int32"}
ROWS_PER_BATCH = 64  # packed rows built per map batch: 64 x 64k tokens x 2 columns x 4 bytes = 32 MB


def document_lengths(dataset) -> np.ndarray:
    """Token count of every document, read from the Arrow column (no token is materialised)."""
    if "length" in dataset.column_names:
        return np.asarray(dataset.with_format("numpy")["length"], dtype=np.int64)
    import pyarrow.compute as pc

    table = dataset.flatten_indices().data if dataset._indices is not None else dataset.data
    return np.asarray(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False), dtype=np.int64)


def bfd_plan(lengths: np.ndarray, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents per row by best-fit decreasing, as two arrays: row r holds the documents
    `docs[offsets[r]:offsets[r + 1]]`, in the order they were placed. Free space is tracked per
    distinct value (at most `seq_length` of them) in a sorted list, so finding the best fit is a
    bisection; the only per-document state is two integer arrays.

    Ties are broken as TRL's `bfd` breaks them, so the same documents give the same rows (tested row for
    row against TRL 1.16): documents of equal length are placed in their original order, and among rows
    with the same free space the one that has had it longest takes the next document (first in, first out)."""
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    if len(lengths) and int(lengths.max()) > seq_length:
        raise ValueError(f"a document of {int(lengths.max())} tokens is longer than seq_length {seq_length}; "
                         "truncate documents before best-fit packing")
    placed = np.argsort(-lengths, kind="stable")  # longest first
    row_of = np.empty(len(placed), dtype=np.int64)  # row of the k-th document placed
    rows = 0
    spaces: list[int] = []  # distinct free-space values that some row has, sorted
    rows_with: dict[int, deque[int]] = {}  # free space -> rows with exactly that much room, oldest first
    for k, need in enumerate(lengths[placed].tolist()):
        j = bisect.bisect_left(spaces, need)
        if j < len(spaces):
            space = spaces[j]
            row = rows_with[space].popleft()
            if not rows_with[space]:
                del spaces[j], rows_with[space]
        else:
            space, row, rows = seq_length, rows, rows + 1
        row_of[k] = row
        left = space - need
        if left > 0:
            if left not in rows_with:
                bisect.insort(spaces, left)
                rows_with[left] = deque()
            rows_with[left].append(row)
    by_row = np.argsort(row_of, kind="stable")  # stable: a row keeps its documents in placement order
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of, minlength=rows), out=offsets[1:])
    return placed[by_row], offsets


def wrapped_pieces(ends: np.ndarray, seq_length: int, first_row: int, last_row: int) -> list[list[tuple]]:
    """(document, start, end) pieces of rows first_row..last_row - 1 when documents run end to end
    (document d ends at token `ends[d]`) and are cut every `seq_length` tokens. Computed per batch of
    rows from the documents' end offsets alone: no plan of the whole corpus is ever built."""
    total = int(ends[-1]) if len(ends) else 0
    rows = []
    for row_start in range(first_row * seq_length, min(last_row * seq_length, total), seq_length):
        row_end = min(row_start + seq_length, total)
        doc = int(np.searchsorted(ends, row_start, side="right"))
        pieces = []
        while doc < len(ends) and (start := int(ends[doc - 1]) if doc else 0) < row_end:
            lo, hi = max(row_start, start), min(row_end, int(ends[doc]))
            if hi > lo:
                pieces.append((doc, lo - start, hi - start))
            doc += 1
        rows.append(pieces)
    return rows


def wrapped_rows(lengths: np.ndarray, seq_length: int) -> int:
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    return -(-int(lengths.sum()) // seq_length)


def pack(dataset, seq_length: int, strategy: str, num_proc: int | None = None, cache_file_name: str | None = None,
         truncate: bool = False):
    """Packed `datasets.Dataset` (input_ids, labels, seq_lengths) from documents with input_ids and
    labels. `cache_file_name`: where the packed Arrow table goes (default: datasets' cache).
    `truncate` (bfd): documents longer than `seq_length` keep their first `seq_length` tokens (read
    as such while packing: no pass that copies the corpus to cut them first).

    The plan (BFD's document order and row offsets, or wrapped's document end offsets) is written to
    .npy files that the workers memory-map: each reads the slice for its batch of rows, and nothing
    proportional to the corpus is copied into every worker."""
    from datasets import Dataset, Features, Sequence, Value

    lengths = document_lengths(dataset)
    if truncate and strategy == "bfd":
        lengths = np.minimum(lengths, seq_length)
    if strategy not in ("bfd", "wrapped"):
        raise ValueError(f"unknown packing strategy {strategy!r}; use bfd or wrapped")
    documents = dataset.select_columns(["input_ids", "labels"])
    features = Features({k: Sequence(Value(v)) for k, v in PACKED_FEATURES.items()})
    where = Path(cache_file_name).parent if cache_file_name else None
    with tempfile.TemporaryDirectory(prefix="packing-plan-", dir=where) as tmp:
        plan = {}
        if strategy == "bfd":
            plan["docs"], plan["offsets"] = bfd_plan(lengths, seq_length)
            plan["lengths"] = lengths
            rows = len(plan["offsets"]) - 1
        else:
            rows = wrapped_rows(lengths, seq_length)
            plan["ends"] = np.cumsum(lengths)
        files = {}
        for name, array in plan.items():
            files[name] = str(Path(tmp) / f"{name}.npy")
            np.save(files[name], array)
        del plan
        row_ids = Dataset.from_dict({"row": np.arange(rows, dtype=np.int64)})
        return row_ids.map(
            _build_rows, fn_kwargs={"documents": documents, "plan": files, "strategy": strategy,
                                    "seq_length": seq_length},
            batched=True, batch_size=ROWS_PER_BATCH, remove_columns=["row"], features=features,
            num_proc=map_procs(num_proc, rows), cache_file_name=cache_file_name, desc=f"packing ({strategy})")


def _pieces(rows: list[int], plan: dict[str, str], strategy: str, seq_length: int) -> list[list[tuple]]:
    """(document, start, end) pieces of a contiguous batch of rows, read from the plan's files."""
    first, last = rows[0], rows[-1] + 1
    if strategy == "wrapped":
        return wrapped_pieces(np.load(plan["ends"], mmap_mode="r"), seq_length, first, last)
    offsets = np.load(plan["offsets"], mmap_mode="r")[first:last + 1]
    docs = np.load(plan["docs"], mmap_mode="r")[offsets[0]:offsets[-1]]
    lengths = np.load(plan["lengths"], mmap_mode="r")
    out = []
    for lo, hi in zip(offsets[:-1] - offsets[0], offsets[1:] - offsets[0]):
        out.append([(int(d), 0, int(lengths[d])) for d in docs[lo:hi]])
    return out


def _build_rows(batch: dict[str, list], documents, plan: dict[str, str], strategy: str,
                seq_length: int) -> dict[str, list[Any]]:
    """Packed rows for one batch of row numbers, from the documents they name."""
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "seq_lengths": []}
    if not batch["row"]:
        return out
    pieces = _pieces(batch["row"], plan, strategy, seq_length)
    wanted = sorted({doc for row in pieces for doc, _, _ in row})
    position = {doc: i for i, doc in enumerate(wanted)}
    ids, labels, offsets = _gather(documents, wanted)
    for row in pieces:
        parts = [(offsets[position[doc]] + start, offsets[position[doc]] + end) for doc, start, end in row]
        out["input_ids"].append(np.concatenate([ids[a:b] for a, b in parts]))
        out["labels"].append(np.concatenate([labels[a:b] for a, b in parts]))
        out["seq_lengths"].append(np.array([b - a for a, b in parts], dtype=np.int32))
    return out


GATHER_DOCUMENTS = 128  # documents read between two releases of mapped pages


def _gather(documents, wanted: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens and labels of documents `wanted`, concatenated (int32), and where each starts.
    Read `GATHER_DOCUMENTS` at a time, releasing the mapped pages after each: every document read
    through the memory map leaves a few hundred kB resident (the kernel maps pages around each
    fault), so a batch of 1,000 short documents held ~400 MB until released."""
    import pyarrow.compute as pc

    ids, labels, lengths = [], [], []
    for i in range(0, len(wanted), GATHER_DOCUMENTS):
        table = documents.select(wanted[i:i + GATHER_DOCUMENTS]).with_format("arrow")[:]
        for name, into in (("input_ids", ids), ("labels", labels)):
            column = table.column(name)
            into.append(pc.list_flatten(column).to_numpy().astype(np.int32, copy=True))
        lengths.append(pc.list_value_length(table.column("input_ids")).to_numpy())
        del table
        release_mapped_pages()  # what this worker has read does not stay resident
    counts = np.concatenate(lengths)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return np.concatenate(ids), np.concatenate(labels), offsets


def map_procs(num_proc: int | None, rows: int) -> int | None:
    """Worker processes for a map over `rows` rows: `num_proc`, but none for small inputs (starting
    workers costs more than a few hundred rows take)."""
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
