"""The house is readable from the bottom up: pipeline/ imports no stage package, each room of pipeline/
imports only the rooms below it (ROOMS), the stage packages stand on the foundation, the data path and
generation, and no module imports, directly or through others, a module that imports it back."""

import ast
import re
import typing
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("pipeline", "synth", "merge", "eval", "rl")

# The rooms of pipeline/, bottom up, each with the rooms it may import besides itself (the docstrings
# of pipeline/__init__.py and of each room's package say the same). A room is a package
# (pipeline/core/) or a module of its own (pipeline/generation.py).
ROOMS: dict[str, set[str]] = {
    "core": set(),  # the foundation
    "data": {"core"},  # the data path
    "generation": {"core"},  # backends shared by synth/, merge/ and eval/
    "training": {"core", "data"},  # the training stages
    "planning": {"core", "data", "training"},  # `smolalign plan`
    "cli": {"core", "data", "generation", "training", "planning"},  # the top: `smolalign`
}
STAGES_STAND_ON = {"core", "data", "generation"}  # what synth/, merge/ and eval/ may import of pipeline/
# rl/ trains on the rewards of eval's tasks: it also stands on pipeline/training/ (the trainer's arguments, resume
# and finish it shares with sft and apo), and is the one package that imports both; nothing imports it.
STANDS_ON = {"rl": STAGES_STAND_ON | {"training"}}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """First-party modules `path` imports, at module level or inside functions (lazy imports count:
    they still tie the two modules together)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c` imports the module a.b.c when there is one, else names of a.b
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {i for i in imports(path, known) if i in known and i != name} for name, path in known.items()}


def test_foundation_imports_no_stage_package():
    upward = {(module, imported) for module, targets in graph().items() if module.startswith("pipeline")
              for imported in targets if not imported.startswith("pipeline")}
    assert upward == set(), f"pipeline/ imports stage packages: {sorted(upward)}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_imports():
    """The two tests above would pass vacuously on a parser that found nothing."""
    edges = graph()
    assert "pipeline.core.chat" in edges["pipeline.generation"] and "pipeline.core.runs" in edges["eval.stage"]
    assert "eval.tasks" in edges["merge.stage"]


def room(module: str) -> str | None:
    """The room of a module of pipeline/ (`pipeline.data.rows` -> `data`); None for pipeline/__init__.py
    and for a module in no room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def test_every_pipeline_module_sits_in_a_room():
    loose = sorted(m for m in modules() if m.startswith("pipeline.") and room(m) is None)
    assert loose == [], f"modules of pipeline/ in no room (put each in one of {sorted(ROOMS)}): {loose}"


def test_each_room_imports_only_the_rooms_below_it():
    wrong = sorted(f"{module} ({room(module)}/) imports {imported} ({room(imported)}/)"
                   for module, targets in graph().items() if module.startswith("pipeline.")
                   for imported in targets if imported.startswith("pipeline.")
                   and room(imported) != room(module) and room(imported) not in ROOMS.get(room(module), set()))
    assert wrong == [], "a room imports a room above it or beside it: " + "; ".join(wrong)


def test_stage_packages_stand_on_the_foundation_data_and_generation():
    """synth/, merge/ and eval/ use the foundation, the data path and generation, never a training
    stage, the planner or the CLI: what they share with those lives in a room below. rl/ also uses what
    the training stages share (STANDS_ON)."""
    wrong = sorted(f"{module} imports {imported}" for module, targets in graph().items()
                   if not module.startswith("pipeline") for imported in targets if imported.startswith("pipeline.")
                   and room(imported) not in STANDS_ON.get(module.split(".")[0], STAGES_STAND_ON))
    assert wrong == [], wrong


def test_nothing_imports_the_rl_stage():
    """rl/ sits on top of training and eval; the registry reaches it by its module path, nothing else imports it
    (eval importing it back would tie the evaluation to a training stage)."""
    wrong = sorted(f"{module} imports {imported}" for module, targets in graph().items()
                   if not module.startswith("rl") for imported in targets if imported.startswith("rl"))
    assert wrong == [], wrong
    assert "pipeline.training.train" in graph()["rl.stage"] and "eval.tasks" in graph()["rl.prompts"]


def test_each_room_says_what_it_owns_and_may_import():
    """Each room package opens with a docstring naming the rooms it may import (ROOMS), so that the
    docstring and this test say the same."""
    for name, allowed in ROOMS.items():
        init = REPO / "pipeline" / name / "__init__.py"
        if not init.is_file():  # a room that is one module (generation.py, cli.py)
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "owns" in doc and "may import" in doc, f"{init}: say what the room owns and what it may import"
        missing = [r for r in sorted(allowed) if f"pipeline/{r}/" not in doc and f"pipeline/{r}.py" not in doc]
        assert missing == [], f"{init}: its docstring does not name {missing}, which ROOMS lets it import"


def test_the_room_checks_see_violations(tmp_path, monkeypatch):
    """The room tests above fail on a house that breaks them (so their silence means something): the
    foundation importing the data path, a module in no room, a stage package importing a training stage."""
    files = {
        "pipeline/__init__.py": "",
        "pipeline/core/__init__.py": "",
        "pipeline/core/summary.py": "from pipeline.data.sources import source_label\n",
        "pipeline/data/__init__.py": "",
        "pipeline/data/sources.py": "def source_label(path):\n    return path\n",
        "pipeline/training/__init__.py": "",
        "pipeline/training/sft.py": "def run(): pass\n",
        "pipeline/stray.py": "",
        "synth/__init__.py": "",
        "synth/stage.py": "def f():\n    from pipeline.training import sft  # lazy imports count\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for package in ("merge", "eval"):
        (tmp_path / package).mkdir()
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    with pytest.raises(AssertionError, match=r"pipeline\.core\.summary \(core/\) imports pipeline\.data\.sources"):
        test_each_room_imports_only_the_rooms_below_it()
    with pytest.raises(AssertionError, match=r"\['pipeline\.stray'\]"):
        test_every_pipeline_module_sits_in_a_room()
    with pytest.raises(AssertionError, match=r"synth\.stage imports pipeline\.training\.sft"):
        test_stage_packages_stand_on_the_foundation_data_and_generation()
    with pytest.raises(AssertionError, match="say what the room owns"):
        test_each_room_says_what_it_owns_and_may_import()


def test_the_foundation_branches_on_no_recipe_type():
    """pipeline/ never asks which recipe it holds (`isinstance(recipe, SomeRecipe)`) and names no stage's
    recipe class: a recipe says what it reads (`inputs()`) and what it gets wrong (`problems()`)."""
    from pipeline.core.stages import STAGES

    stage_classes = {spec.schema.split(":")[1] for spec in STAGES.values() if not spec.schema.startswith("pipeline.")}
    assert stage_classes >= {"SynthRecipe", "MergeRecipe", "EvalRecipe"}
    found = []
    for name, path in modules().items():
        if not name.startswith("pipeline"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                found += [f"{name}: isinstance(..., {k.id})" for k in kinds
                          if isinstance(k, ast.Name) and k.id.endswith("Recipe")]
            if isinstance(node, ast.Name) and node.id in stage_classes:
                found.append(f"{name}: names {node.id}")
            if isinstance(node, ast.ClassDef) and node.name in stage_classes | {"FilterSpec"}:
                found.append(f"{name}: defines {node.name}")
    assert found == [], found


def test_every_stage_schema_sits_beside_its_stage():
    """The registry's recipe class of each stage lives in the package of the module that runs it, and
    is the class that validates that stage's recipes."""
    from pipeline.core.schema import RecipeBase
    from pipeline.core.stages import STAGES, recipe_class

    for stage, spec in STAGES.items():
        schema_module = spec.schema.split(":")[0]
        assert schema_module.split(".")[0] == spec.module.split(".")[0], stage
        assert schema_module in modules() and spec.module in modules(), stage
        cls = recipe_class(stage)
        assert stage in typing.get_args(cls.model_fields["stage"].annotation), stage
        assert cls.inputs is not RecipeBase.inputs, f"{stage}: its recipe does not say what it reads"


def test_the_foundation_compares_no_stage_name():
    """pipeline/ never asks which stage it runs (`recipe.stage == "apo"`, `stage in ("midtrain", "sft")`,
    `stage.startswith("synth")`): what differs between stages is asked of the recipe (`trains_on`,
    `trl_config`) or of the registry (`shards`, a stage module's `prepare`). The registry names them."""
    from pipeline.core.stages import STAGES

    def named(node, prefix: bool = False) -> list[str]:
        parts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        texts = [p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str) and p.value]
        return [t for t in texts if any(s.startswith(t) if prefix else s == t for s in STAGES)]

    found = []
    for module, path in modules().items():
        if not module.startswith("pipeline") or module == "pipeline.core.stages":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                found += [f"{module}:{node.lineno} compares with {n!r}"
                          for side in [node.left, *node.comparators] for n in named(side)]
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("startswith", "endswith"):
                found += [f"{module}:{node.lineno} {node.func.attr}({n!r})"
                          for a in node.args for n in named(a, prefix=True)]
    assert found == [], found


def test_the_stage_name_check_sees_a_comparison(tmp_path, monkeypatch):
    """The test above finds the comparisons it forbids (so its silence means something)."""
    source = 'def f(recipe):\n    return recipe.stage in ("midtrain", "sft") or recipe.stage.startswith("synth")\n'
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "bad.py").write_text(source)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    with pytest.raises(AssertionError, match="compares with 'midtrain'.*startswith\\('synth'\\)"):
        test_the_foundation_compares_no_stage_name()


def test_the_report_reads_each_run_through_its_summary_and_knows_no_task_by_name():
    """eval/report.py reads a run's summary.json (pipeline/core/summary.py) and the files the summary names,
    never another stage's own files, and special-cases no task."""
    from pipeline.core.stages import STAGES

    others = {"manifest.json", "log_history.json", "mixture.json", "mixture.txt", "pairs.json", "preference.json",
              "sweep.json", "sweep.md", "report.json", "loss.png", "ruler", "ifeval", "math", "tools", "mode"}
    texts = {node.value for node in ast.walk(ast.parse((REPO / "eval" / "report.py").read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    named = {t for t in texts if t in others | set(STAGES) or any(t.endswith("/" + o) for o in others)}
    assert named == set(), f"eval/report.py names {sorted(named)}"


# The modules every stage goes through, which must know none of them (issue 31): each with the stages it
# belongs to itself (the report is the eval stage's own output).
SHARED: dict[str, set[str]] = {"pipeline/planning/plan.py": set(), "pipeline/core/summary.py": set(),
                               "eval/report.py": {"eval"}}


def stage_knowledge(own: set[str]) -> dict[str, set[str]]:
    """What naming a stage looks like in code, for a module that belongs to the stages `own`: a stage's name
    (or its family, `synth` of `synth-traces`), a key of a summary section a stage declares, and a recipe
    field that only some stages have (APO's `ref_model`, synth's `prompts`), all found through the registry."""
    from pipeline.core import schema
    from pipeline.core.stages import STAGES, recipe_class
    from pipeline.core.summary import declared_sections

    shared_fields = {f for cls in vars(schema).values() if isinstance(cls, type) and issubclass(cls, schema.Strict)
                     for f in cls.model_fields}
    own_fields = {f for stage in own for f in recipe_class(stage).model_fields}
    return {
        "a stage name": {w for stage in STAGES if stage not in own for w in (stage, stage.split("-")[0])},
        "a stage's summary section": {s.key for s in declared_sections()},
        "a stage's own recipe field": {f for stage in STAGES for f in recipe_class(stage).model_fields
                                       if f not in shared_fields | own_fields},
    }


def names_in(path: Path) -> tuple[set[str], set[str]]:
    """(the words of every identifier, string and docstring, lowercased; every key the module reads or
    writes by name: `x.key`, `x["key"]`, `x.get("key")`, `hasattr(x, "key")`, `{"key": ...}`)."""
    words, keys = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        texts = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts = [node.value]
        elif isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts, keys = [node.attr], keys | {node.attr}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            texts = [node.arg]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            texts = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
        words |= {w.lower() for text in texts for w in re.split(r"[^A-Za-z0-9]+|_", text) if w}
        keys |= {k.value for k in _keys_named(node) if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return words, keys


def _keys_named(node) -> list:
    if isinstance(node, ast.Subscript):
        return [node.slice]
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None]
    if isinstance(node, ast.Call) and node.args:
        if getattr(node.func, "attr", None) in ("get", "pop", "setdefault"):
            return node.args[:1]
        if getattr(node.func, "id", None) in ("hasattr", "getattr"):
            return node.args[1:2]
    return []


def stage_knowledge_in_shared_modules() -> list[str]:
    found = []
    for relative, own in SHARED.items():
        words, keys = names_in(REPO / relative)
        for what, names in stage_knowledge(own).items():
            hits = (words if what == "a stage name" else keys) & names
            found += [f"{relative} names {what}: {name}" for name in sorted(hits)]
    return found


def test_the_plan_the_summary_and_the_report_name_no_stage():
    """plan.py, summary.py and eval/report.py go through every stage and know none: no stage's name (in
    code, strings or docstrings), no key of a section a stage declares, no field of a stage's own recipe.
    What a stage shows of itself, it declares in its module (`plan`, `plan_text`, `SUMMARY_SECTIONS`)."""
    found = stage_knowledge_in_shared_modules()
    assert found == [], found


def test_the_stage_knowledge_check_sees_a_stage_named(tmp_path, monkeypatch):
    """The test above finds each kind of naming it forbids (so its silence means something)."""
    files = {
        "pipeline/planning/plan.py": '"""Synth: prompts x modes."""\ndef mixture(recipe):\n'
                                     '    if recipe.stage == "apo":\n        return recipe.ref_model\n'
                                     '    return hasattr(recipe, "weak")\n',
        "pipeline/core/summary.py": 'REQUIRED = {"held_out": {"beta": None}}\n',
        "eval/report.py": 'def merge_cell(summary):\n    return summary.get("sweep"), summary["tasks"]\n',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    found = stage_knowledge_in_shared_modules()
    plan, summary, report = (f"{name} names" for name in files)
    assert set(found) == {f"{plan} a stage name: synth", f"{plan} a stage name: apo",
                          f"{plan} a stage's own recipe field: ref_model", f"{plan} a stage's own recipe field: weak",
                          f"{summary} a stage's summary section: held_out", f"{report} a stage name: merge",
                          f"{report} a stage's summary section: sweep", f"{report} a stage's own recipe field: sweep"}
    # not `tasks`: a field of the eval's own recipe, which the report belongs to


def test_each_summary_section_is_declared_once():
    """Stages that share a section (the training stages' `loss`) declare the same one; two different
    declarations of one key would leave the report showing one of them for both."""
    from pipeline.core.stages import STAGES, stage_module

    by_key: dict[str, set[int]] = {}
    for stage in STAGES:
        for section in getattr(stage_module(stage), "SUMMARY_SECTIONS", ()):
            by_key.setdefault(section.key, set()).add(id(section))
    assert by_key and {k for k, ids in by_key.items() if len(ids) > 1} == set()


# What only the one source reader (pipeline/data/reader.py) does: draw a source's budget. A stage that samples
# or cuts its sources' rows itself has budgets of its own again (synth read `fraction` only, APO guessed tokens).
BUDGET_CALLS = {"take_fraction", "take_tokens"}
READER = "pipeline.data.reader"


def budget_calls(path: Path) -> list[str]:
    """`name:line` of every call of a budget function in a module."""
    calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]
    named = [(getattr(call.func, "attr", getattr(call.func, "id", None)), call.lineno) for call in calls]
    return [f"{name}:{line}" for name, line in named if name in BUDGET_CALLS]


def test_one_source_reader_draws_every_budget():
    found = {name: calls for name, path in modules().items() if name != READER and (calls := budget_calls(path))}
    assert found == {}, f"budgets drawn outside {READER}: {found}; read the sources with read_sources or budget"


def test_the_budget_check_sees_a_budget_drawn(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from pipeline.data import reader\ndef f(rng):\n    return reader.take_fraction(3, 2.0, rng)\n")
    assert budget_calls(module) == ["take_fraction:3"]
