"""The APO preference pairs: drawn from the recipe's sources by the one source reader (the same budgets,
quarantine and labels as the SFT mixture; a `tokens` budget counts real tokens), cached by content.

    dataset, report = build_preference_mixture(recipe, tokenizer, cache_root, quarantine_path)  # the APO stage
    rows, report = preference_rows(recipe, tokenizer, quarantine_path)                        # `smolalign plan`

A pair's tokens are those the trainer puts through the model: the prompt with the chosen answer plus the
prompt with the rejected one, rendered by the stage's tokenizer and template with the pair's own
chat_template_kwargs. The dataset lands in `<cache>/<fingerprint>/` (sources and their content, the
tokenizer, the template, the chat settings, the seed), as the SFT mixture does: a second run, or a
second rank, of the same recipe reads it instead of reading the sources again.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.schema import Source, TrainRecipe
from pipeline.data.mixture import content_fingerprint, copy_atomic
from pipeline.data.reader import read_sources
from pipeline.data.rows import preference_row

COLUMNS = ("prompt", "chosen", "rejected", "chat_template_kwargs")  # what TRL's DPO trainer reads


def build_preference_mixture(recipe: TrainRecipe, tokenizer, cache_root: Path, quarantine_path: Path):
    """(conversational preference `datasets.Dataset` for TRL's DPO trainer, report dict), built once per
    fingerprint under `cache_root`.

    Each row carries its own chat_template_kwargs (mode and the recipe's fixed date), which TRL
    passes to the template per example. `chosen` must be a valid turn for the row's mode; `rejected`
    only needs to be a non-empty assistant turn (a malformed answer is a fine thing to push down)."""
    from datasets import load_from_disk

    from pipeline.core.models import file_lock

    fingerprint = pairs_fingerprint(recipe, tokenizer)
    cache = Path(cache_root) / fingerprint
    with file_lock(Path(cache_root) / f"{fingerprint}.lock", f"the preference pairs {cache}"):  # built once
        if not (cache / "report.json").is_file():
            _build(recipe, tokenizer, cache, fingerprint, quarantine_path)
    if (cache / "quarantine.jsonl").is_file():
        copy_atomic(cache / "quarantine.jsonl", quarantine_path)
    return load_from_disk(str(cache / "dataset")), json.loads((cache / "report.json").read_text())


def pairs_fingerprint(recipe: TrainRecipe, tokenizer) -> str:
    template = tokenizer.chat_template or ""
    settings = {"seed": recipe.data.seed, "stage": recipe.stage, "template": template,
                "chat": recipe.chat.model_dump(), "format": "pairs-1"}
    return content_fingerprint(recipe.data.sources, tokenizer, settings)


def _build(recipe: TrainRecipe, tokenizer, cache: Path, fingerprint: str, quarantine_path: Path) -> None:
    """Build into `<cache>.tmp` and rename it when whole: a failed or stopped build leaves no entry."""
    from datasets import Dataset

    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        rows, report = preference_rows(recipe, tokenizer, quarantine_path)  # errors point at the run's file
        if quarantine_path.is_file():
            copy_atomic(quarantine_path, tmp / "quarantine.jsonl")
        Dataset.from_list([{k: r[k] for k in COLUMNS} for r in rows]).save_to_disk(str(tmp / "dataset"))
        (tmp / "report.json").write_text(json.dumps({"fingerprint": fingerprint, **report}, indent=2))
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def preference_rows(recipe: TrainRecipe, tokenizer, quarantine_path: Path) -> tuple[list[dict[str, Any]],
                                                                                   dict[str, Any]]:
    """(the budgeted, shuffled pairs, each with its `source` index and `thinking`, report dict): what
    build_preference_mixture trains on, and what `smolalign plan` counts and measures."""
    rng = random.Random(recipe.data.seed)

    def parse(source: Source, index: int, row: Any) -> dict[str, Any]:
        return preference_row(recipe, source, row)

    rows = [{**pair, "source": si} for si, pair in read_sources(recipe.data.sources, parse, rng, quarantine_path,
                                                                 measure=pair_tokens(tokenizer), what="pairs")]
    rng.shuffle(rows)
    if not rows:
        raise UserError(f"{recipe._source}: no usable preference pairs; see {quarantine_path}")
    quarantined = _quarantined(quarantine_path)
    count, modes = Counter(r["source"] for r in rows), Counter("think" if r["thinking"] else "no_think" for r in rows)
    report = {"rows": len(rows), "quarantined": sum(quarantined.values()), "modes": dict(modes),
              "sources": [{"source": s.path, "name": s.name, "split": s.split, "mode": s.mode, "rows": count[i],
                           "quarantined": quarantined[i]} for i, s in enumerate(recipe.data.sources)]}
    return rows, report


def pair_tokens(tokenizer):
    """A pair's tokens as training sees them: prompt + chosen and prompt + rejected, each rendered whole."""
    def measure(pair: dict[str, Any]) -> int:
        return sum(len(tokenizer.apply_chat_template(pair["prompt"] + pair[answer], tokenize=True, return_dict=True,
                                                     **pair["chat_template_kwargs"])["input_ids"])
                   for answer in ("chosen", "rejected"))
    return measure


def _quarantined(path: Path) -> Counter:
    """Rejected rows per source index, from a quarantine.jsonl (none when there is no file)."""
    if not path.is_file():
        return Counter()
    with open(path, encoding="utf-8") as fh:
        return Counter(json.loads(line)["source_index"] for line in fh)
