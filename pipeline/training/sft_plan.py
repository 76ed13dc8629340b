"""What `smolalign plan` shows of a recipe that trains on the token-row mixture (sft, and midtrain, which
runs the same stage code): the mixture `prepare` built for it, read from the cache, and what an epoch
holds for the cost; without the built mixture, an estimate from the published sources' sizes.

    smolalign plan recipes/smollm3/sft.yaml        # pipeline/planning/plan.py calls plan() and plan_text()
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.inputs import classify_input
from pipeline.core.schema import source_label
from pipeline.core.stages import PlanSection
from pipeline.core.text import table

# A source whose share of the mixture's trained tokens is under this trains next to nothing: an error.
NEAR_ZERO_SHARE = 0.001


def plan(recipe, planner) -> PlanSection:
    """The mixture's report (tokens per source and mode, trained tokens, pack fill, rows over max_length,
    quarantined rows and their top reasons), a source that trains nothing as a problem, and the epoch."""
    data, problems = mixture_section(recipe, planner)
    max_length = planner.training(recipe).max_length
    return PlanSection(data=data, problems=problems, work=work(recipe, planner, data, max_length))


def mixture_section(recipe, planner) -> tuple[dict[str, Any], list[str]]:
    """The mixture `prepare` built for this recipe: its report, read from the cache."""
    from pipeline.core.models import cache_dir
    from pipeline.data.mixture import mixture_fingerprint

    how = f"build it with `make prepare RECIPE={recipe._source}` (the same cache entry the training stage reads)"
    missing = [s.path for s in recipe.data.sources
               if classify_input(s.path) == "local" and not Path(s.path).expanduser().exists()]
    if missing:  # the cache entry is keyed by the files' content
        return {"status": "unknown", "why": f"not on this machine yet: {', '.join(missing)}", "how": how}, []
    tokenizer, why = planner.tokenizer(recipe)
    if tokenizer is None:
        return {"status": "unknown", "why": why, "how": how}, []
    fingerprint = mixture_fingerprint(recipe, tokenizer, tokenizer.chat_template or "")
    cache = cache_dir() / "mixtures" / fingerprint
    if not (cache / "report.json").is_file():
        return {"status": "not built", "fingerprint": fingerprint, "why": "the mixture cache has no entry for this "
                "recipe and tokenizer", "how": how}, []
    report = json.loads((cache / "report.json").read_text())
    reasons = top_quarantine_reasons(cache / "quarantine.jsonl")
    total_trained = sum(trained_tokens(s) for s in report["sources"])
    for i, s in enumerate(report["sources"]):
        source = recipe.data.sources[i]
        s["label"] = source_label(source.path, source.split, source.name)
        s["trained_share_of_own_tokens"] = trained_tokens(s) / s["tokens"] if s["tokens"] else 0.0
        s["share_of_trained_tokens"] = trained_tokens(s) / total_trained if total_trained else 0.0
        s["top_quarantine_reasons"] = reasons.get(i, [])
    section = {"status": "built", "cache": str(cache), **report}
    return section, trained_problems(report)


def trained_tokens(source: dict[str, Any]) -> int:
    """A source's trained tokens that training sees: those within max_length (reports of older caches
    only have the count before the cut)."""
    return source.get("trained_tokens_kept", source["trained_tokens"])


def trained_problems(report: dict[str, Any]) -> list[str]:
    """A source that trains no token, or under NEAR_ZERO_SHARE of the mixture's trained tokens."""
    total = sum(trained_tokens(s) for s in report["sources"])
    problems = []
    for i, s in enumerate(report["sources"]):
        label, kept = s.get("label") or s["source"], trained_tokens(s)
        if kept == 0 and s["trained_tokens"]:
            problems.append(f"data.sources.{i} ({label}) trains nothing within max_length {report['max_length']}: "
                            f"its {s['trained_tokens']} trained tokens lie past the cut "
                            f"({s.get('rows_over_max_length')} of its rows are longer); raise max_length, shorten "
                            "its rows or remove the source")
        elif kept == 0:
            problems.append(f"data.sources.{i} ({label}) trains nothing: 0 trained tokens from {s['rows']} rows "
                            f"({s['quarantined']} quarantined); fix its rows or remove the source")
        elif total and kept / total < NEAR_ZERO_SHARE:
            problems.append(f"data.sources.{i} ({label}) trains next to nothing: {kept} trained "
                            f"tokens, {kept / total:.3%} of the mixture's "
                            f"(under {NEAR_ZERO_SHARE:.1%}); "
                            "raise its fraction or tokens, or remove it")
    return problems


def top_quarantine_reasons(path: Path, top: int = 3) -> dict[int, list[tuple[str, int]]]:
    """Per source index, its most common quarantine reasons (numbers in a reason read as N, so that
    'message 3 ...' and 'message 7 ...' count together). Read a line at a time."""
    if not path.is_file():
        return {}
    counts: dict[int, Counter] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            entry = json.loads(line)
            counts.setdefault(entry["source_index"], Counter())[re.sub(r"\d+", "N", entry["reason"])] += 1
    return {i: c.most_common(top) for i, c in counts.items()}


def work(recipe, planner, data: dict[str, Any], max_length: int) -> dict[str, Any]:
    """Rows and tokens an epoch holds: from the built mixture (packed rows, or rows cut to max_length), else
    estimated from the sources' sizes."""
    if data.get("status") != "built":
        return estimated_work(recipe, planner, max_length)
    packing = data.get("packing")
    if packing:
        return {"rows_per_epoch": packing["packed_rows"], "tokens_per_epoch": packing["tokens"],
                "span": packing["tokens"] / max(packing["documents"], 1), "work_from": "the built mixture"}
    tokens = sum(min(s["tokens"], max_length * s["rows"]) for s in data["sources"])
    return {"rows_per_epoch": data["rows"], "tokens_per_epoch": tokens,
            "span": tokens / max(data["rows"], 1), "work_from": "the built mixture"}


def estimated_work(recipe, planner, max_length: int) -> dict[str, Any]:
    """An epoch's rows and tokens from each source's known size and the recipe's weight (`fraction`, or a
    `tokens` budget): documents are cut to max_length (unless wrapped packing splits them), packed rows are
    assumed full, and attention runs over each source's mean document length, weighted by its tokens."""
    sized, unknown = planner.sized_sources(recipe)
    if unknown:
        return {"work_from": f"unknown: the size of {', '.join(unknown)} is not known here and the data is not "
                             "built or read"}
    wrapped = recipe.settings.packing and recipe.settings.packing_strategy == "wrapped"
    documents = tokens = spans = 0.0
    for source, size in sized:
        per_document = size["tokens"] / size["rows"]
        kept = per_document if wrapped else min(per_document, max_length)
        n = source.tokens / per_document if source.tokens else size["rows"] * (source.fraction or 1.0)
        documents += n
        tokens += n * kept
        spans += n * kept * kept
    rows = tokens / max_length if recipe.settings.packing else documents
    return {"rows_per_epoch": math.ceil(rows), "tokens_per_epoch": tokens, "span": spans / tokens,
            "work_from": "estimate: each source's size in the smoltalk2 dataset card x the recipe's weights (packed "
                         "rows full; attention over each source's mean document length); the built data gives exact "
                         "figures"}


def plan_text(data: dict[str, Any]) -> list[str]:
    """The mixture section as `smolalign plan` prints it."""
    status = data.get("status")
    if status != "built":
        return [f"\n-- what it trains on: not known yet: {data.get('why', status)}; {data.get('how', '')}"]
    lines = [f"\n-- what it trains on (mixture cache {data['cache']})"]
    rows = [[s["label"], s["mode"], s["rows"], f"{s['tokens']:,}", f"{trained_tokens(s):,}",
             f"{s['trained_share_of_own_tokens']:.1%}", f"{s['share_of_trained_tokens']:.1%}",
             s.get("rows_over_max_length", "?"), s["quarantined"]] for s in data["sources"]]
    lines += table(["source", "mode", "rows", "tokens", "trained", "trained/own", "share of trained",
                    "over max_length", "quarantined"], rows)
    for s in data["sources"]:
        for reason, n in s["top_quarantine_reasons"]:
            lines.append(f"  quarantined {s['label']}: {n} x {reason}")
    for mode, m in sorted(data["modes"].items()):
        lines.append(f"  mode {mode}: {m['rows']} rows, {m['tokens']:,} tokens")
    lines.append(f"  rows longer than max_length {data['max_length']}: {data['rows_over_max_length']} "
                 f"({data['over_length_rows_are']})")
    if data.get("packing"):
        p = data["packing"]
        lines.append(f"  packing {p['strategy']} @ {p['seq_length']}: {p['documents']} documents -> "
                     f"{p['packed_rows']} rows, fill {p['efficiency']:.1%}, "
                     f"trained tokens {p['trained_token_share']:.1%}")
    return lines
