"""The one source reader: how every stage draws what it uses from the sources a recipe names (SFT and
mid-training rows, APO pairs, synth prompts, an RL stage's prompts), with one set of rules.

    for si, item in read_sources(sources, parse, rng, quarantine, measure=count_tokens, what="pairs"): ...
    picked = budget(source, si, lengths, rng)     # the same rule over a column of lengths (the Arrow mixture)

The rules, the same for every stage:
- rows come from the one loader (pipeline/data/sources.py); `parse(source, index, row)` turns a row into what
  the stage uses (a pair, a prompt) or raises BadRow, whose message is the row's quarantine reason:
  one line per rejected row in quarantine.jsonl (`write_quarantine`), named by `source_label`;
- a source's budget is its `fraction` of the usable rows (a fraction above 1 upsamples: whole copies,
  then a seeded sample for the rest) or its `tokens`, counted by the stage's `measure` (real tokens from
  the stage's tokenizer; a budget with nothing to count tokens is an error, never a guess);
- a source with no usable row, or a fraction that selects none, stops the run unless `allow_empty`.

The SFT mixture applies `budget` to its tokenized Arrow columns (pipeline/data/mixture.py) instead of
reading Python objects here: it never holds the corpus in memory. `read_sources` keeps memory flat too:
usable items wait in a spool file per source, memory holds an offset and a length per item.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.core.errors import UserError
from pipeline.core.schema import Source, source_label
from pipeline.data.sources import BadRow, iter_rows

Parse = Callable[[Source, int, Any], Any]  # (source, row index, raw row) -> a JSON-serialisable item; raises BadRow


# ----------------------------------------------------------------------------------------------
# Budgets
# ----------------------------------------------------------------------------------------------
def take_fraction(n_rows: int, fraction: float | None, rng: random.Random) -> list[int]:
    """Row indices: whole copies for the integer part of `fraction`, a seeded sample for the rest.

        >>> take_fraction(3, 2.0, random.Random(0))
        [0, 1, 2, 0, 1, 2]
    """
    if fraction is None:
        return list(range(n_rows))
    whole, part = divmod(fraction, 1.0)
    picked = list(range(n_rows)) * int(whole)
    picked += rng.sample(range(n_rows), round(part * n_rows))
    return picked


def take_tokens(lengths: Sequence[int], budget: int, rng: random.Random) -> list[int]:
    """Row indices whose lengths add up to `budget` (the last row may overshoot): a seeded shuffle,
    repeated as often as needed to upsample."""
    if not len(lengths):
        return []
    picked, total = [], 0
    while total < budget:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for i in order:
            if total >= budget:
                break
            picked.append(i)
            total += int(lengths[i])  # a numpy int32 column would overflow past 2^31 tokens
    return picked


def budget(source: Source, si: int, lengths: Sequence[int], rng: random.Random, *, key: str = "data.sources",
           what: str = "rows", quarantined: int = 0, reasons_in: Path | None = None) -> list[int]:
    """Indices (repeated when upsampled) of the usable items source `si` contributes, drawn from `rng`;
    `lengths`: each usable item's tokens (read only for a `tokens` budget). A source that contributes
    nothing is a UserError naming it and what to do, or, with `allow_empty`, [] and a printed line."""
    where = f"{key}.{si} ({source_label(source.path, source.split, source.name)})"
    if not len(lengths):
        if source.allow_empty:
            print(f"{where}: no usable {what}; allowed by `allow_empty`")
            return []
        why = f"all {quarantined} quarantined; reasons in {reasons_in}" if quarantined else "the source has none"
        raise UserError(f"{where}: no usable {what} ({why})")
    if source.tokens is not None:
        return take_tokens(lengths, source.tokens, rng)
    picked = take_fraction(len(lengths), source.fraction, rng)
    if not picked:  # a fraction too small for the source: as empty as a source with no usable row
        problem = f"{where}: fraction {source.fraction:g} of its {len(lengths)} usable {what} selects none"
        if not source.allow_empty:
            raise UserError(f"{problem}; raise it to at least {1 / len(lengths):.2g}, or remove the source")
        print(f"{problem}; allowed by `allow_empty`")
    return picked


# ----------------------------------------------------------------------------------------------
# Quarantine
# ----------------------------------------------------------------------------------------------
def write_quarantine(fh, source: Source, si: int, entries: Iterable[tuple[int, str]]) -> int:
    """Write (row number, reason) entries of source `si` to an open quarantine.jsonl; returns how many.
    One line per rejected row: its source (as reports name it), the source's index, the row, why."""
    count = 0
    label = source_label(source.path, source.split, source.name)
    for row, reason in entries:
        fh.write(json.dumps({"source": label, "source_index": si, "row": row, "reason": reason}) + "\n")
        count += 1
    return count


# ----------------------------------------------------------------------------------------------
# Reading items
# ----------------------------------------------------------------------------------------------
def read_sources(sources: Sequence[Source], parse: Parse, rng: random.Random, quarantine: Path, *,
                 measure: Callable[[Any], int] | None = None, key: str = "data.sources",
                 what: str = "rows") -> Iterator[tuple[int, Any]]:
    """(source index, item) for every item the sources' budgets draw, source by source in recipe order.

    Every row is read (the one loader) and parsed first; the rejected rows go to `quarantine` (written
    whole, through a temp file, before anything is drawn, so that an error can point at it; removed
    when no row is rejected). `measure(item)`: the item's tokens, for `tokens` budgets."""
    for si, source in enumerate(sources):
        if source.tokens is not None and measure is None:
            label = source_label(source.path, source.split, source.name)
            raise UserError(f"{key}.{si} ({label}): a `tokens` budget counts each {what[:-1]}'s tokens, and this "
                            "stage has no tokenizer to count them with; use `fraction` instead")
    quarantine.parent.mkdir(parents=True, exist_ok=True)
    # the spool in the temporary directory (TMPDIR), not beside the quarantine: a run killed while reading
    # leaves nothing in its run directory
    with tempfile.TemporaryDirectory(prefix="smolalign-spool-") as tmp:
        spools = _read_all(sources, parse, measure, Path(tmp), quarantine)
        for si, (source, spool) in enumerate(zip(sources, spools)):
            picked = budget(source, si, spool.lengths, rng, key=key, what=what, quarantined=spool.rejected,
                            reasons_in=quarantine)
            yield from ((si, item) for item in spool.items(picked))


def _read_all(sources: Sequence[Source], parse: Parse, measure, spool_dir: Path, quarantine: Path) -> list[_Spool]:
    """Every source spooled into `spool_dir`; the rejected rows written to `quarantine` whole (a temp file beside
    it, renamed), or no quarantine file when every row is usable."""
    bad = quarantine.with_name(f".{quarantine.name}.{os.getpid()}.tmp")
    try:
        with open(bad, "w", encoding="utf-8") as fh:
            spools = [_spool(source, si, parse, measure, spool_dir / f"source-{si}.jsonl", fh)
                      for si, source in enumerate(sources)]
        if any(spool.rejected for spool in spools):
            os.replace(bad, quarantine)
        else:
            quarantine.unlink(missing_ok=True)
    finally:
        bad.unlink(missing_ok=True)
    return spools


class _Spool:
    """A source's usable items in a JSONL file, with each one's offset and length in memory."""

    def __init__(self, path: Path):
        self.path, self.offsets, self.lengths, self.rejected = path, [], [], 0

    def items(self, picked: list[int]) -> Iterator[Any]:
        with open(self.path, encoding="utf-8") as fh:
            for i in picked:
                fh.seek(self.offsets[i])
                yield json.loads(fh.readline())


def _spool(source: Source, si: int, parse: Parse, measure, path: Path, quarantine) -> _Spool:
    """Every row of `source` parsed: usable items into the spool at `path`, rejected rows (with their
    reasons) into the open `quarantine` file as they come."""
    spool = _Spool(path)
    label = source_label(source.path, source.split, source.name)
    with open(path, "w", encoding="utf-8") as fh:
        for index, row in enumerate(tqdm(iter_rows(source, bad_rows=True), desc=f"reading {label}", leave=False)):
            try:
                if isinstance(row, BadRow):  # a line that is not JSON: quarantined like any other bad row
                    raise row
                item = parse(source, index, row)
            except BadRow as e:
                spool.rejected += write_quarantine(quarantine, source, si, [(index, str(e))])
                continue
            spool.offsets.append(fh.tell())
            spool.lengths.append(measure(item) if source.tokens is not None else 0)
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    return spool
