"""The synth and eval stages with `backend: vllm`, end to end through the CLI in subprocesses (vLLM
spawns its engine: a real run is a real process tree), on the embedded SmolLM2 (teacher / first model)
and the scripted tiny SmolLM3 (weak model / second model).

    make test-vllm
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import CHAIN_TEXT, REPO

RUN_CLI = [sys.executable, str(Path(__file__).with_name("run_cli.py"))]
# `backend.enforce_eager`: ~30 s engine starts on this CPU build instead of ~100 s with torch.compile.
VLLM_BACKEND = {"kind": "vllm", "enforce_eager": True}
SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 24, "seed": 1}


def synth_body(tmp_path: Path, stage: str, teacher: str, weak: str | None = None, prompts: int = 6,
               source: Path = REPO / "data/demo/prompts.jsonl") -> dict:
    body = {"name": "vllm", "stage": stage, "output_dir": str(tmp_path / stage),
            "teacher": {"name_or_path": teacher, "dtype": "float32"}, "backend": VLLM_BACKEND,
            "sampling": SAMPLING, "prompts": {"sources": [{"path": str(source)}]},
            "modes": ["think", "no_think"], "max_prompts": prompts, "filters": {"decontaminate": False}}
    if weak:
        body["weak"] = {"name_or_path": weak, "dtype": "float32"}
    return body


def run_stage(stage: str, recipe: Path, kill_at: int | None = None, kill_group: int | None = None,
              expect_rc: int = 0, timeout: float = 600) -> dict:
    """Runs `smolalign STAGE` (tests_vllm/run_cli.py) in its own process group and watches its process
    tree twice a second. Returns the return code, the output, the distinct vLLM engine processes seen
    and how many were alive at once."""
    # os.environ's PYTHONPATH starts with this checkout (conftest.py): its code, whichever copy the venv installed
    env = {**os.environ, "SMOLALIGN_TEST_KILL_AT": str(kill_at or ""),
           "SMOLALIGN_TEST_KILL_GROUP": str(kill_group or "")}
    proc = subprocess.Popen(RUN_CLI + [stage, "--recipe", str(recipe)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    engines: set[int] = set()
    most_at_once, deadline = 0, time.monotonic() + timeout
    while proc.poll() is None:
        alive = {p.pid for p in engine_processes(proc.pid)}
        engines |= alive
        most_at_once = max(most_at_once, len(alive))
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"{stage} ran over {timeout} s")
        time.sleep(0.5)
    output = proc.stdout.read()
    if kill_at is not None and kill_group is None:
        expect_rc = -signal.SIGKILL
    assert proc.returncode == expect_rc, f"{stage}: exit {proc.returncode}, expected {expect_rc}:\n{output[-6000:]}"
    return {"engines": engines, "most_at_once": most_at_once, "output": output}


def engine_processes(root: int) -> list[psutil.Process]:
    """vLLM's engine-core processes under `root` (vLLM names them VLLM::EngineCore)."""
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_synth_traces(write_recipe, tmp_path, smollm2):
    recipe = write_recipe(synth_body(tmp_path, "synth-traces", "embedded:smollm2-135m-instruct"), "traces.yaml")
    seen = run_stage("synth-traces", recipe)
    assert len(seen["engines"]) == 1
    out = tmp_path / "synth-traces"
    rows, report = jsonl(out / "rows.jsonl"), json.loads((out / "report.json").read_text())
    dropped = jsonl(out / "filtered.jsonl")
    # SmolLM2 writes no think block and 24 tokens cut most answers: the filters drop rows, each counted
    assert report["generations"] == 12 and report["rows"] == 12 == len(rows) + len(dropped)
    assert len(rows) == report["kept"] and sum(report["filters"].values()) == 12  # every row counted once
    for row in rows + dropped:
        assert row["meta"]["finish_reason"] in ("stop", "length")
        assert row["messages"][-1]["role"] == "assistant"
        assert "<|im_end|>" not in row["messages"][-1]["content"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def many_prompts(tmp_path: Path, n: int) -> Path:
    """`n` distinct prompts: the demo's questions, each asked with a number."""
    questions = jsonl(REPO / "data/demo/prompts.jsonl")
    path = tmp_path / f"prompts-{n}.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}. " + questions[i % len(
        questions)]["messages"][-1]["content"]}]}) + "\n" for i in range(n)))
    return path


def test_synth_pairs_two_engines_one_after_the_other_killed_and_resumed(write_recipe, tmp_path, scripted_smollm3,
                                                                        scripted_smollm3_copy):
    """Teacher then weak model in one run: one engine alive at a time. A SIGKILL while the weak model's
    engine holds about 200 requests loses only those; the rerun generates only what is missing (the
    teacher's engine is not even started again) and the run holds every work key exactly once.
    Both models are the scripted tiny SmolLM3 (at two paths), fast on hundreds of prompts. Greedy: seeded
    sampling on vLLM's CPU build crashes once prefills are split across steps, as they are with this many
    prompts at once (pipeline/generation.py, VLLMBackend._params)."""
    from pipeline.core.recipe import load_recipe
    from synth.stage import load_prompts, work_items

    body = synth_body(tmp_path, "synth-pairs", scripted_smollm3_copy, weak=scripted_smollm3, prompts=120,
                      source=many_prompts(tmp_path, 120))
    body["sampling"] = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}
    recipe = write_recipe(body, "pairs.yaml")
    shard = tmp_path / "synth-pairs.partial" / "shards" / "shard-all.jsonl"
    # 240 teacher items, then 240 weak ones, all in the engine at once: killed as the weak model's 31st is stored
    first = run_stage("synth-pairs", recipe, kill_at=240 + 31)
    assert len(first["engines"]) == 2, "teacher and weak model each get their own engine"
    assert first["most_at_once"] == 1, "the teacher's engine was still alive when the weak model's started"
    before = jsonl_tolerant(shard)
    assert [r["role"] for r in before] == ["teacher"] * 240 + ["weak"] * 30

    second = run_stage("synth-pairs", recipe)
    assert len(second["engines"]) == 1, "the resumed run restarted the teacher, whose work was all on disk"
    assert "synth-pairs weak: 210 prompts in" in second["output"], "the rerun generates only what is missing"
    out = tmp_path / "synth-pairs"
    keys = [r["key"] for r in jsonl(out / "shards" / "shard-all.jsonl")]
    loaded = load_recipe(recipe)
    prompts = load_prompts(loaded)
    expected = {it["key"] for role, model in (("teacher", loaded.teacher), ("weak", loaded.weak))
                for it in work_items(loaded, prompts, role, model.name_or_path)}
    assert len(keys) == len(set(keys)) == 480 and set(keys) == expected
    # every pair is in pairs.jsonl or filtered.jsonl (the same answer twice is a duplicate)
    pairs = jsonl(out / "pairs.jsonl") + jsonl(out / "filtered.jsonl")
    assert len(pairs) == 240
    for pair in pairs:
        for side in ("chosen", "rejected"):  # the scripted model's greedy chain, stopped at <|im_end|>
            assert pair[side][0]["content"] == CHAIN_TEXT.strip() and pair["meta"][side]["finish_reason"] == "stop"


def jsonl_tolerant(path: Path) -> list[dict]:
    """Rows of a shard file being written (a last line may be cut short)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def test_eval_two_checkpoints(write_recipe, tmp_path, smollm2, scripted_smollm3):
    models = [smollm2, scripted_smollm3]
    body = {"name": "vllm", "stage": "eval", "output_dir": str(tmp_path / "eval"), "models": models,
            "tasks": {"ruler": {"lengths": [512], "variants": ["niah_single_1"], "n": 1}, "ifeval": {"n": 2},
                      "math": {"n": 2}, "tools": {"n": 2}, "mode": {"n": 2}},
            "modes": ["think", "no_think"], "backend": VLLM_BACKEND, "dtype": "float32",
            "sampling": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32}}
    seen = run_stage("eval", write_recipe(body, "eval.yaml"))
    assert len(seen["engines"]) == 2 and seen["most_at_once"] == 1
    out = tmp_path / "eval"
    report = (out / "report.md").read_text()
    for model in (smollm2, scripted_smollm3):
        assert f"`{model}`" in report
    results = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "manifest.json"]
    results = {r["model"]: r for r in results if "tasks" in r}
    scripted = results[scripted_smollm3]["tasks"]
    for task, modes in scripted.items():
        for mode, summary in modes.items():
            for example in summary["examples"]:
                # the scripted model writes its chain and stops, whatever the task (after RULER's answer
                # prefix it joins the chain part way): special tokens kept, the stop works in eval
                assert example["finish_reason"] == "stop", (task, mode)
                if task == "ruler":
                    assert example["completion"] and CHAIN_TEXT.endswith(example["completion"]), (task, mode)
                else:
                    assert example["completion"] == CHAIN_TEXT, (task, mode, example["completion"])
    assert scripted["mode"]["think"]["n"] == 2
