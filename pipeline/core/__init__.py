"""The foundation: what every stage stands on and no stage owns.

It owns recipes (the shared specs and the training base in schema.py, YAML loading with file:line
errors in recipe.py, TRL argument checks in checks.py), the stage registry (stages.py: the one place
that names the stages, as module paths), what a recipe reads (inputs.py), run directories,
manifests and summaries (runs.py, summary.py), locks, atomic files, text tables (text.py), secret
redaction, user errors, the chat format with its template (chat.py, templates/) and the embedded default
models (models.py).

It may import nothing from the other rooms of pipeline/ (data/, training/, planning/,
generation.py, cli.py) nor from synth/, merge/ or eval/: everything else stands on it.
"""
