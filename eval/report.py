"""The eval report: every model's scores side by side, what moved from the first model (the starting
point), each stage's outputs, and charts. Written by the eval stage (eval/stage.py) from the per-model
results it saved, into `report.md`, `progress.png`, `<task>_by_length.png` (RULER) and `scores.png`.

For a model that is a run directory, the report reads one file there, the run's `summary.json`
(its sections: pipeline/core/summary.py): the loss trend, the rows per source it trained on (a source
written by a synth run links that run's filter report, from the synth run's own summary), APO's
held-out preference, the merge's inputs and weights and its sweep, and links to the files the summary
lists. It knows no stage's other files and no task by name: a task whose summaries hold `length_<N>` scores gets a
table and a chart by context length.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.files import pyplot, save_figure
from pipeline.core.runs import is_run
from pipeline.core.summary import read_summary


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
    """A short name for a model: a run directory's stage (`runs/demo/sft` -> `sft`), else the reference."""
    path = Path(model)
    return path.name if path.is_dir() else model.removeprefix("embedded:")


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
    """The pipeline left to right: one column per model, a row per score that moved, then for run
    directories of ours their loss curve, the data they trained on and APO's held-out preference."""
    runs = [Path(r["model"]) for r in results]
    lines = ["| | " + " | ".join(f"**{label(r['model'])}**" for r in results) + " |",
             "|---" * (1 + len(results)) + "|"]
    for name, scores in moved_scores(results, tasks, modes):
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in scores) + " |")

    summaries = [read_summary(run) for run in runs]

    def row(name, cell):
        cells = [cell(run, summary) if summary else "" for run, summary in zip(runs, summaries)]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def link(text, run: Path, name: str | None) -> str:
        return f"[{text}]({os.path.relpath(run / name, out)})" if name and (run / name).is_file() else ""

    row("loss curve", lambda run, s: link("loss", run, s.get("loss", {}).get("curve")))
    row("trained on", lambda run, s: link(s["trained_on"]["kind"], run, s["trained_on"]["table"])
        if "trained_on" in s else "")
    row("held-out pairs preferred", lambda run, s: held_out_cell(s))
    row("merge sweep", lambda run, s: link("sweep", run, s.get("sweep", {}).get("file")))
    row("merged from", lambda run, s: merged_cell(s))
    if len(lines) == 2:
        lines.append("| " + f"no score moved by {MOVED} or more" + " |" * len(results))
    return lines


def merged_cell(summary: dict) -> str:
    m = summary.get("merged")
    if not m:
        return ""
    rest = round(1 - m["soup_weight"], 10)
    return f"{m['soup_weight']:g} x soup of {len(m['soup'])} + {rest:g} x `{m['long_context']}`"


def held_out_cell(summary: dict) -> str:
    p = summary.get("held_out")
    return f"{p['start']['accuracy']:.2f} → {p['end']['accuracy']:.2f}" if p else ""


def plot_progress(results, tasks, modes, path: Path) -> None:
    """The models left to right (pipeline order), one line per (task, mode) score that moved."""
    fig, ax = pyplot().subplots(figsize=(max(6, 1.6 * len(results)), 4))
    xs = list(range(len(results)))
    for name, scores in moved_scores(results, tasks, modes):
        ax.plot(xs, scores, marker="o", label=name)
    points = held_out_points(results)
    if points:  # APO's own check: what it moves does not show in generation scores on a few prompts
        ax.plot(*zip(*points), marker="s", linestyle="--", color="black", label="held-out pairs preferred")
    ax.set_xticks(xs, [label(r["model"]) for r in results])
    ax.set(ylabel="score", title="scores that moved, stage by stage", ylim=(-0.05, 1.05))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def held_out_points(results) -> list[tuple[int, float]]:
    """(model index, accuracy) of a run's held-out preference check (its summary's `held_out`): where it
    started, when that model is in the report too, and where it ended."""
    for i, r in enumerate(results):
        p = (read_summary(r["model"]) or {}).get("held_out")
        if p:
            start = [j for j, s in enumerate(results) if Path(s["model"]) == Path(p["start"]["model"])]
            before = [(start[0], p["start"]["accuracy"])] if start else []
            return before + [(i, p["end"]["accuracy"])]
    return []


def stage_outputs(results, out: Path) -> list[str]:
    """For each model that is a run directory: links to the files its summary lists, its loss trend, the
    data it trained on (rows per source, so synthetic rows can be seen reaching SFT and APO), APO's
    held-out preference check and the merge sweep."""
    lines = []
    for r in results:
        run = Path(r["model"])
        summary = read_summary(run)
        if summary is None:
            if is_run(run):  # a run of ours from before summaries (or an unfinished one)
                lines += ["", f"### {label(r['model'])}", "", f"No summary.json in `{run}` (a run made before "
                          "summaries, or not finished): rerun its stage to see its outputs here."]
            continue
        links = [f"[{name}]({os.path.relpath(run / name, out)})" for name in summary.get("outputs", [])
                 if (run / name).is_file()]
        lines += ["", f"### {label(r['model'])}", "", "Outputs: " + ", ".join(links)]
        curve = summary.get("loss", {}).get("curve")
        if curve and (run / curve).is_file():
            lines += ["", f"![{label(r['model'])} loss]({os.path.relpath(run / curve, out)})"]
        lines += (loss_line(summary) + data_lines(summary, out) + preference_lines(summary, run)
                  + merged_lines(summary) + sweep_lines(summary))
    return ["", "## Each stage's outputs"] + lines if lines else []


def loss_line(summary: dict) -> list[str]:
    loss = summary.get("loss")
    if not loss or "window" not in loss:  # a single logged step has a curve but no trend
        return []
    k, trend = loss["window"], "falls" if loss["last"] < loss["first"] else "does not fall"
    return ["", f"Training loss {trend}: mean of the first {k} logged steps {loss['first']:.3f}, of the last {k} "
            f"{loss['last']:.3f} ({loss['steps']} steps)."]


def data_lines(summary: dict, out: Path) -> list[str]:
    """Rows per source the run trained on; a source written by a synth run links that run's filter report
    (how many generations each filter dropped)."""
    data = summary.get("trained_on")
    if not data:
        return []
    rows = ", ".join(f"`{s.get('label', s['source'])}` {s['rows']}{synth_report_link(s['source'], out)}"
                     for s in data["sources"] if isinstance(s, dict) and "source" in s and "rows" in s)
    return ["", f"Trained on ({data['kind']} rows per source): {rows}."]


def synth_report_link(source: str, out: Path) -> str:
    run = Path(source).parent
    report = ((read_summary(run) or {}).get("filters") or {}).get("report")
    if not (report and (run / report).is_file()):
        return ""
    return f" ([synth filters]({os.path.relpath(run / report, out)}))"


def preference_lines(summary: dict, run: Path) -> list[str]:
    p = summary.get("held_out")
    if not p:
        return []
    start, end = p["start"], p["end"]
    return ["", f"Held-out preference pairs (`{p['pairs_file']}`, {end['pairs']} pairs): how often the model "
            "gives the chosen answer a higher log-probability than the rejected one.", "",
            "| model | accuracy | mean log p(chosen) - log p(rejected) |", "|---|---|---|",
            f"| before: `{start['model']}` | {start['accuracy']:.3f} | {start['mean_margin']:.3f} |",
            f"| after: {label(str(run))} | {end['accuracy']:.3f} | {end['mean_margin']:.3f} |", "",
            f"Mean implicit reward margin of the result against the start (beta {p['beta']}): "
            f"{p['reward_margin']:.4f}."]


def merged_lines(summary: dict) -> list[str]:
    """What a merge run merged, with the weights."""
    m = summary.get("merged")
    if not m:
        return []
    soup = ", ".join(f"`{s['path']}` ({s['weight']:g})" for s in m["soup"] if isinstance(s, dict))
    return ["", f"Merged: {m['soup_weight']:g} x the soup of {soup}; {round(1 - m['soup_weight'], 10):g} x "
            f"`{m['long_context']}`."]


def sweep_lines(summary: dict) -> list[str]:
    sweep = summary.get("sweep")
    if not sweep:
        return []
    rows = sweep["rows"]
    lines = ["", "Merge-weight sweep (soup weight against the long-context checkpoint):", "",
             str(sweep["table"]).strip(), ""]
    if not (rows and all(isinstance(r, dict) and isinstance(r.get("scores"), dict) for r in rows)):
        return lines
    pair = trade_off(rows)
    if pair:
        (a, wa), (b, wb) = pair
        return lines + [f"**Trade-off**: {a} is better at soup weight {wa:g}, {b} at {wb:g}; no weight is best "
                        "at both."]
    changed = [k for k in rows[0]["scores"] if len({r["scores"][k] for r in rows}) > 1]
    plain = ("**No trade-off shows at this scale**: " + (
        f"only {', '.join(changed)} changes with the weight, and no other score gets better where it gets worse"
        if changed else "every sweep weight scores the same on these tasks") + ". In the real recipe the 0.1 of "
        "mid-training restores long-context (RULER at 32k-128k) scores that a few demo examples at short "
        "context cannot show.")
    return lines + [plain]


def trade_off(rows: list[dict]):
    """Two scores that the weight moves in opposite directions: ((a, weight a is better at), (b, ...)), or None."""
    keys = list(rows[0]["scores"])
    for a in keys:
        for b in keys:
            for r1 in rows:
                for r2 in rows:
                    if r1["scores"][a] > r2["scores"][a] and r2["scores"][b] > r1["scores"][b]:
                        return (a, r1["weight"]), (b, r2["weight"])
    return None


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
