"""The one loader: every source a recipe names (a Hub dataset, a local .jsonl/.json/.parquet file, the
rows or pairs an earlier run wrote) read the same way for every stage.

    rows = open_source(source, cache)        # a datasets.Dataset (Arrow, memory-mapped): the mixture build
    for row in iter_rows(source): ...        # the same rows one by one: what the one source reader reads

A Hub dataset or a parquet file keeps its own columns. A local JSONL (or JSON list) file becomes one
`text` column of raw JSON lines, each parsed where it is used (`parse_row`): Arrow would otherwise
merge the nested dicts of all rows into one struct type, and a tool schema or a tool call's
`arguments` would gain other rows' keys as None. What a row *means* (messages, ShareGPT,
prompt/completion, tools, template kwargs) is pipeline/data/rows.py's normaliser, not this module's.

Adding a file format is one branch in `open_source` (and its suffix in `FILE_TYPES`).
"""

from __future__ import annotations

import codecs
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.inputs import classify_input, disk_error, hub_errors
from pipeline.core.schema import Source

FILE_TYPES = (".jsonl", ".json", ".parquet")
RAW_JSON = "text"  # the column of a local JSON file's rows, one JSON document each
DEFAULT_ROW_LIMIT = 16 << 20  # bytes of one row read outside a training mixture (which has data.max_row_bytes)


class BadRow(ValueError):
    """A row that cannot be used; the message is the quarantine reason."""


def is_raw_json(source: Source) -> bool:
    """Whether `open_source` gives this source's rows as raw JSON text (local .jsonl/.json)."""
    return classify_input(source.path) == "local" and Path(source.path).suffix in (".jsonl", ".json")


def parse_row(text: str) -> Any:
    """One row of a local JSON file, from its raw text; a BadRow when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRow(f"not valid JSON ({e.msg})") from None
    except RecursionError:  # the decoder recurses once per level: [[[[...]]]] 100,000 deep
        raise BadRow("not valid JSON (nested too deep to parse)") from None


def open_source(source: Source, cache: Path, limit: int = DEFAULT_ROW_LIMIT):
    """A source as a `datasets.Dataset`. `cache`: where local files' Arrow copies go (a directory the
    caller removes when done; Hub datasets use the Hugging Face cache, downloaded once for every use).
    A JSONL file also has a `bytes` column, the size of each line: a line longer than `limit` bytes is
    never read (its text is empty), so that it can be refused by its size."""
    from datasets import Dataset, Features, Value, load_dataset

    if classify_input(source.path) == "hub":
        with hub_errors(source.path, "data source", repo_type="dataset"):
            return load_dataset(source.path, source.name, split=source.split)
    path = Path(source.path).expanduser()
    if path.suffix not in FILE_TYPES:
        raise UserError(f"{source.path}: unsupported file type; use {', '.join(FILE_TYPES)}")
    if path.suffix == ".parquet":
        try:
            return load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(cache))
        except Exception as e:  # an unreadable file: say which, and why (a full cache disk is not the file's fault)
            if disk_error(e):
                raise
            raise UserError(f"{source.path}: cannot read as parquet ({type(e).__name__}: {e})") from None
    check_utf8(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{source.path}: not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None
        return Dataset.from_dict({RAW_JSON: [json.dumps(r) for r in (data if isinstance(data, list) else [data])]},
                                 features=Features({RAW_JSON: Value("string")}))
    features = Features({RAW_JSON: Value("string"), "bytes": Value("int64")})
    if not _has_content(path):  # datasets cannot build from a generator that yields nothing
        return Dataset.from_dict({RAW_JSON: [], "bytes": []}, features=features)
    # Lines streamed into Arrow a batch at a time (measured: datasets' "text" builder held memory in
    # proportion to the file). The cache directory (one per build) keeps a changed file from reusing it.
    return Dataset.from_generator(_lines, features=features, cache_dir=str(cache),
                                  gen_kwargs={"path": str(path), "build": str(cache), "limit": limit},
                                  writer_batch_size=1000)


def iter_rows(source: Source, bad_rows: bool = False) -> Iterator[Any]:
    """Every row of a source in order, as Python objects, through `open_source` (a local file's Arrow
    copy lives in a temporary directory while the rows are read). A JSON line that does not parse is
    an error naming the file and the line, or, with `bad_rows`, yielded as the BadRow it is (the one
    source reader, pipeline/data/reader.py, quarantines it as the mixture does)."""
    with tempfile.TemporaryDirectory(prefix="smolalign-source-") as tmp:
        rows = open_source(source, Path(tmp) / "rows")
        raw = is_raw_json(source) and RAW_JSON in rows.column_names
        for index, record in enumerate(rows):
            if not raw:
                yield record
                continue
            try:
                if not record[RAW_JSON] and record.get("bytes"):  # over the size bound: never read
                    raise BadRow(f"row of {record['bytes']:,} bytes, over the {DEFAULT_ROW_LIMIT:,}-byte limit")
                yield parse_row(record[RAW_JSON])
            except BadRow as e:
                if bad_rows:
                    yield e
                    continue
                raise UserError(f"{source.path}:{_line_of(Path(source.path).expanduser(), index)}: {e}; "
                                "fix or remove that line") from None


def check_utf8(path: Path) -> None:
    """Fail with the file and line on the first bytes that are not UTF-8 (read in 1 MB chunks)."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line += chunk[:e.start].count(b"\n")
                raise UserError(f"{path}:{line}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
            line += chunk.count(b"\n")


def _has_content(path: Path) -> bool:
    """Whether a file has a non-blank line (read in 1 MB chunks until the first)."""
    with open(path, "rb") as fh:
        return any(chunk.strip() for chunk in iter(lambda: fh.read(1 << 20), b""))


def _lines(path: str, build: str, limit: int):
    """The non-blank lines of a JSONL file (UTF-8, checked before), one row each with its size in bytes.
    A line longer than `limit` is measured a megabyte at a time and never held: its text is empty."""
    with open(path, "rb") as fh:
        while line := fh.readline(limit + 1):
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line)
                while (chunk := fh.readline(1 << 20)) and not chunk.endswith(b"\n"):
                    size += len(chunk)
                yield {RAW_JSON: "", "bytes": size + len(chunk)}
            elif line.strip():
                yield {RAW_JSON: line.decode("utf-8"), "bytes": len(line)}


def _line_of(path: Path, index: int) -> int:
    """The line number of the index-th non-blank line (blank lines are not rows); read only on an error."""
    if path.suffix != ".jsonl":
        return 1
    seen = -1
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            seen += bool(line.strip())
            if seen == index:
                return number
    return index + 1
