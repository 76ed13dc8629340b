"""Small file helpers every stage shares: JSON and JSONL written atomically, JSONL read with errors
that name the file and line, and matplotlib figures saved without a display."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write via a temp file + rename: a reader never sees half a JSON file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: leave no half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """One JSON object a line, written to a temp file and renamed; returns the row count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a JSONL file; blank lines are skipped. A bad line or bad UTF-8 is an error
    naming the file and line, with what to do."""
    path = Path(path)
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                                 "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from None
            except RecursionError:  # [[[[...]]]] thousands deep: the decoder recurses once per level
                raise UserError(f"{path}:{n}: not valid JSON (nested too deep to parse); fix or remove that line") \
                    from None
    return rows


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display on training nodes or CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
