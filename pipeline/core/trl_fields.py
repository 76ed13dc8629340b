"""TRL's config fields as data: what a training stage's `training:` block may hold, read without importing TRL.

    python -m pipeline.core.trl_fields      # regenerate pipeline/core/trl_fields.json from the installed (pinned) TRL

Importing TRL takes seconds (it imports transformers and torch), and `smolalign validate` and `plan` only need
facts about its config classes. This module is the one place those facts come from: for each config class a
training stage names (its recipe's `trl_config`: SFTConfig, DPOConfig, GRPOConfig), every field with

- `type`: the annotation in Python's typing syntax over builtins, `Literal` and `Any`. An enum inside a
  container is written as the `Literal` of its values; a field typed `SomeEnum | str` is written `str`, and its
  enum's values are its choices (transformers turns the string into the enum and refuses any other); a class of
  TRL's, transformers' or accelerate's that a recipe cannot spell (ParallelismConfig) is `Any`;
- `default`: the field's default as JSON (an enum as its value), absent when the field has none;
- `choices`: TRL's own `choices` metadata, else the enum's values, else the values the field's help lists
  after "Possible values are:" (DPOConfig.loss_type documents its losses only there).

The table is generated from the pinned TRL and committed; tests/test_trl_fields.py regenerates it and fails
when it no longer matches (after a TRL upgrade: rerun the command above and commit the new table). Only the
generator imports TRL; readers call `config_fields(name)`.
"""

from __future__ import annotations

import enum
import json
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

TABLE = Path(__file__).resolve().parent / "trl_fields.json"
# every `trl_config` a stage may name (tests/test_trl_fields.py checks); GRPOConfig for prompts-only (RL) stages
CONFIGS = ("SFTConfig", "DPOConfig", "GRPOConfig")
_PLAIN = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict", list: "list", type(None): "None"}


# ----------------------------------------------------------------------------------------------
# Reading the table (no TRL)
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


def config_fields(name: str) -> dict[str, dict[str, Any]]:
    """{field name: {"type", "default"?, "choices"?}} of TRL's config class `name` (e.g. "SFTConfig")."""
    return table()["configs"][name]


def defaults(name: str) -> dict[str, Any]:
    """{field name: default} of the fields of `name` that have one, as JSON values."""
    return {key: field["default"] for key, field in config_fields(name).items() if "default" in field}


@lru_cache(maxsize=256)
def annotation(type_text: str) -> Any:
    """The typing object a table `type` stands for, for pydantic to check a value against. The text comes
    from our own generated table and may name only builtins' types, Literal and Any (nothing else resolves)."""
    names = {"Literal": Literal, "Any": Any, "None": None, **{v: k for k, v in _PLAIN.items() if v != "None"}}
    return eval(type_text, {"__builtins__": {}}, names)  # noqa: S307 (the table's own syntax, see above)


# ----------------------------------------------------------------------------------------------
# Writing the table (imports TRL)
# ----------------------------------------------------------------------------------------------
def generate() -> dict[str, Any]:
    """The table as the installed TRL defines it."""
    import dataclasses
    from importlib.metadata import version

    import trl

    configs = {}
    for name in CONFIGS:
        cls = getattr(trl, name)
        hints = typing.get_type_hints(cls)
        configs[name] = {f.name: _field_entry(cls, f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}
    return {"generated_by": "python -m pipeline.core.trl_fields", "trl": version("trl"),
            "transformers": version("transformers"), "configs": configs}


def _field_entry(cls, field, hint) -> dict[str, Any]:
    import dataclasses

    type_text, enum_choices = _type_text(hint)
    entry: dict[str, Any] = {"type": type_text}
    if field.default is not dataclasses.MISSING:
        entry["default"] = _json_value(field.default)
    elif field.default_factory is not dataclasses.MISSING:
        entry["default"] = _json_value(field.default_factory())
    choices = field.metadata.get("choices") or enum_choices or _choices_in_help(field.metadata.get("help", ""))
    if choices:
        entry["choices"] = [_json_value(c) for c in choices]
        item = re.fullmatch(r"list\[(\w+)\]", type_text)
        if item and _takes_one_item(cls, field.name, entry["choices"][0]):
            entry["type"] = f"{item.group(1)} | {type_text}"
    return entry


def _takes_one_item(cls, name: str, item) -> bool:
    """Whether TRL's config turns one item given for a list field into a one-item list (DPOConfig.loss_type:
    `loss_type: apo_zero`), so that a recipe may write the item alone."""
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return getattr(cls(output_dir=tmp, bf16=False, **{name: item}), name) == [item]
        except (ValueError, TypeError):
            return False


def _type_text(hint) -> tuple[str, list]:
    """(the annotation in the table's syntax, the values of a top-level `SomeEnum | str`'s enum)."""
    members = typing.get_args(hint) if _is_union(hint) else (hint,)
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if enums and str in members:  # transformers converts the string to the enum: the enum's values are the choices
        members = tuple(m for m in members if m not in enums)
        return " | ".join(_member_text(m) for m in members), [e.value for e in enums[0]]
    return " | ".join(_member_text(m) for m in members), []


def _is_union(hint) -> bool:
    import types

    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _member_text(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _PLAIN:
        return _PLAIN[hint]
    if hint is Any:
        return "Any"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"Literal[{', '.join(repr(e.value) for e in hint)}]"
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if _is_union(hint):
        return " | ".join(_member_text(a) for a in args)
    if origin in (list, dict) and args:
        return f"{_PLAIN[origin]}[{', '.join(_member_text(a) for a in args)}]"
    return "Any"  # a class a recipe cannot spell in YAML (accelerate's ParallelismConfig): TRL checks it


def _choices_in_help(help_text: str) -> list[str]:
    """The values a field's help lists in a "Possible values are: `a`, `b`." sentence, if it has one."""
    found = re.search(r"Possible values are:(.*?)\.(?:\s|$)", help_text, re.S)
    return re.findall(r"`'?([A-Za-z0-9_]+)'?`", found.group(1)) if found else []


def _json_value(value) -> Any:
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "value", str(o))))


def render(data: dict[str, Any]) -> str:
    """The table's file text: one field per line, so a TRL upgrade shows as a readable diff."""
    lines = ["{", f'  "generated_by": {json.dumps(data["generated_by"])},', f'  "trl": {json.dumps(data["trl"])},',
             f'  "transformers": {json.dumps(data["transformers"])},', '  "configs": {']
    for i, (name, fields) in enumerate(data["configs"].items()):
        lines.append(f'    {json.dumps(name)}: {{')
        rows = [f'      {json.dumps(key)}: {json.dumps(entry)}' for key, entry in fields.items()]
        lines.append(",\n".join(rows))
        lines.append("    }" + ("," if i < len(data["configs"]) - 1 else ""))
    lines += ["  }", "}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    TABLE.write_text(render(generate()))
    print(f"wrote {TABLE} ({', '.join(f'{n}: {len(f)} fields' for n, f in table()['configs'].items())})")
