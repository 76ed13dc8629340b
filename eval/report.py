"""The eval report: every model's scores side by side, what moved from the first model (the starting
point), each run's outputs, and charts. Written by the eval stage (eval/stage.py) from the per-model
results it saved, into `report.md`, `progress.png`, `<task>_by_length.png` (RULER) and `scores.png`.

For a model that is a run directory, the report reads one file there, the run's `summary.json`
(pipeline/core/summary.py), and shows each of its sections as the stage that declared it says
(`Section`: a row of the at-a-glance table, a paragraph under the run's outputs, a line on the progress
picture, a link beside a source that another run wrote), plus links to the files the summary lists. It
knows no stage, no section and no stage's other files by name, and no task: a task whose summaries hold
`length_<N>` scores gets a table and a chart by context length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.files import pyplot, save_figure
from pipeline.core.runs import is_run
from pipeline.core.summary import declared_sections, read_summary


def write_report(results: list[dict], out: Path, modes: list[str]) -> str:
    """report.md: the models in the recipe's order (a pipeline: base model first, then each stage),
    every score with its change from the first model, a picture of what moved, and, for models that
    are run directories of ours, links to what each stage wrote (loss curve, mixture, pairs, sweep)."""
    tasks = list(results[0]["tasks"]) if results else []
    header = "| model | " + " | ".join(f"{t} ({m})" for t in tasks for m in modes) + " |"
    lines = ["# Evaluation report", "", header, "|---" * (1 + len(tasks) * len(modes)) + "|"]
    for i, r in enumerate(results):
        cells = [_cell(r["tasks"][t][m], results[0]["tasks"][t][m] if i else None) for t in tasks for m in modes]
        lines.append(f"| `{r['model']}` | " + " | ".join(cells) + " |")
    lines += ["", "Scores are means over examples (0 to 1); in brackets, the change from the first row "
              f"(`{results[0]['model']}`), the starting point.",
              "`(k cut)`: k completions hit max_new_tokens. "
              "Per-example completions and scores: one JSON per model next to this file."]
    if len(results) > 1:
        lines += ["", "## At a glance: the pipeline, stage by stage", "",
                  f"Scores that moved by {MOVED} or more, model by model, and what each stage wrote.", ""]
        lines += glance_table(results, tasks, modes, out) + ["", "![progress](progress.png)"]
        plot_progress(results, tasks, modes, out / "progress.png")
    lines += stage_outputs(results, out)
    for task in by_length_tasks(results, tasks, modes):
        # a long-context benchmark's name is an acronym: RULER, HELMET
        lines += ["", f"## {task.upper()} by task and context length", ""] + length_tables(results, task, modes)
        lines += [f"![{task}]({task}_by_length.png)"]
        plot_by_length(results, task, modes, out / f"{task}_by_length.png")
    lines += ["", "## Scores by task", "", "![tasks](scores.png)"]
    plot_scores(results, tasks, modes, out / "scores.png")
    lines += details(results, tasks, modes)
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


MOVED = 0.1  # a (task, mode) score "moved" when its range over the models is at least this


def label(model: str) -> str:
    """A short name for a model: a run directory's last part (`runs/demo/<stage>` -> `<stage>`), else the
    reference."""
    path = Path(model)
    return path.name if path.is_dir() else model.removeprefix("embedded:")


@dataclass(frozen=True)
class RunView:
    """A model of the report that may be a run directory, as a summary section's functions see it."""

    model: str  # as the eval recipe names it
    out: Path  # the report's directory: links are relative to it

    @property
    def run(self) -> Path:
        return Path(self.model)

    @property
    def label(self) -> str:
        return label(self.model)

    def link(self, text: str, name: str | None) -> str:
        """A markdown link to one of the run's files, "" when there is no such file."""
        if not (name and (self.run / name).is_file()):
            return ""
        return f"[{text}]({os.path.relpath(self.run / name, self.out)})"

    def image(self, alt: str, name: str | None) -> str:
        link = self.link(alt, name)
        return "!" + link if link else ""

    def source_link(self, source: str) -> str:
        """What the run that wrote a data file offers beside it (a section's `source_link`), as " ([text](file))"."""
        run = Path(source).parent
        summary = read_summary(run) or {}
        for section in declared_sections():
            has = section.source_link and summary.get(section.key)
            offered = section.source_link(summary[section.key]) if has else None
            if offered and offered[1] and (run / offered[1]).is_file():
                return f" ([{offered[0]}]({os.path.relpath(run / offered[1], self.out)}))"
        return ""


def moved_scores(results, tasks, modes) -> list[tuple[str, list[float]]]:
    """("task (mode)", its score per model) for every score whose range over the models is MOVED or more;
    a None (the task could not run for a model) never moves."""
    out = []
    for t in tasks:
        for m in modes:
            scores = [r["tasks"][t][m]["score"] for r in results]
            if None not in scores and max(scores) - min(scores) >= MOVED:
                out.append((f"{t} ({m})", scores))
    return out


def glance_table(results, tasks, modes, out: Path) -> list[str]:
    """The pipeline left to right: one column per model, a row per score that moved, then a row per summary
    section that has one (a run's loss curve, the data it trained on, ...), for the run directories of ours."""
    lines = ["| | " + " | ".join(f"**{label(r['model'])}**" for r in results) + " |",
             "|---" * (1 + len(results)) + "|"]
    for name, scores in moved_scores(results, tasks, modes):
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in scores) + " |")
    summaries = [read_summary(r["model"]) or {} for r in results]
    views = [RunView(r["model"], out) for r in results]
    for section in declared_sections():
        if not (section.glance and section.cell):
            continue
        cells = [section.cell(s[section.key], view) if s.get(section.key) else ""
                 for s, view in zip(summaries, views)]
        if any(cells):
            lines.append(f"| {section.glance} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        lines.append("| " + f"no score moved by {MOVED} or more" + " |" * len(results))
    return lines


def plot_progress(results, tasks, modes, path: Path) -> None:
    """The models left to right (pipeline order), one line per (task, mode) score that moved."""
    fig, ax = pyplot().subplots(figsize=(max(6, 1.6 * len(results)), 4))
    xs = list(range(len(results)))
    for name, scores in moved_scores(results, tasks, modes):
        ax.plot(xs, scores, marker="o", label=name)
    for i, (name, points) in enumerate(progress_points(results).items()):  # a run's own measure of its progress
        ax.plot(*zip(*points), marker="s", linestyle="--", color="black" if i == 0 else None, label=name)
    ax.set_xticks(xs, [label(r["model"]) for r in results])
    ax.set(ylabel="score", title="scores that moved, stage by stage", ylim=(-0.05, 1.05))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def progress_points(results) -> dict[str, list[tuple[int, float]]]:
    """{line: [(model index, value)]} for each summary section that draws a line on the progress picture (a
    run's own measure, such as held-out preference: where it started, when that model is in the report too,
    and where the run ended); the first run that has a line draws it."""
    out: dict[str, list[tuple[int, float]]] = {}
    for i, r in enumerate(results):
        summary = read_summary(r["model"]) or {}
        for section in declared_sections():
            if not (section.progress and summary.get(section.key)):
                continue
            name, points = section.progress(summary[section.key])
            if name in out:
                continue
            placed = []
            for model, value in points:
                where = [i] if model is None else [j for j, s in enumerate(results) if Path(s["model"]) == Path(model)]
                placed += [(where[0], value)] if where else []
            if placed:
                out[name] = placed
    return out


def stage_outputs(results, out: Path) -> list[str]:
    """For each model that is a run directory: links to the files its summary lists, then each of its
    sections as its stage shows it (the data it trained on, per source, so synthetic rows can be seen
    reaching training; the loss trend; the stage's own checks)."""
    lines = []
    for r in results:
        run = Path(r["model"])
        summary = read_summary(run)
        if summary is None:
            if is_run(run):  # a run of ours from before summaries (or an unfinished one)
                lines += ["", f"### {label(r['model'])}", "", f"No summary.json in `{run}` (a run made before "
                          "summaries, or not finished): rerun its stage to see its outputs here."]
            continue
        view = RunView(r["model"], out)
        links = [view.link(name, name) for name in summary.get("outputs", []) if (run / name).is_file()]
        lines += ["", f"### {label(r['model'])}", "", "Outputs: " + ", ".join(links)]
        for section in declared_sections():
            if section.lines and summary.get(section.key):
                lines += section.lines(summary[section.key], view)
    return ["", "## Each stage's outputs"] + lines if lines else []


SUMMARY_KEYS = {"score", "n", "truncated", "examples"}


def details(results: list[dict], tasks: list[str], modes: list[str]) -> list[str]:
    """Every number a task reports beyond its headline (IFEval's four, RULER per length and sub-task,
    ...), one table per task: a row per model and mode."""
    lines = []
    for task in tasks:
        keys = []
        for r in results:
            for mode in modes:
                keys += [k for k, v in r["tasks"][task][mode].items()
                         if k not in SUMMARY_KEYS and k not in keys and not isinstance(v, dict)]
        if not keys:
            continue
        lines += ["", f"## {task}: details", "", "| model | mode | " + " | ".join(keys) + " |",
                  "|---" * (2 + len(keys)) + "|"]
        for r in results:
            for mode in modes:
                summary = r["tasks"][task][mode]
                cells = [_value(summary.get(k)) for k in keys]
                lines.append(f"| `{r['model']}` | {mode} | " + " | ".join(cells) + " |")
    return lines


def by_length_tasks(results: list[dict], tasks: list[str], modes: list[str]) -> list[str]:
    """The tasks that score by context length (a `length_<N>` key in a model's summary: RULER)."""
    return [t for t in tasks if any(k.startswith("length_") for r in results for m in modes for k in r["tasks"][t][m])]


def length_tables(results: list[dict], task: str, modes: list[str]) -> list[str]:
    """A table per model and mode, as RULER reports it: the task's sub-tasks x lengths, each sub-task's
    metric, the mean per length; then the sub-tasks that could not run here and why."""
    lines = []
    for r in results:
        for mode in modes:
            summary = r["tasks"][task][mode]
            lengths = sorted(int(k.removeprefix("length_")) for k in summary if k.startswith("length_"))
            header = "| task | metric | " + " | ".join(map(str, lengths)) + " | mean |"
            lines += [f"`{r['model']}`, {mode}:", "", header, "|---" * (3 + len(lengths)) + "|"]
            for sub, by_length in summary.get("by_task_length", {}).items():
                cells = " | ".join(_value(by_length.get(str(k))) for k in lengths)
                lines.append(f"| {sub} | {summary.get('metric', {}).get(sub, '')} | {cells} | "
                             f"{_value(summary.get(sub))} |")
            lines.append("| **mean** | | " + " | ".join(_value(summary[f"length_{k}"]) for k in lengths)
                         + f" | {_value(summary['score'])} |")
            lines += [f"- {sub}: **unavailable**: {why}" for sub, why in summary.get("unavailable", {}).items()]
            lines.append("")
    return lines


def _value(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cell(summary: dict, start: dict | None = None) -> str:
    cut = f" ({summary['truncated']} cut)" if summary["truncated"] else ""
    score, base = summary["score"], start["score"] if start is not None else None
    delta = f" ({score - base:+.3f})" if isinstance(score, float) and isinstance(base, float) else ""
    return f"{_value(score)}{delta}{cut}"


def plot_by_length(results, task: str, modes, path: Path) -> None:
    fig, axes = pyplot().subplots(1, len(modes), figsize=(5.5 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for r in results:
            summary = r["tasks"][task][mode]
            by_length = {int(k.removeprefix("length_")): v for k, v in summary.items() if k.startswith("length_")}
            xs = sorted(by_length)
            ax.plot(xs, [by_length[x] for x in xs], marker="o", label=Path(r["model"]).name or r["model"])
        ax.set(xscale="log", xlabel="context length (tokens)", ylabel=f"{task} score", title=f"{task}, {mode}",
               ylim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_scores(results, tasks, modes, path: Path) -> None:
    fig, axes = pyplot().subplots(1, len(modes), figsize=(5.5 * len(modes), 3.8), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, mode in zip(axes[0], modes):
        for i, r in enumerate(results):
            xs = [t + i * width for t in range(len(tasks))]
            scores = [r["tasks"][t][mode]["score"] for t in tasks]  # None: nothing could run (RULER qa offline)
            ax.bar(xs, [float("nan") if x is None else x for x in scores], width=width,
                   label=Path(r["model"]).name or r["model"])
        ax.set_xticks([t + width * (len(results) - 1) / 2 for t in range(len(tasks))], tasks)
        ax.set(ylabel="score", title=f"tasks, {mode}", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    save_figure(fig, path)
