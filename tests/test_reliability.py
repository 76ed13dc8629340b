"""Runs never lose, mix or half-write anything: foreign directories, concurrent runs, failed runs,
secrets, attempts, exit codes (issue 12). Each test failed on the code before its fix."""

import json
import re
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run_cli, sft_recipe
from safetensors.torch import save_file
from scripted_server import ScriptedServer
from test_synth import scripted  # noqa: F401  (a fixture: the scripted teacher)

from pipeline.core.recipe import RecipeError, load_recipe
from pipeline.core.runs import RunError, read_manifest, stage_run


@pytest.fixture
def make_recipe(write_recipe, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": []}\n')

    def make(**changes):
        r = sft_recipe(**{"output_dir": str(tmp_path / "runs" / "t" / "sft"), **changes})
        r["data"]["sources"][0]["path"] = str(data)
        return load_recipe(write_recipe(r))

    return make


# ---- 1. never delete or replace a directory we did not create ---------------------------------
def test_a_foreign_output_dir_is_refused_and_left_alone(make_recipe, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my thesis")
    recipe = make_recipe(output_dir=str(foreign))
    for overwrite in (False, True):
        with pytest.raises(RunError, match="not a smolalign run"):
            with stage_run(recipe, overwrite=overwrite):
                pass
    assert (foreign / "notes.txt").read_text() == "my thesis"
    assert not (tmp_path / "mine.partial").exists()


def test_a_parent_run_dir_as_output_dir_does_not_remove_finished_stages(make_recipe, tmp_path):
    done = make_recipe()
    with stage_run(done) as run:
        save_file({"w": torch.zeros(2)}, run.path / "model.safetensors")
    parent = done.output_path().parent  # runs/t, holding the finished runs/t/sft
    with pytest.raises(RunError, match="not a smolalign run"):
        with stage_run(make_recipe(output_dir=str(parent)), overwrite=True):
            pass
    assert (done.output_path() / "model.safetensors").is_file()


def test_an_empty_existing_output_dir_is_fine(make_recipe, tmp_path):
    (tmp_path / "empty").mkdir()
    with stage_run(make_recipe(output_dir=str(tmp_path / "empty"))) as run:
        (run.path / "w").write_text("1")
    assert (tmp_path / "empty" / "w").read_text() == "1"


@pytest.mark.parametrize("place", ["a file", "a symlink, with --overwrite", "inside a finished run"])
def test_an_output_dir_no_run_could_finish_in_is_refused_before_any_work(make_recipe, tmp_path, monkeypatch,
                                                                         capsys, place):
    """Issue 21 item 4: each of these trained the whole stage and then failed (exit 1), renaming the
    user's file to `out.old`, failing on rmtree of a link, or changing a finished run's content."""
    import pipeline.training.sft
    from pipeline.cli import main
    from pipeline.core.runs import content_hash

    finished = make_recipe()
    with stage_run(finished) as run:
        save_file({"w": torch.zeros(2)}, run.path / "model.safetensors")
    finished_hash = content_hash(finished.output_path())
    overwrite = []
    if place == "a file":
        out = tmp_path / "out"
        out.write_text("my results")
    elif place == "a symlink, with --overwrite":
        (tmp_path / "real").mkdir()
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "real")
        overwrite = ["--overwrite"]
    else:
        out = finished.output_path() / "extra"
    recipe = make_recipe(output_dir=str(out))
    monkeypatch.setattr(pipeline.training.sft, "run", lambda *a, **k: pytest.fail("the stage started"))
    assert main(["sft", "--recipe", recipe._source, *overwrite]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err, err
    if place == "a file":
        assert out.read_text() == "my results" and not (tmp_path / "out.old").exists()
    elif place == "a symlink, with --overwrite":
        assert out.is_symlink() and list((tmp_path / "real").iterdir()) == []
    assert not out.with_name(out.name + ".partial").exists()
    assert content_hash(finished.output_path()) == finished_hash


# ---- 2. one run at a time on a run directory ----------------------------------------------------
def test_a_second_run_on_a_held_run_dir_is_refused_naming_the_holder(make_recipe, tmp_path):
    recipe = make_recipe()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(REPO / 'tests')!r})
from pipeline.core.recipe import RecipeError, load_recipe
from test_synth import scripted  # noqa: F401  (a fixture: the scripted teacher)
from pipeline.core.runs import stage_run
with stage_run(load_recipe({recipe._source!r})):
    print("holding", flush=True)
    time.sleep(60)
"""], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunError, match=rf"in use by pid {holder.pid} on host \S+"):
            with stage_run(recipe):
                pass
    finally:
        holder.kill()  # SIGKILL
        holder.wait()
    # the holder died without cleaning up: its lock goes with it, and the run resumes
    with stage_run(recipe) as run:
        assert run.manifest["resumed"] is True
    # ... and records the holder's attempt as killed, with how long it lived (tests/test_kills.py: a training run)
    killed, finished = read_manifest(recipe.output_path())["attempts"]
    assert (killed["status"], finished["status"]) == ("killed", "complete")
    assert killed["duration_s"] > 0 and killed["last_checkpoint"] is None and "last_seen_at" in killed


# ---- 5. a failed partial of another recipe is cleared by --overwrite ---------------------------
def test_overwrite_clears_an_interrupted_run_of_another_recipe(make_recipe):
    first = make_recipe()
    with pytest.raises(RuntimeError):
        with stage_run(first) as run:
            (run.path / "stale").write_text("x")
            raise RuntimeError("died")
    second = make_recipe(seed=7)
    with pytest.raises(RunError, match="--overwrite"):
        with stage_run(second):
            pass
    with stage_run(second, overwrite=True) as run:
        assert not (run.path / "stale").exists()


# ---- 10. secrets never reach a manifest ---------------------------------------------------------
def test_tokens_and_keys_are_redacted_in_the_manifest(make_recipe):
    recipe = make_recipe(training={**sft_recipe()["training"], "hub_token": "hf_SECRETSECRET",
                                   "push_to_hub": False})
    with stage_run(recipe) as run:
        pass
    text = (recipe.output_path() / "manifest.json").read_text()
    assert "hf_SECRETSECRET" not in text
    assert read_manifest(recipe.output_path())["recipe"]["training"]["hub_token"] == "<redacted>"
    assert run.manifest["recipe_sha256"]  # the hash still covers the real value


# ---- 11. attempts are recorded; changes outside a run's identity do not block a resume ---------
def test_attempts_are_recorded_and_description_changes_resume(make_recipe):
    first = make_recipe()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with stage_run(first):
            time.sleep(0.05)
            raise KeyboardInterrupt
    elapsed = [time.monotonic() - started]
    # a change that defines the run (the learning rate) is refused ...
    with pytest.raises(RunError, match="different recipe"):
        with stage_run(make_recipe(training={**sft_recipe()["training"], "learning_rate": 1e-3})):
            pass
    # ... one that does not (description, logging, trackers) resumes
    edited = make_recipe(description="now with a description",
                         training={**sft_recipe()["training"], "logging_steps": 5, "report_to": "none"})
    started = time.monotonic()
    with stage_run(edited) as run:
        assert run.manifest["resumed"] is True
        time.sleep(0.1)
    elapsed.append(time.monotonic() - started)
    m = read_manifest(edited.output_path())
    assert [a["status"] for a in m["attempts"]] == ["interrupted", "complete"]  # Ctrl-C
    # each attempt's own time in seconds: at least what it slept, at most what the test saw it take
    assert 0.05 <= m["attempts"][0]["duration_s"] <= elapsed[0] + 0.001
    assert 0.1 <= m["attempts"][1]["duration_s"] <= elapsed[1] + 0.001
    assert m["duration_s"] == pytest.approx(sum(a["duration_s"] for a in m["attempts"]), abs=0.2)
    assert m["recipe"]["description"] == "now with a description"  # the manifest shows the latest recipe


# ---- 6. user errors: one line, exit 2; bugs: traceback, exit 1 ---------------------------------
# main() in this process (tests/conftest.py run_cli): what it returns is the exit code; the real process's
# exit 2 is tested in test_recipes.py (test_cli_rejects_bad_recipe_before_loading)
@pytest.mark.parametrize("body, override, expected", [
    ({"name": "t"}, None, "stage: required key is missing"),
    (sft_recipe(), "k=[1", "not valid YAML"),
    (sft_recipe(), "training.learning_rate=1e-5x", "training.learning_rate"),
])
def test_expected_user_errors_are_one_line_with_exit_2(write_recipe, monkeypatch, capfd, body, override, expected):
    path = write_recipe(body)
    args = ["sft", "--recipe", str(path)] + (["--set", override] if override else [])
    out = run_cli(monkeypatch, capfd, *args)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert "smolalign None" not in out.stderr


def test_a_missing_input_is_a_user_error(write_recipe, tmp_path, monkeypatch, capfd):
    body = sft_recipe()
    body["data"]["sources"][0]["path"] = str(tmp_path / "absent.jsonl")
    out = run_cli(monkeypatch, capfd, "sft", "--recipe", str(write_recipe(body)))
    assert out.returncode == 2 and "absent.jsonl" in out.stderr and "Traceback" not in out.stderr


def test_training_values_are_checked_by_validate(write_recipe, monkeypatch, capfd):
    """One `validate` of five recipes: each one's own line fails."""
    cases = {"learning_rate": -1e-5, "max_steps": "ten", "lr_scheduler_type": "cosine_wiht_min_lr",
             "max_length": 0}
    files = {}
    for key, value in cases.items():
        body = sft_recipe()
        body["training"][key] = value
        files[f"training.{key}"] = str(write_recipe(body, f"{key}.yaml"))
    body = sft_recipe()
    del body["training"]["max_length"]
    files["packing needs a max_length"] = str(write_recipe(body, "no_max_length.yaml"))
    out = run_cli(monkeypatch, capfd, "validate", *files.values())
    assert out.returncode == 2, out.stdout
    reports = re.split(r"\n(?=FAIL|ok)", out.stdout.strip())  # a file's report: its line and its problems
    assert len(reports) == len(files), out.stdout
    for expected, path in files.items():
        [report] = [r for r in reports if r.startswith(f"FAIL  {path}: invalid recipe")]
        assert expected in report, (expected, out.stdout)


# ---- 7. the synth shard store: other shards are read, never modified ------------------------------
def test_other_shards_are_read_only_and_bad_lines_are_skipped_and_counted(tmp_path):
    from synth.store import ShardStore, read_all

    shards = tmp_path / "shards"
    shards.mkdir()
    other = shards / "shard-1-of-2.jsonl"
    # shard 1 is appending right now: its last line is still being written
    other.write_text('{"key": "b1", "text": "x"}\n{"key": "b2", "te')
    before = other.read_bytes()
    mine = ShardStore(shards / "shard-0-of-2.jsonl")
    seen = read_all(shards, skip=mine.path)
    assert set(seen) == {"b1"} and other.read_bytes() == before  # not truncated under the writer's feet

    # a bad line in the middle of our own shard: skipped and counted, later lines kept
    own = shards / "shard-0-of-2.jsonl"
    own.write_text('{"key": "a1"}\n' + "garbage\n" + "".join(f'{{"key": "a{i}"}}\n' for i in range(2, 300))
                   + '{"key": "torn')
    store = ShardStore(own)
    assert len(store.keys) == 299 and store.bad_lines == 1
    assert own.read_text().endswith('{"key": "a299"}\n')  # only our own torn tail is cut


def test_shard_runs_refuse_a_shards_dir_of_another_recipe(write_recipe, tmp_path, scripted):  # noqa: F811
    from test_synth import synth_recipe

    import synth.stage as synth_stage

    synth_stage.run(synth_recipe(write_recipe, tmp_path), shard="0/2")
    other = synth_recipe(write_recipe, tmp_path, sampling={"max_new_tokens": 7})
    with pytest.raises(RunError, match="different recipe"):
        synth_stage.run(other, shard="1/2")


# ---- 8. synth filters: typed settings; dedup none means none ------------------------------------
def test_dedup_none_keeps_exact_duplicates():
    from synth.filters import apply_filters

    row = {"prompt": [{"role": "user", "content": "Hi"}], "text": "Hello there, how can I help?"}
    kept, _, counts = apply_filters([row, dict(row)], {"dedup": "none", "decontaminate": False},
                                    lambda r: [(r["text"], False, "stop")])
    assert len(kept) == 2 and counts == {"kept": 2}
    kept, _, counts = apply_filters([row, dict(row)], {"dedup": "exact", "decontaminate": False},
                                    lambda r: [(r["text"], False, "stop")])
    assert len(kept) == 1 and counts == {"kept": 1, "exact_duplicate": 1}


def test_filter_settings_are_typed(write_recipe, tmp_path):
    from test_synth import synth_recipe

    for bad, message in (({"dedup": "nearr"}, "filters.dedup"), ({"near_threshold": 2}, "filters.near_threshold"),
                         ({"dedupe": True}, "filters.dedupe")):
        with pytest.raises(RecipeError, match=message):
            synth_recipe(write_recipe, tmp_path, filters=bad)


# ---- 9. the HTTP teacher backend ----------------------------------------------------------------
def _backend(tiny_model, url, **kwargs):
    from pipeline.generation import OpenAIBackend

    return OpenAIBackend(tiny_model, base_url=url, **kwargs)


def _ask(backend, n=1):
    from pipeline.generation import Request, SamplingSpec

    return backend.generate([Request([{"role": "user", "content": f"q{i}"}]) for i in range(n)],
                            SamplingSpec(temperature=0.6, top_p=0.95, max_new_tokens=8))


def test_http_429_is_retried_after_retry_after_and_succeeds(tiny_model):
    stub = ScriptedServer([(429, {"Retry-After": "1"}, {"error": "slow down"})] * 3)
    try:
        out = _ask(_backend(tiny_model, stub.url, retry_budget_s=30))
    finally:
        stub.close()
    assert [c.text for c in out] == ["Paris."]
    times = [t for t, _, _ in stub.received]
    assert len(times) == 4 and all(b - a >= 0.9 for a, b in zip(times, times[1:]))  # Retry-After honoured


def test_http_400_is_not_retried_and_names_the_url_and_the_reason(tiny_model):
    from pipeline.core.errors import UserError

    reason = {"error": {"message": "This model's maximum context length is 2048 tokens"}}
    stub = ScriptedServer([(400, {}, reason)])
    try:
        with pytest.raises(UserError, match=r"127\.0\.0\.1.*HTTP 400.*maximum context length is 2048"):
            _ask(_backend(tiny_model, stub.url, retry_budget_s=30))
    finally:
        stub.close()
    assert len(stub.received) == 1


@pytest.mark.parametrize("reply", [b"<html>oops</html>", {"no": "choices"}])
def test_http_malformed_reply_is_a_clear_error_with_the_url(tiny_model, reply):
    from pipeline.core.errors import UserError

    stub = ScriptedServer([(200, {}, reply)])
    try:
        with pytest.raises(UserError, match=r"127\.0\.0\.1.*/completions"):
            _ask(_backend(tiny_model, stub.url, retry_budget_s=0))
    finally:
        stub.close()


def test_http_recipe_settings_reach_the_request(tiny_model, monkeypatch, write_recipe):
    from pipeline.generation import make_backend

    monkeypatch.setenv("TEACHER_KEY", "sk-test-123")
    stub = ScriptedServer([])
    try:
        recipe = load_recipe(write_recipe({
            "name": "t", "stage": "synth-traces", "teacher": {"name_or_path": tiny_model},
            "prompts": {"sources": [{"path": "p.jsonl"}]},
            "backend": {"kind": "openai", "base_url": stub.url, "served_model_name": "qwen",
                        "api_key_env": "TEACHER_KEY",
                        "concurrency": 3, "timeout_s": 12, "retry_budget_s": 5}}))
        backend = make_backend(recipe.backend, tiny_model, "float32")
        assert (backend.concurrency, backend.timeout_s) == (3, 12)
        _ask(backend, n=2)
    finally:
        stub.close()
    _, headers, body = stub.received[0]
    assert headers["Authorization"] == "Bearer sk-test-123" and body["model"] == "qwen"
    assert body["top_k"] == -1 and body["stop_token_ids"] and body["skip_special_tokens"] is False
    assert "sk-test-123" not in json.dumps(recipe.model_dump())  # the recipe names the variable, never the key


def test_an_internal_error_is_a_bug_with_a_traceback_not_exit_2(write_recipe, monkeypatch):
    import types

    from pipeline import cli

    body = sft_recipe()
    body["data"]["sources"][0]["path"] = str(REPO / "data/demo/chat_no_think.jsonl")
    path = write_recipe(body)

    def broken(recipe, overwrite=False):
        raise FileNotFoundError("/tmp/some/internal/file")  # not the user's input: a bug

    monkeypatch.setattr(cli, "stage_module", lambda stage: types.SimpleNamespace(run=broken))
    with pytest.raises(FileNotFoundError):  # uncaught: Python prints the traceback and exits 1
        cli.main(["sft", "--recipe", str(path)])
