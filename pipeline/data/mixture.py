"""The SFT / mid-training mixture, built in Arrow from end to end: sources -> tokens + loss masks ->
quarantine -> budgets -> shuffle -> packed rows, cached by content.

    smolalign prepare --recipe recipes/smollm3/sft.yaml            # make prepare RECIPE=...
    smolalign prepare --recipe recipes/smollm3/sft.yaml --shard 3/16   # one share; a last run collects
    dataset, report = build_sft_mixture(recipe, tokenizer, cache_root, quarantine_path)  # what stages call

No step holds the corpus as Python objects. Rows are read as Arrow by the one loader
(pipeline/data/sources.py: a local JSONL file line by line as text, each line parsed inside the map);
`datasets.map(batched=True, num_proc=N)` tokenizes them into int32
columns on disk, with a `reason` column that is empty for good rows and says why a row was
quarantined otherwise; budgets are drawn from the `length` column as index lists; the shuffle is a
permutation of indices; packing (pipeline/data/packing.py) plans rows from lengths and builds them batch
by batch. Peak memory is a few bytes per document plus one batch, whatever the token count.

The result lands in `<cache>/mixtures/<fingerprint>/` (fingerprint: sources and their content, the
tokenizer, the template and every setting that changes the tokens). Training ranks only
memory-map it; the first process to need it builds it under a file lock, or `prepare` did so
beforehand on a CPU machine. `--shard i/n` tokenizes the i-th share of every source (a Slurm array,
scripts/slurm/prepare.sbatch); the collecting run uses the shares instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.inputs import classify_input
from pipeline.core.schema import Source, TrainRecipe, source_label
from pipeline.data.mapped import release_mapped_pages
from pipeline.data.packing import map_procs, pack, packing_stats
from pipeline.data.reader import budget, write_quarantine
from pipeline.data.rows import BadRow, Rendering, encode_row
from pipeline.data.sources import RAW_JSON, is_raw_json, open_source, parse_row

# `trained_kept`: the trained tokens a row keeps once cut to max_length (all of them when wrapped packing
# splits long rows instead): a long prompt cut before its answer trains nothing, whatever `trained` says.
TOKENIZED = {"input_ids": ("list", "int32"), "labels": ("list", "int32"), "length": "int32", "trained": "int32",
             "trained_kept": "int32",
             "thinking": "bool", "source": "int32", "row": "int64", "reason": "string"}
ROWS_PER_BATCH = 256


def num_proc(recipe: TrainRecipe) -> int:
    """`data.num_proc`, or every core of this machine."""
    return recipe.data.num_proc or os.cpu_count() or 1


def row_byte_limit(recipe: TrainRecipe) -> int:
    """`data.max_row_bytes`, or 64 bytes per token of max_length (at least 1 MiB; 16 MiB without one).

    A row is tokenized whole before it is cut to max_length, and that costs ~150x its size (a 50 MB
    line: 7.3 GB in one worker), so a row far longer than anything trained on is quarantined unread.
    64 bytes a token leaves room for any row that fits: JSON escapes (`\\u4e2d`, 6 bytes a character)
    of multi-character tokens, markup, tool schemas."""
    if recipe.data.max_row_bytes:
        return recipe.data.max_row_bytes
    max_length = recipe.settings.max_length
    return max(1 << 20, 64 * max_length) if max_length else 16 << 20


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def build_sft_mixture(recipe: TrainRecipe, tokenizer, cache_root: Path, quarantine_path: Path,
                      shard: tuple[int, int] | None = None):
    """(dataset ready for TRL, report dict), built once per fingerprint under `cache_root`.
    With `shard` (i, n): tokenize only that share of every source and return (None, None)."""
    from pipeline.core.models import file_lock

    fingerprint = mixture_fingerprint(recipe, tokenizer, tokenizer.chat_template or "")
    cache = Path(cache_root) / fingerprint
    if shard is not None:
        try:
            for si, source in enumerate(recipe.data.sources):
                _tokenized(recipe, si, source, tokenizer, cache, shard)
        except BaseException:  # a full disk, a stop signal: no half-written share stays (complete ones do)
            for staging in cache.with_name(cache.name + ".parts").glob(f"source-*/share-{shard[0]}-of-{shard[1]}.tmp"):
                shutil.rmtree(staging, ignore_errors=True)
            raise
        return None, None
    with file_lock(Path(cache_root) / f"{fingerprint}.lock", f"the data mixture {cache}"):  # built once
        if not (cache / "report.json").is_file():
            _build(recipe, tokenizer, cache, fingerprint, quarantine_path)
    report = json.loads((cache / "report.json").read_text())
    if (cache / "quarantine.jsonl").is_file():
        copy_atomic(cache / "quarantine.jsonl", quarantine_path)
    return open_arrow_files(cache / "dataset"), report


def copy_atomic(source: Path, target: Path) -> None:
    """Copy through a temp file and a rename: a full disk leaves no partial copy, nor the temp file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def mixture_fingerprint(recipe: TrainRecipe, tokenizer, template: str) -> str:
    t = recipe.settings
    settings = {
        "seed": recipe.data.seed, "stage": recipe.stage, "template": template, "chat": recipe.chat.model_dump(),
        "max_length": t.max_length, "packing": t.packing, "packing_strategy": t.packing_strategy,
        "assistant_only_loss": t.assistant_only_loss,
        "max_row_bytes": row_byte_limit(recipe), "format": 6,  # 6: BFD breaks ties as TRL does
    }
    return content_fingerprint(recipe.data.sources, tokenizer, settings)


def content_fingerprint(sources: list[Source], tokenizer, settings: dict[str, Any]) -> str:
    """The cache key of data built from `sources`: each source's settings and (for a local file) its
    content, the tokenizer's vocabulary, and every other setting that changes what is built."""
    from pipeline.core.runs import content_hash

    h = hashlib.sha256()
    for source in sources:
        h.update(json.dumps(source.model_dump(), sort_keys=True).encode())
        if classify_input(source.path) == "local":
            h.update(content_hash(Path(source.path).expanduser()).encode())
    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    h.update(hashlib.sha256(vocab).digest() + json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
def _build(recipe: TrainRecipe, tokenizer, cache: Path, fingerprint: str, quarantine_path: Path) -> None:
    """Build the mixture into `<cache>.tmp` and rename it to `cache` when whole. A build that fails (a full
    disk) or is stopped (SIGTERM, Ctrl-C) leaves nothing of its own behind (`_discard_unfinished`)."""
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _build_into(tmp, recipe, tokenizer, cache, fingerprint, quarantine_path)
    except BaseException:
        _discard_unfinished(cache)
        raise


def _discard_unfinished(cache: Path) -> None:
    """Remove what an unfinished build of `cache` left: its staging directory and the intermediates beside
    it (tokenized rows, Arrow copies of local files, datasets' temp and lock files), all but the complete
    shares of `prepare --shard` runs, which the next build uses as they are."""
    shutil.rmtree(cache.with_name(cache.name + ".tmp"), ignore_errors=True)
    parts = cache.with_name(cache.name + ".parts")
    if not parts.is_dir():
        return
    for entry in parts.iterdir():
        if entry.is_dir() and entry.name.startswith("source-"):
            for item in entry.iterdir():
                if not (item.is_dir() and item.name.startswith("share-") and not item.name.endswith(".tmp")):
                    _remove(item)
            if not any(entry.iterdir()):
                entry.rmdir()
        else:
            _remove(entry)
    if not any(parts.iterdir()):
        parts.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _build_into(tmp: Path, recipe: TrainRecipe, tokenizer, cache: Path, fingerprint: str,
                quarantine_path: Path) -> None:
    from datasets import concatenate_datasets

    rng = random.Random(recipe.data.seed)
    max_length = recipe.settings.max_length
    strategy = recipe.settings.packing_strategy if recipe.settings.packing else None
    parts, quarantined, stats = [], [], []
    with open(tmp / "quarantine.jsonl", "w", encoding="utf-8") as quarantine:
        for si, source in enumerate(recipe.data.sources):
            tokenized = _tokenized(recipe, si, source, tokenizer, cache, None)
            good, bad, columns = _split_quarantine(tokenized)
            quarantined.append(write_quarantine(quarantine, source, si, _reasons(bad)))
            try:  # the one budget rule (pipeline/data/reader.py), over the length column
                chosen = budget(source, si, columns["length"].tolist(), rng, quarantined=len(bad),
                                reasons_in=quarantine_path)
            except UserError:
                quarantine.close()
                copy_atomic(tmp / "quarantine.jsonl", quarantine_path)
                raise
            if not chosen:  # an empty source that `allow_empty` accepts
                continue
            stats.append({"source": np.full(len(chosen), si), **{k: v[chosen] for k, v in columns.items()}})
            parts.append(good.select(chosen))
    if not parts:
        raise UserError(f"{recipe._source}: no source has a usable row; nothing to train on")
    mixture = concatenate_datasets(parts)
    order = np.random.default_rng(recipe.data.seed).permutation(len(mixture))
    # the shuffled order as a file: workers that read the mixture map it instead of each receiving a copy
    order_file = cache.with_name(cache.name + ".parts") / "order.arrow"
    order_file.parent.mkdir(parents=True, exist_ok=True)
    mixture = mixture.select(order, indices_cache_file_name=str(order_file))
    del order
    report = _report(recipe, {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}, quarantined,
                     fingerprint)
    (tmp / "dataset").mkdir()
    if strategy:
        # The packed rows are written once, by the map, where the cache keeps them: an explicit file
        # (datasets keeps the output of a map over an in-memory table in memory), and no save_to_disk
        # afterwards (it read every row back through a memory map). Best fit keeps documents whole:
        # the longer ones are cut to max_length as they are packed.
        dataset = pack(mixture, max_length, strategy, num_proc=num_proc(recipe),
                       cache_file_name=str(tmp / "dataset" / "packed.arrow"), truncate=True)
        report["packing"] = {"strategy": strategy, "seq_length": max_length, **packing_stats(dataset, max_length)}
    else:
        dataset = _truncate(mixture, max_length, num_proc(recipe)) if max_length else mixture
        dataset = dataset.select_columns(["input_ids", "labels"]).flatten_indices(
            cache_file_name=str(tmp / "dataset" / "documents.arrow"))
    keep_arrow_files(dataset, tmp / "dataset")
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    if not sum(quarantined):
        (tmp / "quarantine.jsonl").unlink()
    shutil.rmtree(cache, ignore_errors=True)
    parts_dir = cache.with_name(cache.name + ".parts")
    tmp.rename(cache)
    shutil.rmtree(parts_dir, ignore_errors=True)  # tokenized intermediates: the packed dataset is what stays


def _tokenized(recipe: TrainRecipe, si: int, source: Source, tokenizer, cache: Path, shard: tuple[int, int] | None):
    """One source tokenized (all rows, good and bad), from its shares when `prepare --shard` made
    them all, else tokenized here; with `shard`, only that share, saved for the collecting run."""
    from datasets import concatenate_datasets

    parts_dir = cache.with_name(cache.name + ".parts") / f"source-{si}"
    if shard is None:
        shares = _complete_shares(parts_dir)
        if shares:
            return concatenate_datasets([open_arrow_files(p) for p in shares])
    limit = row_byte_limit(recipe)
    # local files' Arrow copies go with the build's other intermediates (dropped when it is built)
    rows, offset = open_source(source, cache.with_name(cache.name + ".parts") / "hf", limit), 0
    if shard is not None:
        i, n = shard
        offset = _shard_offset(len(rows), i, n)
        rows = rows.shard(num_shards=n, index=i, contiguous=True)
    if len(rows) == 0:
        from datasets import Dataset

        return Dataset.from_dict({k: [] for k in TOKENIZED}, features=_features())
    rendering = Rendering(recipe.chat.today_date, recipe.chat.knowledge_cutoff,
                          assistant_only=bool(recipe.settings.assistant_only_loss))
    parts_dir.mkdir(parents=True, exist_ok=True)
    out_dir = parts_dir
    if shard is not None:  # a share is written straight into its staging directory, renamed when whole
        target = parts_dir / f"share-{shard[0]}-of-{shard[1]}"
        out_dir = target.with_name(target.name + ".tmp")
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
    tokenized = rows.map(
        _tokenize_batch, batched=True, batch_size=ROWS_PER_BATCH, with_indices=True,
        cache_file_name=str(out_dir / "tokenized.arrow"),  # on disk, with the build's other intermediates
        fn_kwargs={"tokenizer": tokenizer, "source": source, "si": si, "rendering": rendering, "offset": offset,
                   "keep": kept_length(recipe), "limit": limit, "raw_json": is_raw_json(source)},
        remove_columns=rows.column_names, features=_features(), num_proc=map_procs(num_proc(recipe), len(rows)),
        desc=f"tokenizing {source_label(source.path, source.split, source.name)}"
             + (f" (share {shard[0]}/{shard[1]})" if shard else ""))
    if shard is not None:
        keep_arrow_files(tokenized, out_dir)
        shutil.rmtree(target, ignore_errors=True)
        out_dir.rename(target)
        return open_arrow_files(target)
    return tokenized


def keep_arrow_files(dataset, directory: Path) -> None:
    """Make `directory` hold `dataset` as the Arrow files a map wrote there (no copy), listed in order
    in files.json."""
    names = [Path(entry["filename"]).name for entry in dataset.cache_files]
    outside = [e["filename"] for e in dataset.cache_files if Path(e["filename"]).parent != directory]
    if outside or dataset._indices is not None or not names:
        raise RuntimeError(f"expected the dataset's own Arrow files in {directory}, found {outside or names}")
    (directory / "files.json").write_text(json.dumps(names))


def open_arrow_files(directory: Path):
    """The dataset `keep_arrow_files` left in `directory`, memory-mapped (nothing is read into memory)."""
    from datasets import Dataset, concatenate_datasets

    names = json.loads((directory / "files.json").read_text())
    parts = [Dataset.from_file(str(directory / name)) for name in names]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _complete_shares(parts_dir: Path) -> list[Path]:
    """The shares of one `--shard i/n` job, if all n of them are there; else none."""
    by_n: dict[int, list[Path]] = {}
    for p in parts_dir.glob("share-*-of-*"):
        if p.is_dir() and not p.name.endswith(".tmp"):
            i, n = (int(x) for x in p.name.removeprefix("share-").split("-of-"))
            by_n.setdefault(n, []).append(p)
    for n, found in by_n.items():
        if len(found) == n:
            return sorted(found, key=lambda p: int(p.name.split("-")[1]))
    return []


def _shard_offset(total: int, i: int, n: int) -> int:
    """Row number of share i's first row in its source of `total` rows (quarantine reports source
    row numbers), as `Dataset.shard(n, i, contiguous=True)` splits it."""
    return sum(total // n + (1 if k < total % n else 0) for k in range(i))


def kept_length(recipe: TrainRecipe) -> int | None:
    """Tokens of a document that training sees: max_length, unless wrapped packing splits longer
    documents across rows (then all of them, None)."""
    t = recipe.settings
    wrapped = t.packing and t.packing_strategy == "wrapped"
    return None if wrapped else t.max_length


def _tokenize_batch(batch: dict[str, list], indices: list[int], *, tokenizer, source: Source, si: int,
                    rendering: Rendering, offset: int, raw_json: bool, keep: int | None,
                    limit: int) -> dict[str, list]:
    release_mapped_pages()  # the pages this worker has read do not stay resident (pipeline/data/mapped.py)
    out: dict[str, list] = {key: [] for key in TOKENIZED}
    keys = [k for k in batch if k != "bytes"]
    for j, index in enumerate(indices):
        row, reason, enc, thinking = None, "", {"input_ids": [], "labels": []}, False
        try:
            if raw_json:
                _check_size(batch["bytes"][j] if "bytes" in batch else len(batch[RAW_JSON][j].encode()), limit)
                row = parse_row(batch[RAW_JSON][j])
            else:
                row = {k: batch[k][j] for k in keys}
                _check_size(_text_size(row), limit)
            enc, thinking = encode_row(row, source, tokenizer, rendering)
        except BadRow as e:
            reason = str(e)
        ids = np.asarray(enc["input_ids"], dtype=np.int32)
        labels = np.asarray(enc["labels"], dtype=np.int32)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["trained"].append(int((labels != -100).sum()))
        out["trained_kept"].append(int((labels[:keep] != -100).sum()))
        out["thinking"].append(thinking)
        out["source"].append(si)
        out["row"].append(offset + index)
        out["reason"].append(reason)
    return out


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise BadRow(f"row of {size:,} bytes, over the {limit:,}-byte limit (data.max_row_bytes); not read: split it "
                     "or raise the limit")


def _text_size(row) -> int:
    """Bytes of text a row of a Hub dataset or parquet file holds (its strings, however nested)."""
    size, stack = 0, [row]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            size += len(value.encode())
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return size


def _features():
    from datasets import Features, Sequence, Value

    return Features({k: Sequence(Value(v[1])) if isinstance(v, tuple) else Value(v) for k, v in TOKENIZED.items()})


def _split_quarantine(tokenized):
    """(good rows, quarantined rows, the good rows' length/trained/thinking as numpy arrays), from
    the small columns read once, in file order: the report and the budgets need nothing else."""
    import pyarrow.compute as pc

    table = tokenized.data  # the tokenized files themselves: no indices mapping
    bad = pc.not_equal(table.column("reason"), "").to_numpy(zero_copy_only=False)
    good_rows, bad_rows = np.flatnonzero(~bad), np.flatnonzero(bad)
    columns = {name: table.column(name).to_numpy()[good_rows]
               for name in ("length", "trained", "trained_kept", "thinking")}
    return tokenized.select(good_rows), tokenized.select(bad_rows), columns


def _reasons(bad):
    """(source row, reason) of every quarantined row, read a batch at a time."""
    for batch in bad.select_columns(["row", "reason"]).iter(batch_size=10_000):
        yield from zip(batch["row"], batch["reason"])


def _truncate(dataset, max_length: int, procs: int):
    """Documents cut to `max_length` tokens (only the longer ones change)."""
    def cut(batch):
        release_mapped_pages()
        return {"input_ids": [ids[:max_length] for ids in batch["input_ids"]],
                "labels": [labels[:max_length] for labels in batch["labels"]],
                "length": [min(n, max_length) for n in batch["length"]]}

    return dataset.map(cut, batched=True, batch_size=ROWS_PER_BATCH, num_proc=map_procs(procs, len(dataset)),
                       desc=f"truncating to {max_length}")


def _report(recipe: TrainRecipe, columns: dict[str, np.ndarray], quarantined: list[int],
            fingerprint: str) -> dict[str, Any]:
    """Rows and tokens per source and mode, from the chosen documents' lengths before truncation."""
    source, thinking = columns["source"], np.asarray(columns["thinking"], dtype=bool)
    length, trained = np.asarray(columns["length"], dtype=np.int64), np.asarray(columns["trained"], dtype=np.int64)
    max_length = recipe.settings.max_length
    strategy = recipe.settings.packing_strategy if recipe.settings.packing else None
    n = len(recipe.data.sources)
    rows, tokens = np.bincount(source, minlength=n), np.bincount(source, weights=length, minlength=n)
    trained_by = np.bincount(source, weights=trained, minlength=n)
    kept_by = np.bincount(source, weights=np.asarray(columns["trained_kept"], dtype=np.int64), minlength=n)
    over_by = np.bincount(source, weights=length > max_length, minlength=n) if max_length else np.zeros(n)
    return {
        "fingerprint": fingerprint, "rows": int(len(source)), "quarantined": sum(quarantined),
        "sources": [{"source": s.path, "name": s.name, "split": s.split, "mode": s.mode, "rows": int(rows[i]),
                     "tokens": int(tokens[i]),
                     "trained_tokens": int(trained_by[i]), "trained_tokens_kept": int(kept_by[i]),
                     "quarantined": quarantined[i],
                     "rows_over_max_length": int(over_by[i])}
                    for i, s in enumerate(recipe.data.sources)],
        "modes": {mode: {"rows": int(mask.sum()), "tokens": int(length[mask].sum())}
                  for mode, mask in (("think", thinking), ("no_think", ~thinking)) if mask.any()},
        "max_length": max_length, "rows_over_max_length": int((length > max_length).sum()) if max_length else 0,
        # wrapped packing splits long documents across rows; every other path truncates them
        "over_length_rows_are": "split" if strategy == "wrapped" else "truncated",
    }
