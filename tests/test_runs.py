"""Run directories: manifests record what ran; a failed run never looks finished."""

import json
import time

import pytest
import torch
from conftest import sft_recipe
from safetensors.torch import save_file

from pipeline.core.recipe import load_recipe, recipe_hash
from pipeline.core.runs import content_hash, fingerprint, new_manifest, read_manifest, stage_run, write_json_atomic


@pytest.fixture
def recipe(write_recipe, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": []}\n')
    r = sft_recipe(output_dir=str(tmp_path / "runs" / "t" / "sft"))
    r["data"]["sources"][0]["path"] = str(data)
    return load_recipe(write_recipe(r))


def test_success_promotes_partial_with_complete_manifest(recipe):
    started = time.monotonic()
    with stage_run(recipe) as run:
        assert run.path.name == "sft.partial"
        (run.path / "weights.bin").write_bytes(b"x" * 10)
        run.metrics["loss"] = 1.5
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    final = recipe.output_path()
    assert not run.path.exists() and (final / "weights.bin").exists()
    m = read_manifest(final)
    assert m["status"] == "complete" and m["stage"] == "sft" and m["metrics"] == {"loss": 1.5}
    assert m["recipe_sha256"] == recipe_hash(recipe) and m["recipe"]["training"]["max_steps"] == 1
    assert m["recipe_file"].endswith("recipe.yaml")
    assert {"torch", "transformers", "trl"} <= set(m["versions"])
    assert "commit" in m["git"] and 0.2 <= m["duration_s"] <= elapsed + 0.001  # the run's own time, in seconds
    assert m["inputs"]["model.name_or_path"] == {"kind": "embedded", "ref": "embedded:tiny-smollm3"}
    data_fp = m["inputs"]["data.sources.0.path"]
    assert data_fp["kind"] == "file" and len(data_fp["content_sha256"]) == 64


def test_manifest_names_the_gpus_a_stage_ran_on(recipe, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "gpus" not in new_manifest(recipe)["host"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H100 80GB HBM3 #{i}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    host = new_manifest(recipe)["host"]
    assert host["gpus"] == ["NVIDIA H100 80GB HBM3 #0", "NVIDIA H100 80GB HBM3 #1"] and host["cuda"] == "13.0"


def test_failure_leaves_nothing_that_looks_finished(recipe):
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run(recipe) as run:
            (run.path / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not recipe.output_path().exists()
    m = json.loads((run.path / "manifest.json").read_text())
    assert m["status"] == "failed" and "RuntimeError: boom" in m["error"]


def test_restart_reuses_the_partial_dir_and_says_resumed(recipe):
    with pytest.raises(KeyboardInterrupt):
        with stage_run(recipe) as run:
            (run.path / "checkpoint-1").mkdir()
            raise KeyboardInterrupt
    with stage_run(recipe) as run2:
        assert run2.path == run.path and (run2.path / "checkpoint-1").is_dir()
        assert run2.manifest["resumed"] is True
    assert (recipe.output_path() / "checkpoint-1").is_dir()


def test_finished_run_is_not_overwritten_by_accident(recipe):
    with stage_run(recipe) as run:
        (run.path / "v").write_text("1")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with stage_run(recipe):
            pass
    with stage_run(recipe, overwrite=True) as run:
        (run.path / "v").write_text("2")
    assert (recipe.output_path() / "v").read_text() == "2"
    assert not recipe.output_path().with_name("sft.old").exists()


def test_fingerprint_of_an_earlier_run_carries_its_recipe_hash(recipe, tmp_path):
    with stage_run(recipe) as run:
        save_file({"w": torch.zeros(2)}, run.path / "model.safetensors")
    fp = fingerprint(str(recipe.output_path()))
    assert fp["kind"] == "run" and fp["recipe_sha256"] == recipe_hash(recipe) and fp["status"] == "complete"
    before = fp["content_sha256"]
    save_file({"w": torch.ones(2)}, recipe.output_path() / "model.safetensors")
    assert content_hash(recipe.output_path()) != before
    assert fingerprint("HuggingFaceTB/SmolLM3-3B") == {"kind": "hub", "ref": "HuggingFaceTB/SmolLM3-3B"}


def test_json_written_atomically(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_summary_that_cannot_be_written_fails_the_run_like_any_other_write(recipe, monkeypatch):
    """summary.json is written inside the run: a full disk there is recorded in the manifest and said
    in one line (UserError), and nothing looks finished (it used to be written after the try block)."""
    import errno

    from pipeline.core import runs
    from pipeline.core.errors import UserError

    def full(path, summary):
        raise OSError(errno.ENOSPC, "No space left on device", str(path / "summary.json"))

    monkeypatch.setattr(runs, "write_summary", full)
    with pytest.raises(UserError, match="summary.json: No space left on device; free space there"):
        with stage_run(recipe) as run:
            run.summary["outputs"] = []
    assert not recipe.output_path().exists()
    m = json.loads((run.path / "manifest.json").read_text())
    assert m["status"] == "failed" and "No space left" in m["error"]
