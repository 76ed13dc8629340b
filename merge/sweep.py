"""Merge-weight sweep: merge at several soup weights, score each merge with eval/ tasks (long
context and reasoning by default), and name the best weight.

Called by the merge stage when the recipe lists `sweep` weights. Writes, under `<run>/sweep/`:
`sweep.json` (every score), `sweep.md` (a table) and `sweep.png` (score against weight, one line
per task and mode, plus the mean). The best weight is the one with the highest mean score (ties go
to the weight nearest the recipe's `soup_weight`); the stage's own output keeps `soup_weight`, so
a rerun is needed to adopt the best one (`--set soup_weight=W`): results stay reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.schema import EvalRecipe
from pipeline.files import pyplot, save_figure


def sweep(recipe, soup: Path, out: Path, merge_at) -> dict:
    """`merge_at(weight, path)` writes the merge at `weight` to `path`."""
    from eval.stage import evaluate_model

    out.mkdir(parents=True, exist_ok=True)
    rows, built = [], {}  # every weight's merge has the same tokenizer and template: its examples are built once
    for weight in sorted(set(recipe.sweep)):
        path = out / f"w{weight:g}"
        merge_at(weight, path)
        eval_recipe = EvalRecipe(name=recipe.name, stage="eval", models=[str(path)], tasks=recipe.sweep_tasks,
                                 modes=recipe.sweep_modes, backend=recipe.backend, sampling=recipe.sampling,
                                 chat=recipe.chat, dtype=recipe.dtype, seed=recipe.seed)
        result = evaluate_model(eval_recipe, str(path), progress=f"[w={weight:g}] ", built=built)
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
