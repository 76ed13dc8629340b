"""The rl stage's summary.json sections, and how the eval report shows them:

    rewards          from the trainer's log history (TRL's lines, with the per-completion metrics of
                     rl/rewards.py averaged into them): per logged step, the weighted reward, each task's reward
                     and each mode's format, completion length and share cut at max_completion_length;
                     {"steps": [1, 2, ...], "series": {"reward": [...], "task/ifeval/think": [...],
                     "format/think": [...], "length/think": [...], "cut/think": [...], ...},
                     "window": 5, "first": {name: mean of the first window}, "last": {...}, "curve": "rewards.png"}
    held_out_reward  rl/held_out.py's report: the held-out prompts' task reward and format adherence before
                     training (the starting checkpoint) and after, per task and mode
    trained_on       the prompts per source (pipeline/training/sections.py), from prompts.json

A series holds None where a step logged no value for it (a batch without that task or mode).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.files import pyplot, save_figure
from pipeline.core.summary import Section
from pipeline.training.sections import TRAINED_ON

WINDOW = 5  # logged steps averaged at each end of a curve
PREFIXES = ("task/", "format/", "length/", "cut/")


def rewards_section(history: list[dict[str, Any]], curve: str = "rewards.png") -> dict[str, Any] | None:
    """The `rewards` section from a trainer's log history; None when no step logged a reward."""
    logged = [h for h in history if "reward" in h and "step" in h]
    if not logged:
        return None
    names = ["reward"] + sorted({k for h in logged for k in h if k.startswith(PREFIXES)})
    series = {name: [_number(h.get(name)) for h in logged] for name in names}
    k = min(WINDOW, max(1, len(logged) // 2))
    return {"steps": [h["step"] for h in logged], "series": series, "window": k,
            "first": {n: _mean(v[:k]) for n, v in series.items()},
            "last": {n: _mean(v[-k:]) for n, v in series.items()},
            "curve": curve}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None  # NaN is no value


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def plot_rewards(section: dict[str, Any], path, title: str) -> None:
    """Left: the weighted reward, each task's reward and each mode's format over the steps; right: completion
    length per mode."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 3.8))
    steps = section["steps"]
    for name, values in section["series"].items():
        points = [(s, v) for s, v in zip(steps, values) if v is not None]
        if not points:
            continue
        axis = right if name.startswith("length/") else left if not name.startswith("cut/") else None
        if axis is not None:
            axis.plot(*zip(*points), marker="o", markersize=2, label=name,
                      linewidth=2.5 if name == "reward" else 1.2)
    left.set(xlabel="step", ylabel="mean reward", title=f"{title}: rewards")
    right.set(xlabel="step", ylabel="tokens", title="completion length")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    save_figure(fig, path)


def _trend(section: dict[str, Any], name: str) -> str:
    first, last = section["first"].get(name), section["last"].get(name)
    if first is None or last is None:
        return "n/a"
    return f"{first:.2f} → {last:.2f}" if not name.startswith("length/") else f"{first:.0f} → {last:.0f}"


def rewards_lines(section: dict[str, Any], view) -> list[str]:
    lines = []
    image = view.image(f"{view.label} rewards", section.get("curve"))
    if image:
        lines += ["", image]
    k, n = section["window"], len(section["steps"])
    lines += ["", f"Rewards during training (mean of the first {k} logged steps → of the last {k}, {n} steps): "
              f"reward {_trend(section, 'reward')}."]
    modes = sorted({name.split("/")[-1] for name in section["series"] if name.startswith("format/")})
    tasks = sorted({name.split("/")[1] for name in section["series"] if name.startswith("task/")})
    if modes:
        lines += ["", "| | " + " | ".join(f"/{m}" for m in modes) + " |", "|---" * (1 + len(modes)) + "|"]
        for row, prefix in [*((f"{t} reward", f"task/{t}/") for t in tasks), ("format", "format/"),
                            ("completion tokens", "length/"), ("cut at the limit", "cut/")]:
            lines.append(f"| {row} | " + " | ".join(_trend(section, prefix + m) for m in modes) + " |")
    return lines


REWARDS = Section("rewards", required={"steps": None, "series": None, "first": None, "last": None},
                  glance="reward (first → last steps)", cell=lambda s, view: _trend(s, "reward"), lines=rewards_lines)


HELD_OUT_LABEL = "held-out reward"


def held_out_cell(section: dict[str, Any], view) -> str:
    start, end = section["start"]["reward"], section["end"]["reward"]
    return f"{start:.2f} → {end:.2f}" if start is not None and end is not None else ""


def held_out_lines(section: dict[str, Any], view) -> list[str]:
    start, end = section["start"], section["end"]
    lines = ["", f"Held-out prompts (`{section['file']}`, {section['prompts']} prompts, greedy, at most "
             f"{section['max_new_tokens']} new tokens), before training (`{start['model']}`) → after:", "",
             "| task | mode | reward | format | cut at the limit |", "|---|---|---|---|---|"]
    for task, modes in end["tasks"].items():
        for mode, after in modes.items():
            before = start["tasks"].get(task, {}).get(mode, {})
            cells = [_pair(before.get(k), after.get(k)) for k in ("reward", "format", "cut")]
            lines.append(f"| {task} | {mode} | " + " | ".join(cells) + " |")
    return lines


def _pair(before, after) -> str:
    if before is None or after is None:
        return "–"
    return f"{before:.2f} → {after:.2f} ({after - before:+.2f})"


def held_out_progress(section: dict[str, Any]) -> tuple[str, list[tuple[str | None, float]]]:
    """Where the held-out reward started (the starting model, where the report has it) and where it ended."""
    points = [(section["start"]["model"], section["start"]["reward"]), (None, section["end"]["reward"])]
    return HELD_OUT_LABEL, [(model, value) for model, value in points if value is not None]


HELD_OUT_REWARD = Section("held_out_reward", required={"file": None, "prompts": None,
                                                       "start": {"model": None, "reward": None, "tasks": None},
                                                       "end": {"reward": None, "tasks": None}},
                          glance=HELD_OUT_LABEL, cell=held_out_cell, lines=held_out_lines, progress=held_out_progress)

SECTIONS = [REWARDS, HELD_OUT_REWARD, TRAINED_ON]
