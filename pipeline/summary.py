"""summary.json: what one stage run did, in the one file other stages and the eval report read.

Every stage fills `run.summary` while it runs; pipeline/runs.py writes it to `<run>/summary.json`
when the run completes, so every run this version finishes has one (a run made before has none: the
report says so) and a reader (eval/report.py) never needs to know another stage's own files.
Every key but `stage` is optional: a stage writes the sections that mean something for it.

    stage       the stage that wrote it: "sft"
    format      this layout's version: 1
    outputs     files worth opening, relative to the run directory, in reading order:
                ["loss.png", "mixture.txt", "README.md"]
    loss        training stages (pipeline/train.py): {"steps": 24, "window": 10, "first": 2.55,
                "last": 1.15, "curve": "loss.png"}: the mean logged loss over the first and the last
                `window` of the `steps` logged steps (the trend from two logged steps on)
    trained_on  training stages: {"kind": "mixture" | "pairs", "table": "mixture.txt" | "pairs.json",
                "sources": [{"source": "runs/demo/synth-traces/rows.jsonl", "label": the same, with a
                Hub source's config and split, "rows": 5}, ...]}
    held_out    apo with eval_pairs (pipeline/preference.py): {"pairs_file", "beta", "reward_margin",
                "start": {"model", "pairs", "accuracy", "mean_margin"}, "end": {the same, no model}}
    sweep       merge with `sweep:` (merge/sweep.py): {"rows": [{"weight", "scores": {"task (mode)":
                score}, "mean"}], "best_weight", "file": "sweep/sweep.md", "table": its markdown}
    filters     synth (synth/stage.py): {"report": "report.json", "prompts", "rows", "kept",
                "filters": {filter: rows dropped}}
    generation  synth (synth/stage.py, synth/progress.py): {"this_run": {role: {"model", "prompts",
                "seconds", "prompts_per_s", "tokens_per_s", "completion_tokens", "cut", "cut_share",
                "max_new_tokens"}}, "stored": {"generations", "cut", "cut_share"}}: what this run
                generated per model ("teacher", "weak"), and over every stored generation (earlier
                attempts and shards too); "cut" counts completions that hit max_new_tokens
    scores      eval (eval/stage.py): {model: {task: {mode: score}}}, the report in "outputs"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.files import write_json_atomic
from pipeline.sources import source_label

SUMMARY = "summary.json"
FORMAT = 1
LOSS_WINDOW = 10  # logged steps averaged at each end of the loss curve


def loss_section(history: list[dict[str, Any]], curve: str = "loss.png") -> dict[str, Any] | None:
    """`loss` from a trainer's log history: the curve from one logged loss on, the trend from two; None
    without any logged loss."""
    losses = [h["loss"] for h in history if "loss" in h]
    if not losses:
        return None
    if len(losses) < 2:
        return {"steps": 1, "curve": curve}
    k = min(LOSS_WINDOW, len(losses) // 2)
    return {"steps": len(losses), "window": k, "first": sum(losses[:k]) / k, "last": sum(losses[-k:]) / k,
            "curve": curve}


def trained_on_section(kind: str, table: str, report: dict[str, Any]) -> dict[str, Any]:
    """`trained_on` from a mixture or pairs report (rows per source, as pipeline/data.py counts them);
    `label` names the source as every report does (with its Hub config and split), `source` is its path."""
    return {"kind": kind, "table": table,
            "sources": [{"source": s["source"], "label": source_label(s["source"], s.get("split", "train"),
                                                                      s.get("name")), "rows": s["rows"]}
                        for s in report.get("sources", [])]}


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write `summary.json` (atomically: a reader never sees half of it); `format` is added."""
    write_json_atomic(Path(run_dir) / SUMMARY, {"format": FORMAT, **summary})


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's summary, or None where there is none (not a run of ours, a run made before
    summaries) or it cannot be read. A section without the keys a reader needs (a summary written by
    another version, edited by hand) is dropped, with a warning, rather than failing its reader."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(summary, dict) and isinstance(summary.get("stage"), str)):
        return None
    for name, keys in REQUIRED.items():
        section = summary.get(name)
        if section is not None and not _has(section, keys):
            print(f"warning: {path}: section `{name}` lacks some of {', '.join(keys)}; not shown")
            del summary[name]
    outputs = summary.get("outputs", [])
    if not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
        summary["outputs"] = []
    return summary


# What readers index in each section (a nested dict: the keys inside it).
REQUIRED: dict[str, dict[str, Any]] = {
    "loss": {"steps": None, "curve": None},
    "trained_on": {"kind": None, "table": None, "sources": None},
    "held_out": {"pairs_file": None, "beta": None, "reward_margin": None,
                 "start": {"model": None, "accuracy": None, "mean_margin": None},
                 "end": {"pairs": None, "accuracy": None, "mean_margin": None}},
    "sweep": {"rows": None, "file": None, "table": None},
    "filters": {"report": None},
}


def _has(value: Any, keys: dict[str, Any]) -> bool:
    return isinstance(value, dict) and all(k in value and (inner is None or _has(value[k], inner))
                                           for k, inner in keys.items())
