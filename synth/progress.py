"""What a user plans a long generation by, in the bar and in the run's summary.json: prompts/s,
generated tokens/s, the time left (the bar's ETA), and the share of completions cut at `max_new_tokens`
(a cut trace is teacher time spent on a row the filters drop)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from pipeline.core.summary import Section


class Progress:
    """One model's generation: `update` with each completion as it is stored."""

    def __init__(self, total: int, desc: str, max_new_tokens: int):
        # outside a terminal (a Slurm log) one line a minute, not ten a second for days
        interval = 0.1 if sys.stderr.isatty() else 60
        self.bar = tqdm(total=total, desc=desc, unit="prompt", mininterval=interval, maxinterval=max(interval, 10),
                        dynamic_ncols=True)
        self.max_new_tokens = max_new_tokens
        self.started = time.perf_counter()
        self.prompts = self.tokens = self.cut = 0

    def update(self, completion) -> None:
        self.prompts += 1
        self.tokens += completion.completion_tokens
        self.cut += completion.finish_reason == "length"
        seconds = max(time.perf_counter() - self.started, 1e-9)
        cut = self.cut / self.prompts
        self.bar.set_postfix_str(f"{self.tokens / seconds:.1f} tok/s, cut at max_new_tokens {cut:.1%}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def summary(self) -> dict:
        """{"prompts", "seconds", "prompts_per_s", "tokens_per_s", "completion_tokens", "cut", "cut_share",
        "max_new_tokens"} for what this run generated."""
        seconds = time.perf_counter() - self.started
        return {"prompts": self.prompts, "seconds": round(seconds, 3),
                "prompts_per_s": round(self.prompts / seconds, 3) if seconds else None,
                "tokens_per_s": round(self.tokens / seconds, 2) if seconds else None,
                "completion_tokens": self.tokens, "cut": self.cut,
                "cut_share": round(self.cut / self.prompts, 4) if self.prompts else None,
                "max_new_tokens": self.max_new_tokens}

    def line(self, desc: str) -> str:
        s = self.summary()
        if not s["prompts"]:
            return f"{desc}: nothing to generate"
        return (f"{desc}: {s['prompts']} prompts in {s['seconds']:.0f} s: {s['prompts_per_s']:.2f} prompts/s, "
                f"{s['tokens_per_s']:.1f} generated tokens/s, {s['cut_share']:.1%} cut at max_new_tokens "
                f"({self.max_new_tokens})")


def _generation_lines(section: dict, view) -> list[str]:
    """The report's paragraph: per model, what this run generated and how fast, and the share cut at the limit."""
    lines = []
    for role, took in section["this_run"].items():
        if took.get("prompts"):
            lines.append(f"{role} ({took.get('model')}): {took['prompts']} prompts, {took.get('tokens_per_s')} "
                         f"generated tokens/s, {took.get('cut_share', 0):.1%} cut at max_new_tokens "
                         f"({took.get('max_new_tokens')})")
    stored = section["stored"]
    if stored.get("generations"):
        lines.append(f"stored: {stored['generations']} generations, {stored.get('cut_share') or 0:.1%} cut at "
                     "max_new_tokens")
    return lines


# summary.json's `generation` (synth/stage.py generation_section): {"this_run": {role: {"model", "prompts",
# "seconds", "prompts_per_s", "tokens_per_s", "completion_tokens", "cut", "cut_share", "max_new_tokens"}},
# "stored": {"generations", "cut", "cut_share"}}: what this run generated per model ("teacher", "weak"), and
# over every stored generation (earlier attempts and shards too); "cut" counts completions that hit
# max_new_tokens (teacher time spent on a row the filters drop).
GENERATION = Section("generation", required={"this_run": None, "stored": None}, lines=_generation_lines)
