"""synth's prompts: drawn from `prompts.sources` by the one source reader (pipeline/data/reader.py), so
that a prompt source keeps the budgets, quarantine and labels of a training source; the synth stages
(synth/stage.py) generate from them and `smolalign plan` (synth/plan.py) counts them.

    prompts = load_prompts(recipe, quarantine_path)     # [{"id", "messages", "template", "reference"[, "copy"]}]
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from pipeline.core.inputs import hub_errors
from pipeline.core.models import resolve_model
from pipeline.data.reader import read_sources
from pipeline.data.rows import BadRow, prompt_of
from pipeline.generation import Renderer, Request


def load_prompts(recipe, quarantine: Path) -> list[dict]:
    """[{"id", "messages", "template", "reference"}]: drawn from `prompts.sources` by the one source reader
    (pipeline/data/reader.py: the same budgets, quarantine and labels as training rows) and normalised as
    training rows are (pipeline.data.rows.prompt_of): the conversation up to the turn the model writes,
    with its tool calls and tool results, and in `template` the row's tools and custom instructions;
    `reference`, what `verify:` checks against: the row's `reference` (an eval task's training rows carry
    one) or its `answer`. A row that is not a conversation, or repeats an earlier prompt, goes to
    `quarantine` with the reason. A prompt drawn again (a fraction above 1, a token budget larger than the
    source) is a `copy` of it with an id and a work key of its own: another sample, not the same one twice."""
    seen: set[str] = set()

    def parse(source, index, row) -> dict:
        messages, template = prompt_of(row)
        identity = messages if not template else {"messages": messages, "template": template}
        pid = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        if pid in seen:  # the same prompt twice would only be generated twice
            raise BadRow("the same prompt as an earlier row (it is generated once)")
        seen.add(pid)
        reference = row.get("reference") if row.get("reference") is not None else row.get("answer")
        return {"id": pid, "messages": messages, "template": template, "reference": reference}

    sources = recipe.prompts.sources
    measure = prompt_tokens(recipe) if any(s.tokens is not None for s in sources) else None
    prompts, copies = [], Counter()
    for _, prompt in read_sources(sources, parse, random.Random(recipe.prompts.seed), quarantine, measure=measure,
                                  key="prompts.sources", what="prompts"):
        copy = copies[prompt["id"]]
        copies[prompt["id"]] += 1
        prompts.append({**prompt, "id": f"{prompt['id']}-{copy}", "copy": copy} if copy else prompt)
    if quarantine.is_file():
        with open(quarantine, encoding="utf-8") as fh:
            first, count = json.loads(fh.readline()), 1 + sum(1 for _ in fh)
        print(f"warning: {count} prompt row(s) quarantined; the first: {first['source']} row {first['row']}: "
              f"{first['reason']}")
    return prompts[:recipe.max_prompts] if recipe.max_prompts else prompts


def prompt_tokens(recipe):
    """A prompt's tokens, for `tokens` budgets: the prompt as the teacher is sent it (its template, the
    recipe's first mode, the row's tools and instructions), counted by the teacher's tokenizer."""
    from transformers import AutoTokenizer

    with hub_errors(recipe.teacher.name_or_path, "teacher.name_or_path"):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(recipe.teacher.name_or_path),
                                                  revision=recipe.teacher.revision)
    render, thinking = Renderer(tokenizer), recipe.modes[0] == "think"

    def measure(prompt: dict) -> int:
        text = render(Request.of(prompt["messages"], prompt["template"], thinking))
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return measure
