"""The table of TRL's config fields (pipeline/core/trl_fields.json): it is what the pinned TRL defines, `validate`
reads it without importing TRL, and what only TRL can judge is still judged before anything loads."""

import json
import os
import subprocess
import sys
import tempfile
import typing
import warnings
from enum import Enum

import pytest
from conftest import REPO, run_cli, sft_recipe

from pipeline.core import trl_fields
from pipeline.core.stages import STAGES, recipe_class


def test_the_table_is_what_the_pinned_trl_defines():
    """Regenerated from the installed TRL, the table must equal the committed file."""
    assert trl_fields.render(trl_fields.generate()) == trl_fields.TABLE.read_text(), (
        "pipeline/core/trl_fields.json no longer matches the installed TRL: run "
        "`python -m pipeline.core.trl_fields` and commit the new table")


def test_the_table_has_every_config_a_training_stage_names():
    named = {getattr(recipe_class(stage), "trl_config", None) for stage in STAGES} - {None}
    assert named and named <= set(trl_fields.table()["configs"]) == set(trl_fields.CONFIGS)


def test_the_table_lists_every_field_trl_accepts_with_its_default():
    import dataclasses

    import trl

    for name in trl_fields.CONFIGS:
        fields = {f.name: f for f in dataclasses.fields(getattr(trl, name))}
        table = trl_fields.config_fields(name)
        assert set(table) == set(fields), name
        defaults = trl_fields.defaults(name)
        for key in ("learning_rate", "max_length", "max_completion_length"):  # GRPOConfig has no max_length
            if key in fields:
                assert defaults[key] == fields[key].default, (name, key)


@pytest.mark.parametrize("config", trl_fields.CONFIGS)
def test_an_enum_fields_choices_are_exactly_what_trl_accepts(config):
    """Fields typed `SomeEnum | str` (schedulers, strategies, optimizers): TRL builds its config with every
    choice of the table and refuses any other string, as validate does."""
    import trl

    cls = getattr(trl, config)
    hints = typing.get_type_hints(cls)
    enum_fields = [key for key, hint in hints.items()
                   if any(isinstance(a, type) and issubclass(a, Enum) for a in typing.get_args(hint))
                   and str in typing.get_args(hint)]
    assert {"lr_scheduler_type", "save_strategy", "optim"} <= set(enum_fields)
    for key in enum_fields:
        choices = trl_fields.config_fields(config)[key]["choices"]
        for value in choices:  # an eval strategy: the plateau and greedy schedulers need one
            build(cls, **{"eval_strategy": "steps", "eval_steps": 1, key: value})
        with pytest.raises(ValueError):
            build(cls, **{key: "not-a-choice"})


def build(cls, **kwargs):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(output_dir=tmp, bf16=False, **kwargs)


def test_one_loss_name_stands_for_a_list_of_one_as_trl_reads_it():
    """DPOConfig.loss_type is a list; TRL turns `loss_type: apo_zero` into ["apo_zero"], and the table says so."""
    import trl

    field = trl_fields.config_fields("DPOConfig")["loss_type"]
    assert field["type"] == "str | list[str]" and "apo_zero" in field["choices"]
    assert build(trl.DPOConfig, loss_type="apo_zero").loss_type == ["apo_zero"]


def test_validate_imports_neither_trl_nor_torch():
    """A fresh interpreter (the process boundary is the point: what `smolalign validate` imports)."""
    code = ("import sys; from pipeline.cli import main; rc = main(['validate', *sys.argv[1:]]); "
            "print(sorted(m for m in ('trl', 'torch', 'transformers') if m in sys.modules)); sys.exit(rc)")
    shipped = [str(p) for p in sorted((REPO / "recipes").glob("*/*.yaml")) if p.parent.name != "accelerate"]
    out = subprocess.run([sys.executable, "-c", code, *shipped], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok    ") == len(shipped) and out.stdout.splitlines()[-1] == "[]"


def test_what_only_trl_judges_is_judged_by_validate_trl_and_before_a_run_loads_anything(
        write_recipe, tmp_path, monkeypatch, capfd):
    """A cross-field rule of TRL's own (a plateau scheduler needs an eval strategy): plain validate cannot
    see it without TRL; `validate --trl` and the stage itself refuse it in one line, before any model loads."""
    body = sft_recipe()
    body["training"]["lr_scheduler_type"] = "reduce_lr_on_plateau"
    path = write_recipe(body)
    monkeypatch.setenv("SMOLALIGN_CACHE", str(tmp_path / "cache"))  # the embedded model would be built here
    at = 1 + path.read_text().splitlines().index("  lr_scheduler_type: reduce_lr_on_plateau")
    refusal = (f"training.lr_scheduler_type (line {at}): TRL refuses it: lr_scheduler_type reduce_lr_on_plateau "
               "requires an eval strategy")
    assert run_cli(monkeypatch, capfd, "validate", str(path)).returncode == 0
    checked = run_cli(monkeypatch, capfd, "validate", "--trl", str(path))
    assert checked.returncode == 2 and refusal in checked.stdout
    run = run_cli(monkeypatch, capfd, "sft", "--recipe", str(path))
    assert run.returncode == 2 and refusal in run.stderr and len(run.stderr.strip().splitlines()) == 2
    assert not (tmp_path / "cache").exists()


def test_the_table_catches_a_bad_value_of_an_enum_field(write_recipe):
    """A scheduler name with a typo was found only by building TRL's config; the table's choices find it now."""
    from pipeline.core.recipe import RecipeError, load_recipe

    body = sft_recipe()
    body["training"]["lr_scheduler_type"] = "cosine_min_lr"
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(body))
    [(key, message)] = e.value.problems
    assert key.startswith("training.lr_scheduler_type")
    assert message.startswith("'cosine_min_lr' is not one of TRL's choices: linear, cosine,")
    assert "cosine_with_min_lr" in message


def test_the_table_was_generated_from_the_pinned_trl():
    import re

    pins = dict(re.findall(r'"(trl|transformers)==([^"]+)"', (REPO / "pyproject.toml").read_text()))
    data = json.loads(trl_fields.TABLE.read_text())
    assert (data["trl"], data["transformers"]) == (pins["trl"], pins["transformers"])
