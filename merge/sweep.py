"""Merge-weight sweep: merge at several soup weights, score each merge with eval/ tasks (long
context and reasoning by default), and name the best weight.

Called by the merge stage when the recipe has a `sweep:` block. Each merge is scored by the eval stage's
own code with the eval recipe `sweep.eval` makes (the recipe's eval spec, the merge as its one model: a
field the eval recipe gains reaches the sweep with no edit here). Writes, under `<run>/sweep/`:
`sweep.json` (every score), `sweep.md` (a table) and `sweep.png` (score against weight, one line
per task and mode, plus the mean). The best weight is the one with the highest mean score (ties go
to the weight nearest the recipe's `soup_weight`); the stage's own output keeps `soup_weight`, so
a rerun is needed to adopt the best one (`--set soup_weight=W`): results stay reproducible.
The run's summary.json holds it as its `sweep` section (SWEEP, below: {"rows": [{"weight", "scores":
{"task (mode)": score}, "mean"}], "best_weight", "file": "sweep/sweep.md", "table": its markdown}), which
the eval report shows with the trade-off it finds.
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.schema import EvalRecipe
from pipeline.core.files import pyplot, save_figure
from pipeline.core.summary import Section


def sweep(recipe, soup: Path, out: Path, merge_at) -> dict:
    """`merge_at(weight, path)` writes the merge at `weight` to `path`."""
    from eval.stage import evaluate_model

    out.mkdir(parents=True, exist_ok=True)
    rows, built = [], {}  # every weight's merge has the same tokenizer and template: its examples are built once
    for weight in sorted(set(recipe.sweep.weights)):
        path = out / f"w{weight:g}"
        merge_at(weight, path)
        result = evaluate_model(eval_recipe(recipe, path), str(path), progress=f"[w={weight:g}] ", built=built)
        scores = {f"{task} ({mode})": s["score"]
                  for task, modes in result["tasks"].items() for mode, s in modes.items()}
        rows.append({"weight": weight, "scores": scores, "mean": round(sum(scores.values()) / len(scores), 4)})
        (path / "eval.json").write_text(json.dumps(result, indent=1))
    best = max(rows, key=lambda r: (r["mean"], -abs(r["weight"] - recipe.soup_weight)))
    summary = {"rows": rows, "best_weight": best["weight"], "best_mean": best["mean"],
               "recipe_soup_weight": recipe.soup_weight}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    (out / "sweep.md").write_text(table(summary))
    plot(summary, out / "sweep.png")
    return summary


def eval_recipe(recipe, model: Path) -> EvalRecipe:
    """The eval recipe that scores one merge: the sweep's eval spec, with the merge as its model and the
    merge recipe's name and seed (the seed draws each task's examples)."""
    return EvalRecipe.model_validate({**recipe.sweep.eval.model_dump(), "name": recipe.name, "stage": "eval",
                                      "models": [str(model)], "seed": recipe.seed})


def table(summary: dict) -> str:
    keys = list(summary["rows"][0]["scores"])
    lines = ["| soup weight | " + " | ".join(keys) + " | mean |", "|---" * (len(keys) + 2) + "|"]
    for r in summary["rows"]:
        mark = " **best**" if r["weight"] == summary["best_weight"] else ""
        lines.append(f"| {r['weight']:g}{mark} | " + " | ".join(f"{r['scores'][k]:.3f}" for k in keys)
                     + f" | {r['mean']:.3f} |")
    return "\n".join(lines) + f"\n\nBest weight: {summary['best_weight']:g} (mean {summary['best_mean']:.3f}).\n"


def plot(summary: dict, path: Path) -> None:
    weights = [r["weight"] for r in summary["rows"]]
    fig, ax = pyplot().subplots(figsize=(6, 3.8))
    for key in summary["rows"][0]["scores"]:
        ax.plot(weights, [r["scores"][key] for r in summary["rows"]], marker="o", alpha=0.7, label=key)
    ax.plot(weights, [r["mean"] for r in summary["rows"]], marker="s", color="black", linewidth=2, label="mean")
    ax.axvline(summary["best_weight"], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="soup weight (1 - long-context weight)", ylabel="score", title="merge-weight sweep",
           ylim=(-0.05, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# The sweep in summary.json, and in the eval report
# ----------------------------------------------------------------------------------------------
def sweep_lines(sweep: dict, view=None) -> list[str]:
    """The sweep's table and what it shows: a trade-off between two scores, or none at this scale."""
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


SWEEP = Section("sweep", required={"rows": None, "file": None, "table": None}, glance="merge sweep",
                cell=lambda sweep, view: view.link("sweep", sweep.get("file")), lines=sweep_lines)
