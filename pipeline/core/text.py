"""Plain-text tables for the terminal (`smolalign plan` and the stages' own parts of it).

    table(["key", "ours"], [["training.max_length", 65536]], notes=["why it differs"])
"""

from __future__ import annotations

import json
from typing import Any


def cell(value: Any, width: int = 44, keep_end: bool = False) -> str:
    """A value cut to `width` characters; keys keep their end, where sources differ (their split)."""
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) <= width:
        return text
    return "..." + text[3 - width:] if keep_end else text[: width - 3] + "..."


def table(header: list[str], rows: list[list[Any]], notes: list[str] | None = None) -> list[str]:
    """Aligned columns, indented by two; the first column keeps its end when cut, a row's note goes under it."""
    cells = [[cell(c, 64, keep_end=True) if i == 0 else cell(c) for i, c in enumerate(row)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    for i, row in enumerate(cells):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if notes and notes[i]:
            out.append(f"      why: {notes[i]}")
    return out
