"""Mode adherence: does the model reason when asked to (/think) and answer directly when asked not to
(/no_think)? Everyday requests, each sent in both modes; no reference implementation exists, so what
each half measures is defined here.

Think half. The generation prompt ends with `<|im_start|>assistant\n`; the completion must be one
think block opening the turn, with reasoning in it, closed, then a non-empty answer (the training
data's rule, `pipeline.core.chat.think_block_problem`). Fails: no block (answered directly), an empty block,
reasoning cut off before `</think>`, a block with nothing after it, a second block, a block not at the
start.

No-think half. Our template writes the empty block `<think>\n\n</think>\n` into the generation prompt,
so the completion is the answer alone. It must be non-empty, contain no `<think>`/`</think>` tag, and
not be reasoning written as prose instead of an answer: it fails when it opens with a reasoning
preamble ("Okay, so the user...", "Alright, let me", "Let me think", "Let's think step by step", "Hmm", "First, I need
to ...", "The user is asking ...") or thinks aloud anywhere ("Wait, ...", "let me double-check",
"let me re-check", "Hmm, ..."). These are the openings and self-corrections of R1/Qwen3-style
reasoning traces, the data that teaches the think mode and leaks into no-think answers; a direct
answer has no use for them.

Reward (training): 1 when the completion follows its mode's rule, else 0: the format reward of each
mode, the same for every prompt (no reference: `needs_reference` is false, and synth's `verify: mode`
keeps the generations that follow the rule). Its rows are the prompts, in the mode asked for.
"""

from __future__ import annotations

import re

from eval.tasks.base import Example, Task, TaskContext, sample_indices
from pipeline.core.chat import THINK_CLOSE, THINK_OPEN, think_block_problem

PROMPTS = [
    "What is the boiling point of water at sea level?", "Name three primary colours.",
    "How many days are in a leap year?", "Give me a synonym for 'happy'.", "What is 15% of 200?",
    "Which planet is closest to the Sun?", "Translate 'thank you' into French.",
    "What is the capital of Canada?", "How many sides does a hexagon have?", "Suggest a name for a cat.",
    "What does CPU stand for?", "Is 91 a prime number?",
]

# How reasoning traces open (start of the answer, case-insensitive).
REASONING_OPENING = re.compile(
    r"^\W*("
    r"(okay|ok|alright|all right|so),? (so|let me|let's|the user|i need|first)"
    r"|hmm+"
    r"|let me (think|see|figure|work|start|recall|check|break)"
    r"|let's (think|see|figure|work|break|start)"
    r"|first,? (i|let me|let's) (need|should|will|have)"
    r"|i need to (figure|think|work|determine|find)"
    r"|the user (is asking|asks|wants|asked|is requesting))\b",
    re.I)
# Thinking aloud anywhere in the answer: self-correction and re-checking.
THINKING_ALOUD = re.compile(
    r"(^|[.!?\n]\s*)(wait|hmm+|hold on),|\blet me (double[- ]check|re-?check|verify|reconsider|think again)\b"
    r"|\bstep by step\b", re.I)


class ModeTask(Task):
    name = "mode"
    needs_reference = False

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        return [Example.from_row(f"mode-{i}", {"prompt": PROMPTS[i]}, target=None)
                for i in sample_indices(len(PROMPTS), n, seed)]

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        return {"score": float(mode_problem(completion, mode) is None)}


def adheres(completion: str, mode: str) -> bool:
    return mode_problem(completion, mode) is None


def mode_problem(completion: str, mode: str) -> str | None:
    """Why the completion does not follow its mode (see the module docstring), or None."""
    text = completion.strip()
    if mode == "think":
        return think_block_problem(text, thinking=True, required=True) if text else "empty completion"
    if not text:
        return "empty answer"
    if THINK_OPEN in text or THINK_CLOSE in text:
        return "no_think mode, but the answer holds a think tag"
    if REASONING_OPENING.search(text):
        return "no_think mode, but the answer opens with reasoning"
    if THINKING_ALOUD.search(text):
        return "no_think mode, but the answer thinks aloud"
    return None
