"""Loading recipes: YAML, `--set key=value` overrides, and errors that name the file, line and key.

    recipe = load_recipe("recipes/smollm3/sft.yaml", ["training.learning_rate=1e-5"])

A recipe is validated in layers, all before any model or dataset loads, and every problem found
is reported at once as `file: key (line N): what is wrong (what is allowed)`:

1. schema      - the stage's recipe class (pipeline/core/stages.py says which): unknown keys (with a
                 suggestion), wrong types, bad literals;
2. recipe      - the recipe's own `problems()`: for the training stages TRL's arguments (keys, types,
                 ranges, choices, TRL's own checks) and the shared known-bad combinations
                 (pipeline/core/checks.py), then the stage's own rules (its recipe class's `stage_problems()`);
3. stage       - the stage module's own `check(recipe)` (eval task names, synth filters), run by
                 the CLI (`pipeline/cli.py: load`), since the foundation imports no stage.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.errors import UserError
from pipeline.core.redaction import REDACTED, redact_key_lines, remember_secrets, secret_value_start
from pipeline.core.stages import STAGES, recipe_class


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.2); PyYAML's 1.1 rules make it a string,
    and a learning rate of "1e-5" would reach TRL as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


# A recipe is a few KB. YAML aliases (`*name`) repeat a node without repeating its text, so ~1 KB of
# nested aliases can stand for 9**9 strings, which the recipe hash and the checks would then expand
# (measured: 33 s and 1.6 GB, one level more a MemoryError). The composed node graph still shares
# the repeated nodes: its expanded size is counted there, before anything is expanded.
MAX_EXPANDED_CHARS = 1_000_000


class YamlTooLarge(yaml.YAMLError):
    """A document that would expand past MAX_EXPANDED_CHARS, refers to itself, or nests too deep."""


def parse_yaml(text: str):
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlTooLarge("nested too deep to read (thousands of levels)") from None
        if node is None:
            return None
        size = expanded_size(node)
        if size > MAX_EXPANDED_CHARS:
            raise YamlTooLarge(f"its YAML aliases (*name) expand it to {size:,} characters of values, more than the "
                               f"{MAX_EXPANDED_CHARS:,} a recipe may hold (an alias bomb?); write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def expanded_size(root: yaml.Node) -> int:
    """Characters of scalar values (plus one per node) the document holds once every alias is expanded,
    counted on the node graph, where an alias is the same node met again: each node is visited once,
    so counting costs what the text does, whatever the expansion. A node inside itself is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes on the path from the root to the current one
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children) + (
                len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise YamlTooLarge("an alias refers to a node that contains it (a recursive alias); write the values out")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class RecipeError(UserError):
    """A recipe that cannot run. Lists every problem found, each with its key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid recipe ({len(problems)} problem{'s' if len(problems) > 1 else ''})"]
        lines += [f"  {key or '<top level>'}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))



# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] = (), stage: str | None = None):
    """Read, override, validate. Raises RecipeError naming the file, line and key of every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [("", "file not found")])
    text = path.read_text()
    try:
        raw = parse_yaml(text)
    except YamlTooLarge as e:
        raise RecipeError(str(path), [("", f"refused: {e}")]) from None
    except yaml.YAMLError as e:  # its message quotes the bad line, which may hold a secret
        raise RecipeError(str(path), [("", yaml_error_message(e, text))]) from None
    if not isinstance(raw, dict):
        raise RecipeError(str(path), [("", "a recipe is a YAML mapping (key: value)")])
    lines = _key_lines(text)
    for item in overrides:
        _apply_override(raw, item, str(path))
    remember_secrets(raw)  # a message that echoes a token's value (a wrong type, say) must not show it

    source = str(path)
    declared = raw.get("stage")
    if declared is None and "distributed_type" in raw:
        raise RecipeError(source, [("", "an accelerate launcher config (it has distributed_type), not a recipe: "
                                        f"give it to accelerate, `accelerate launch --config_file {path} -m "
                                        "pipeline.cli STAGE --recipe RECIPE`")])
    if declared is None:
        raise RecipeError(source, [("stage", f"required key is missing; one of: {', '.join(STAGES)}")])
    if stage is not None and declared != stage:
        raise RecipeError(source, [("stage", f"this recipe is for stage `{declared}`, not `{stage}`; "
                                             f"run `smolalign {declared} --recipe {path}`")])
    if declared not in STAGES:
        raise RecipeError(source, [("stage", f"got {declared!r}; allowed: {', '.join(STAGES)}")])
    cls = recipe_class(declared)
    try:
        recipe = cls.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(source, _pydantic_problems(e, cls, lines)) from None

    recipe._source, recipe._lines = source, lines
    raise_problems(recipe, recipe.problems(path.parent))
    return recipe


def raise_problems(recipe, problems: list[tuple[str, str]]) -> None:
    """Raise one RecipeError for `problems` ((key path, message) pairs), with the keys' lines."""
    if problems:
        lines = getattr(recipe, "_lines", None) or {}
        raise RecipeError(recipe._source or recipe.name, [(_at(k, lines), m) for k, m in problems])


def recipe_hash(recipe) -> str:
    """sha256 of the resolved recipe, canonical JSON: two runs with equal hashes ran the same recipe."""
    blob = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def yaml_error_message(error: yaml.YAMLError, text: str) -> str:
    """PyYAML's message, without the secrets of the lines it quotes: a quoted line of `text` that holds a
    secret key is not shown at all (PyYAML cuts long lines, so the key may be gone from the quote
    while part of its value is still there); any other secret key's value is cut out."""
    message, lines = f"not valid YAML: {error}", text.splitlines()
    for mark in (getattr(error, "context_mark", None), getattr(error, "problem_mark", None)):
        snippet = mark.get_snippet() if mark is not None else None
        if snippet and mark.line < len(lines) and secret_value_start(lines[mark.line]) is not None:
            message = message.replace(snippet, f"    {REDACTED} (line {mark.line + 1} holds a secret key)")
    return redact_key_lines(message)


def _apply_override(raw: dict, item: str, source: str) -> None:
    """`a.b.0.c=value`: the value is parsed as YAML (so 1e-5, true, [a, b] keep their types)."""
    if "=" not in item:
        raise RecipeError(source, [(item, "an override is key.path=value, e.g. training.learning_rate=1e-5")])
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part)
        if nxt is None:
            nxt = {}
            _set_child(node, part, nxt, ".".join(parts[: i + 1]), source)
        node = nxt
        if not isinstance(node, (dict, list)):
            where = ".".join(parts[: i + 1])
            raise RecipeError(source, [(where, f"--set {key}: this key holds a value, not a mapping")])
    try:
        parsed = parse_yaml(value)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        shown, problem = redact_key_lines(f"--set {item!r}"), redact_key_lines(problem)  # it may hold a secret
        raise RecipeError(source, [(key, f"{shown}: the value is not valid YAML ({problem}); "
                                         "quote it, e.g. --set 'key=\"[1\"'")]) from None
    _set_child(node, parts[-1], parsed, key, source)


def _child(node, part):
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part)


def _set_child(node, part, value, key, source):
    if isinstance(node, list):
        if not (part.isdigit() and int(part) < len(node)):
            raise RecipeError(source, [(key, f"--set: list index {part!r} out of range (list has {len(node)} items)")])
        node[int(part)] = value
    else:
        node[part] = value


def _pydantic_problems(err: ValidationError, cls, lines: dict[str, int]) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc, parent = _keys(cls, [str(p) for p in e["loc"] if not str(p).startswith("function-after")])
        key = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":  # a `kind` that names none of the union's members
            key = f"{key}.kind" if key else "kind"
            msg = f"unknown kind {e['ctx']['tag']!r}; one of: {e['ctx']['expected_tags']}"
        elif e["type"] == "extra_forbidden":
            allowed = list(parent.model_fields) if parent else []
            owners = _stages_with_key(loc[-1]) if len(loc) == 1 else []  # another stage's own setting
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            if owners:
                msg = f"unknown key (a key of the {' and '.join(owners)} recipe, not of this one)"
            else:
                msg = "unknown key" + (f" (did you mean `{hint[0]}`?)" if hint else "")
            msg += f"; allowed here: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg += f" (got {e.get('input')!r})" if not isinstance(e.get("input"), (dict, list)) else ""
        out.append((_at(key, lines), msg))
    return out


def _stages_with_key(key: str) -> list[str]:
    """The stages whose recipe has this top-level key (a stage's own setting put in another's recipe)."""
    return [stage for stage in STAGES if key in recipe_class(stage).model_fields]


def _keys(cls, loc: list[str]) -> tuple[list[str], type[BaseModel] | None]:
    """(`loc` as recipe keys, the model holding its last key). Pydantic's names of union members are not
    keys: "list[str]", or the tag of a tagged union's member (`backend`'s "vllm"), which says the model."""
    keys, model, holder, members_by_tag = [], cls, None, {}
    for part in loc:
        if part in members_by_tag:
            model, members_by_tag = members_by_tag[part], {}
            continue
        if "[" in part:
            continue
        keys.append(part)
        holder = model
        if part.isdigit() or model is None:
            continue  # a list index: its items are of the model the list holds
        field = model.model_fields.get(part)
        members = _models_in(field.annotation) if field else []
        members_by_tag = {_tag(m): m for m in members if _tag(m)} if len(members) > 1 else {}
        model = members[0] if members else None
    return keys, holder


def _tag(model: type[BaseModel]) -> str | None:
    """The one value of a model's `kind: Literal[...]` field (its tag in a union), if it has one."""
    field = model.model_fields.get("kind")
    values = typing.get_args(field.annotation) if field else ()
    return values[0] if len(values) == 1 else None


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside `X | None`, `list[X]`, a union of models (all of them), in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


# ----------------------------------------------------------------------------------------------
# Line numbers for messages: "recipes/x.yaml:12 training.packing_strategy"
# ----------------------------------------------------------------------------------------------
def _key_lines(text: str) -> dict[str, int]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = f"{prefix}.{i}"
                lines[key] = v.start_mark.line + 1
                walk(v, key)

    walk(root, "")
    return lines


def _at(key: str, lines: dict[str, int]) -> str:
    """`key (line N)` with the nearest line we know for the key or one of its parents."""
    parts = key.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line:
            return f"{key} (line {line})"
        parts.pop()
    return key
