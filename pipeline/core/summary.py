"""summary.json: what one stage run did, in the one file other stages and the evaluation report read.

Every stage fills `run.summary` while it runs; pipeline/core/runs.py writes it to `<run>/summary.json`
when the run completes, so every run this version finishes has one (a run made before has none: the
report says so) and a reader (the evaluation report) never needs to know another stage's own files.

    stage       the stage that wrote it
    format      this layout's version: 1
    outputs     files worth opening, relative to the run directory, in reading order:
                ["loss.png", "mixture.txt", "README.md"]
    <section>   the stage's own sections, each a JSON object

Every key but `stage` is optional: a stage writes the sections that mean something for it. It declares
them in its module, `SUMMARY_SECTIONS` (a list of `Section`, below, with the layout of each): what a
reader indexes in the section, and how the evaluation report shows it. This module names no section and no
stage: it checks a summary's sections against what the registered stages (pipeline/core/stages.py)
declare, so a stage that adds a section edits nothing here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.core.files import write_json_atomic
from pipeline.core.stages import STAGES, Stage, stage_module

SUMMARY = "summary.json"
FORMAT = 1


@dataclass(frozen=True)
class Section:
    """A section of summary.json, declared by the stage that writes it, and how the evaluation report shows it.

    Each function takes the section (a dict) and a `view` of the run, which the report gives (RunView):
    `view.run` (its directory), `view.label` (its short name), `view.link(text, file)` and
    `view.image(alt, file)` (markdown pointing at one of the run's files, "" when it is not there), and
    `view.source_link(path)` (what the run that wrote a data file offers beside it, below).
    """

    key: str  # its key in summary.json
    # What readers index in it, {key: None, or the keys inside}: a section without them (written by another
    # version, edited by hand) is dropped with a warning rather than failing its reader.
    required: dict[str, Any] = field(default_factory=dict)
    glance: str = ""  # its row in the report's at-a-glance table (a cell per model), with `cell` filling it
    cell: Callable[[dict, Any], str] | None = None
    lines: Callable[[dict, Any], list[str]] | None = None  # its paragraph under the run's outputs
    # A line on the report's progress picture: (its label, [(model, value)]): the model as the report names it
    # (a run directory, a Hub ID), None for this run; a point whose model is not in the report is left out.
    progress: Callable[[dict], tuple[str, list[tuple[str | None, float]]]] | None = None
    # For a run that trains on a file this run wrote: (text, file of this run) linked beside that source.
    source_link: Callable[[dict], tuple[str, str] | None] | None = None


def declared_sections() -> list[Section]:
    """Every section the registered stages declare, in pipeline order, each key once (the training stages
    share theirs). tests/test_layout.py checks that no two stages declare one key differently."""
    return _declared(tuple(STAGES.items()))


@lru_cache(maxsize=8)
def _declared(stages: tuple[tuple[str, Stage], ...]) -> list[Section]:
    out: dict[str, Section] = {}
    for name, _ in stages:
        for section in getattr(stage_module(name), "SUMMARY_SECTIONS", ()):
            out.setdefault(section.key, section)
    return list(out.values())


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write `summary.json` (atomically: a reader never sees half of it); `format` is added."""
    write_json_atomic(Path(run_dir) / SUMMARY, {"format": FORMAT, **summary})


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's summary, or None where there is none (not a run of ours, a run made before
    summaries) or it cannot be read. A declared section without the keys its readers index is dropped,
    with a warning, rather than failing its reader."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(summary, dict) and isinstance(summary.get("stage"), str)):
        return None
    for section in declared_sections():
        value = summary.get(section.key)
        if value is not None and not _has(value, section.required):
            print(f"warning: {path}: section `{section.key}` lacks some of {', '.join(section.required)}; not shown")
            del summary[section.key]
    outputs = summary.get("outputs", [])
    if not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
        summary["outputs"] = []
    return summary


def _has(value: Any, keys: dict[str, Any]) -> bool:
    return isinstance(value, dict) and all(k in value and (inner is None or _has(value[k], inner))
                                           for k, inner in keys.items())
