"""The summary.json sections every training stage writes, and how the eval report shows them:

    loss        {"steps": 24, "window": 10, "first": 2.55, "last": 1.15, "curve": "loss.png"}: the mean logged
                loss over the first and the last `window` of the `steps` logged steps (the trend from two
                logged steps on), written by train.py's `finish`
    trained_on  {"kind": "mixture" | "pairs", "table": "mixture.txt" | "pairs.json", "sources": [{"source":
                "runs/demo/synth-traces/rows.jsonl", "label": the same, with a Hub source's config and split,
                "rows": 5}, ...]}, written by each stage from its mixture or pairs report

Each training stage module lists them in its SUMMARY_SECTIONS (pipeline/core/summary.py Section).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.schema import source_label
from pipeline.core.summary import Section

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
    """`trained_on` from a mixture or pairs report (rows per source, as pipeline/data/rows.py counts them);
    `label` names the source as every report does (with its Hub config and split), `source` is its path."""
    return {"kind": kind, "table": table,
            "sources": [{"source": s["source"], "label": source_label(s["source"], s.get("split", "train"),
                                                                      s.get("name")), "rows": s["rows"]}
                        for s in report.get("sources", [])]}


def loss_lines(loss: dict[str, Any], view) -> list[str]:
    """The loss curve, and the trend once two steps are logged."""
    lines = []
    image = view.image(f"{view.label} loss", loss.get("curve"))
    if image:
        lines += ["", image]
    if "window" not in loss:  # a single logged step has a curve but no trend
        return lines
    k, trend = loss["window"], "falls" if loss["last"] < loss["first"] else "does not fall"
    return lines + ["", f"Training loss {trend}: mean of the first {k} logged steps {loss['first']:.3f}, of the last "
                    f"{k} {loss['last']:.3f} ({loss['steps']} steps)."]


def trained_on_lines(data: dict[str, Any], view) -> list[str]:
    """Rows per source the run trained on; a source another run of ours wrote gets what that run offers beside
    it (a generation run: its filter report, how many generations each filter dropped)."""
    rows = ", ".join(f"`{s.get('label', s['source'])}` {s['rows']}{view.source_link(s['source'])}"
                     for s in data["sources"] if isinstance(s, dict) and "source" in s and "rows" in s)
    return ["", f"Trained on ({data['kind']} rows per source): {rows}."]


LOSS = Section("loss", required={"steps": None, "curve": None}, glance="loss curve",
               cell=lambda loss, view: view.link("loss", loss.get("curve")), lines=loss_lines)
TRAINED_ON = Section("trained_on", required={"kind": None, "table": None, "sources": None}, glance="trained on",
                     cell=lambda data, view: view.link(data["kind"], data["table"]), lines=trained_on_lines)
TRAINING_SECTIONS = [LOSS, TRAINED_ON]
