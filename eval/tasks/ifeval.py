"""Instruction following (IFEval): verifiable instructions checked by `if-verifiable`'s checkers.

Prompts: a local or Hub JSONL with IFEval's columns (`prompt`, `instruction_id_list`, `kwargs`;
`google/IFEval` on a machine with Hub access), or, offline, the IFEval-style prompts shipped in
eval/data/ifeval_prompts.jsonl. Scores: strict and loose, prompt level (all instructions of a
prompt pass) and instruction level. `score` is strict prompt level.

Two checkers need NLTK's Punkt sentence model (number of sentences, capital-word frequency), which
cannot be downloaded here. Since nltk 3.9 both of their calls (`nltk.data.load(".../punkt/english.pickle")`
and `word_tokenize`) resolve to the pickle-free `punkt_tab` model, so availability is probed by making
those same two calls, not by looking for the legacy `punkt` pickle. When the model is absent those
instructions are reported as unavailable and left out of the scores, and the count of left-out
instructions is reported; nothing is guessed.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from eval.tasks.base import Example, Task, TaskContext, mean, strip_think

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "ifeval_prompts.jsonl"
NEEDS_PUNKT = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}


@lru_cache(maxsize=1)
def punkt_available() -> bool:
    """Whether the two NLTK calls the checkers make can run. Probed by calling them: which data file
    they need depends on the nltk version (legacy `punkt` pickle before 3.9, `punkt_tab` after)."""
    import nltk

    try:
        nltk.data.load("nltk:tokenizers/punkt/english.pickle").tokenize("One. Two.")
        nltk.word_tokenize("One. Two.")
        return True
    except LookupError:
        return False


class IFEvalTask(Task):
    name = "ifeval"

    def __init__(self, source: str | None = None):
        self.source = source

    def rows(self) -> list[dict]:
        if self.source and not Path(self.source).exists():
            from datasets import load_dataset

            return list(load_dataset(self.source, split="train"))
        path = Path(self.source) if self.source else SHIPPED
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        rows = self.rows()
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        return [Example(id=f"ifeval-{rows[i].get('key', i)}", messages=[{"role": "user", "content": rows[i]["prompt"]}],
                        target={"instruction_id_list": rows[i]["instruction_id_list"], "kwargs": rows[i]["kwargs"]},
                        meta={"prompt": rows[i]["prompt"]})
                for i in (order if n is None else order[:n])]

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        d = self.score_details(example, completion)
        return {"score": d["prompt_strict"], "prompt_strict": d["prompt_strict"], "prompt_loose": d["prompt_loose"],
                "instructions": len(d["instructions"]), "unavailable": d["unavailable"],
                "instructions_strict": sum(i["strict"] for i in d["instructions"]),
                "instructions_loose": sum(i["loose"] for i in d["instructions"])}

    def aggregate(self, examples: list[Example], scores: list[dict[str, float]]) -> dict[str, float]:
        """IFEval's four numbers: prompt level (all of a prompt's instructions pass) and instruction
        level, strict and loose; prompts whose every instruction is unavailable are left out."""
        judged = [s for s in scores if s["instructions"]]
        total = sum(s["instructions"] for s in judged)
        return {"score": mean(s["prompt_strict"] for s in judged),
                "prompt_strict": mean(s["prompt_strict"] for s in judged),
                "prompt_loose": mean(s["prompt_loose"] for s in judged),
                "instruction_strict": round(sum(s["instructions_strict"] for s in judged) / total, 4) if total else None,
                "instruction_loose": round(sum(s["instructions_loose"] for s in judged) / total, 4) if total else None,
                "unavailable_instructions": sum(s["unavailable"] for s in scores)}

    def score_details(self, example: Example, completion: str) -> dict:
        from if_verifiable.common import evaluate_instructions
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

        ids, kwargs = example.target["instruction_id_list"], example.target["kwargs"]
        unknown = [i for i in ids if i not in INSTRUCTION_DICT]
        if unknown:  # if-verifiable silently skips unknown ids; we refuse to score around them
            raise ValueError(f"{example.id}: unknown IFEval instruction ids {unknown}")
        keep = [k for k, i in enumerate(ids) if punkt_available() or i not in NEEDS_PUNKT]
        if not keep:
            return {"prompt_strict": 0.0, "prompt_loose": 0.0, "instructions": [], "unavailable": len(ids)}
        results, _ = evaluate_instructions(strip_think(completion), [ids[k] for k in keep], [kwargs[k] for k in keep],
                                           example.meta["prompt"], INSTRUCTION_DICT)
        return {
            "prompt_strict": float(bool(results) and all(r.strict_pass for r in results)),
            "prompt_loose": float(bool(results) and all(r.loose_pass for r in results)),
            "instructions": [{"id": r.instruction_id, "strict": r.strict_pass, "loose": r.loose_pass} for r in results],
            "unavailable": len(ids) - len(keep),
        }
