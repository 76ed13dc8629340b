"""The eval stage end to end on tiny models, and the HTTP backend against a local stub server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import REPO

from eval import report as eval_report
from eval import stage
from merge.sweep import sweep_lines
from pipeline.core.recipe import load_recipe
from pipeline.core.summary import write_summary
from pipeline.generation import OpenAIBackend, Request, SamplingSpec, TransformersBackend
from pipeline.training.sections import loss_section, trained_on_section


def test_eval_two_models_both_modes_report(write_recipe, tmp_path, tiny_model, ckpt_copy, monkeypatch):
    built = []  # the two models share their tokenizer and template: each task's examples are built once
    monkeypatch.setattr(stage, "build_task", lambda name, options, real=stage.build_task: built.append(name)
                        or real(name, options))
    recipe = load_recipe(write_recipe({
        "name": "t", "stage": "eval", "output_dir": str(tmp_path / "eval"), "dtype": "float32",
        "models": ["embedded:tiny-smollm3", str(ckpt_copy)],
        "tasks": {"ruler": {"lengths": [512, 1024], "variants": ["niah_single_1"], "n": 1}, "math": {"n": 2},
                  "tools": {"n": 2}, "ifeval": {"n": 2}, "mode": {"n": 2}},
        "modes": ["think", "no_think"], "backend": {"kind": "transformers", "batch_size": 4},
        "sampling": {"temperature": 0.0, "max_new_tokens": 6}}))
    out = stage.run(recipe)
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "ruler_by_length.png", "scores.png", "manifest.json", "embedded_tiny-smollm3.json"} <= files
    result = json.loads((out / "embedded_tiny-smollm3.json").read_text())
    assert set(result["tasks"]) == {"ruler", "math", "tools", "ifeval", "mode"}
    ruler = result["tasks"]["ruler"]["think"]
    assert {k for k in ruler if k.startswith("length_")} == {"length_512", "length_1024"} and ruler["n"] == 2
    example = result["tasks"]["math"]["no_think"]["examples"][0]
    assert {"id", "score", "finish_reason", "completion"} <= set(example) and example["finish_reason"] == "length"
    report = (out / "report.md").read_text()
    assert report.split("## ")[0].count("| `") == 2 and "ruler (no_think)" in report and "(2 cut)" in report
    # the details: IFEval's four numbers, RULER per length and sub-task
    ifeval = report.split("## ifeval: details")[1].split("##")[0]
    assert all(k in ifeval for k in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"))
    assert "length_512" in report.split("## ruler: details")[1]
    ruler_table = report.split("## RULER by task and context length")[1]
    assert "| niah_single_1 | string_match_all |" in ruler_table and "| 512 | 1024 | mean |" in ruler_table
    scores = json.loads((out / "manifest.json").read_text())["metrics"]["scores"]
    assert set(scores) == {"embedded:tiny-smollm3", str(ckpt_copy)}
    assert sorted(built) == sorted(recipe.tasks)
    copy = json.loads((out / f"{stage.slug(str(ckpt_copy))}.json").read_text())
    for task, modes in result["tasks"].items():
        ids = [e["id"] for e in modes["think"]["examples"]]
        assert ids == [e["id"] for e in copy["tasks"][task]["think"]["examples"]], task


def test_only_a_model_with_the_same_tokenizer_and_template_shares_examples(tiny_model, ckpt_copy):
    from transformers import AutoTokenizer

    first, copy = AutoTokenizer.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(ckpt_copy)
    assert stage.tokenizer_fingerprint(first) == stage.tokenizer_fingerprint(copy) is not None
    copy.chat_template = copy.chat_template.replace("Reasoning Mode", "Mode")
    assert stage.tokenizer_fingerprint(copy) != stage.tokenizer_fingerprint(first)
    other = AutoTokenizer.from_pretrained(tiny_model)
    other.add_tokens(["<extra>"])
    assert stage.tokenizer_fingerprint(other) != stage.tokenizer_fingerprint(first)


def test_greedy_generation_is_deterministic_and_batched_like_single(tiny_model):
    backend = TransformersBackend(tiny_model, batch_size=3)
    requests = [Request([{"role": "user", "content": text}], enable_thinking=mode)
                for text in ("hi", "a longer question about many things", "x") for mode in (True, False)]
    greedy = SamplingSpec(temperature=0.0, max_new_tokens=5)
    batched = backend.generate(requests, greedy)
    backend.batch_size = 1
    single = backend.generate(requests, greedy)
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.completion_tokens <= 5 for c in batched)


@pytest.fixture
def ckpt_copy(tiny_model, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(tiny_model, path)
    return path


class _Stub(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.received.append((self.path, body))
        reply = {"choices": [{"text": "Paris.", "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_backend_sends_our_rendered_prompt(tiny_model):
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = OpenAIBackend(tiny_model, base_url=f"http://127.0.0.1:{server.server_port}/v1",
                                served_name="teacher", concurrency=2, renderer_kwargs={"today_date": "02 Feb 2024"})
        requests = [Request([{"role": "user", "content": "Capital of France?"}], enable_thinking=False)] * 3
        out = backend.generate(requests, SamplingSpec(temperature=0.6, top_p=0.95, max_new_tokens=32, seed=7))
    finally:
        server.shutdown()
    assert [c.text for c in out] == ["Paris."] * 3 and out[0].finish_reason == "stop" and out[0].prompt_tokens == 11
    path, body = _Stub.received[0]
    assert path == "/v1/completions" and body["model"] == "teacher" and body["stop"] == ["<|im_end|>"]
    assert body["prompt"].endswith("Capital of France?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n")
    assert "Today Date: 02 Feb 2024" in body["prompt"] and "Reasoning Mode: /no_think" in body["prompt"]
    assert sorted(b["seed"] for _, b in _Stub.received[-3:]) == [7, 8, 9]


def test_unknown_eval_task_and_option_are_refused(write_recipe):
    from pipeline.cli import load
    from pipeline.core.recipe import RecipeError

    body = {"name": "t", "stage": "eval", "models": ["m"], "tasks": {"gsm8k": {}, "ruler": {"lenghts": [1]}}}
    with pytest.raises(RecipeError) as e:
        load(write_recipe(body))
    problems = {key.split(" ")[0]: msg for key, msg in e.value.problems}
    assert problems["tasks.gsm8k"] == "unknown task; known: ruler, ifeval, math, tools, mode"
    assert problems["tasks.ruler.lenghts"] == "unknown option; allowed: lengths, n, qa_sources, variants"


def test_a_crash_in_the_last_task_keeps_what_finished(write_recipe, tmp_path, monkeypatch):
    import pipeline.generation

    recipe = load_recipe(write_recipe({
        "name": "t", "stage": "eval", "output_dir": str(tmp_path / "eval"), "dtype": "float32",
        "models": ["embedded:tiny-smollm3"], "tasks": {"mode": {"n": 2}, "math": {"n": 1}}, "modes": ["no_think"],
        "backend": {"kind": "transformers"}, "sampling": {"temperature": 0.0, "max_new_tokens": 4}}))
    generated = []
    real = pipeline.generation.TransformersBackend.generate

    def counting(self, requests, sampling, desc=""):
        generated.append(desc.split("] ")[-1])
        if desc.endswith("math/no_think") and len(generated) == 2:
            raise RuntimeError("killed in the last task")
        return real(self, requests, sampling, desc)

    monkeypatch.setattr(pipeline.generation.TransformersBackend, "generate", counting)
    with pytest.raises(RuntimeError, match="killed in the last task"):
        stage.run(recipe)
    partial = json.loads((tmp_path / "eval.partial" / "embedded_tiny-smollm3.json").read_text())
    assert set(partial["tasks"]) == {"mode"}  # written as soon as it finished
    out = stage.run(recipe)
    assert generated == ["mode/no_think", "math/no_think", "math/no_think"]  # mode was not generated again
    result = json.loads((out / "embedded_tiny-smollm3.json").read_text())
    assert set(result["tasks"]) == {"mode", "math"}


def test_vllm_backend_stops_on_the_end_of_turn_token_and_keeps_special_tokens(tiny_model, monkeypatch):
    """vLLM cannot run here: a stand-in `vllm` module records what the backend asks of it."""
    import sys
    import types

    from pipeline.generation import VLLMBackend

    calls = {}

    class Engine:
        """vLLM's engine loop as the backend drives it: add_request, then step until each is finished."""

        vllm_config = types.SimpleNamespace(scheduler_config=types.SimpleNamespace(max_num_seqs=4))

        def __init__(self):
            self.waiting = []
            self.engine_core = types.SimpleNamespace(
                shutdown=lambda: calls.__setitem__("shutdown", calls.get("shutdown", 0) + 1))

        def add_request(self, request_id, prompt, params):
            calls.setdefault("params", []).append(params)
            self.waiting.append((request_id, prompt))

        def step(self):
            out = types.SimpleNamespace(text="<think>\nx\n</think>\n\nok", finish_reason="abort", token_ids=[1, 2])
            finished = [types.SimpleNamespace(request_id=i, finished=True, outputs=[out],
                                              prompt_token_ids=p["prompt_token_ids"]) for i, p in self.waiting]
            self.waiting = []
            return finished

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs
            self.llm_engine = Engine()

    def destroy():
        calls["destroyed"] = calls.get("destroyed", 0) + 1

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kwargs: kwargs
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    parallel = types.ModuleType("vllm.distributed.parallel_state")
    parallel.destroy_model_parallel = parallel.destroy_distributed_environment = destroy
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setitem(sys.modules, "vllm.distributed", types.ModuleType("vllm.distributed"))
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", parallel)

    with VLLMBackend(tiny_model, dtype="float32", enforce_eager=True) as backend:
        [c] = backend.generate([Request([{"role": "user", "content": "hi"}])], SamplingSpec(max_new_tokens=5))
        greedy = SamplingSpec(temperature=0.0, max_new_tokens=5)
        backend.generate([Request([{"role": "user", "content": "hi"}], seed=3)], greedy)
        end_id = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    params, greedy_params = calls["params"]
    assert params["stop_token_ids"] == [end_id] and "stop" not in params
    assert params["skip_special_tokens"] is False
    assert params["seed"] == 0  # sampled: the recipe's seed
    assert greedy_params["seed"] is None  # greedy: no per-request generator (the CPU build's split-prefill crash)
    assert c.text.startswith("<think>") and c.finish_reason == "abort"  # not collapsed into "length"
    assert calls["shutdown"] == 1  # the engine's process stopped on close, not left to the garbage collector
    assert calls["destroyed"] == 2  # the engine's distributed state torn down on close
    assert calls["llm"]["enforce_eager"] is True
    assert "hf_overrides" not in calls["llm"]  # within the native context: no rope scaling
    native = json.loads((Path(tiny_model) / "config.json").read_text())["max_position_embeddings"]
    VLLMBackend(tiny_model, dtype="float32", max_model_len=2 * native).close()
    rope = calls["llm"]["hf_overrides"]["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0 and rope["original_max_position_embeddings"] == native
    assert rope["rope_theta"] == 5_000_000.0  # the model's own base frequency is kept


def test_ruler_prompts_as_the_model_sees_them_plus_the_answer_fit_the_length(tiny_model, write_recipe, tmp_path):
    """RULER's rule: template + system turn + generation prompt + tokens to generate <= length."""
    from eval.tasks import RulerTask

    recipe = load_recipe(write_recipe({"name": "t", "stage": "eval", "models": ["m"], "tasks": {"mode": {}},
                                       "modes": ["think", "no_think"]}))
    backend = TransformersBackend(tiny_model)
    task = RulerTask(lengths=[1024, 2048], variants=["niah_single_2", "vt"])
    examples = task.examples(n=1, seed=0, ctx=stage.task_context(recipe, backend, 64))
    assert {ex.max_new_tokens for ex in examples} == {128, 30}  # RULER's budgets for niah and vt
    for ex in examples:
        for thinking in (True, False):
            prompt = backend.render(Request(ex.messages, enable_thinking=thinking, prefill=ex.prefill))
            seen = len(backend.tokenizer(prompt, add_special_tokens=False).input_ids)
            assert seen + ex.max_new_tokens <= ex.meta["length"], (ex.id, seen)
            # and uses the length it was given (the essay grows in RULER's steps of 500 words)
            assert seen + ex.max_new_tokens > 0.6 * ex.meta["length"]


@pytest.mark.slow
@pytest.mark.e2e
def test_the_production_eval_recipe_runs_every_task_to_the_end(tiny_model, tmp_path, monkeypatch):
    """recipes/smollm3/eval.yaml as shipped (tasks, categories, modes, 131072-token RULER), with a
    stand-in for vLLM that answers every prompt, on fewer examples, on a machine that cannot reach
    RULER's QA datasets."""
    import urllib.error

    from pipeline.cli import load
    from pipeline.generation import Backend, Completion, Renderer

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def hub_offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'google/IFEval' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr("datasets.load_dataset", hub_offline)
    monkeypatch.setenv("SMOLALIGN_CACHE", str(tmp_path / "cache"))
    budgets = []

    class Stub(Backend):
        def __init__(self, path):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.render = Renderer(self.tokenizer)

        def generate(self, requests, sampling, desc=""):
            budgets.append(sampling.max_new_tokens)
            for r in requests:  # every prompt + its budget fits the context vLLM would be given
                assert len(self.tokenizer(self.render(r)).input_ids) + sampling.max_new_tokens <= 131072
            return [Completion("<think>\nLet me see.\n</think>\n\nThe answer is \\boxed{42}.", "stop", 1, 12)
                    for _ in requests]

    monkeypatch.setattr(stage, "make_backend", lambda spec, path, dtype, **kw: Stub(path))
    recipe = load(REPO / "recipes/smollm3/eval.yaml", [
        f"models=[{tiny_model}]", f"output_dir={tmp_path / 'eval'}", "tasks.ruler.n=1",
        "tasks.ruler.lengths=[4096,131072]", "tasks.ifeval.n=3", "tasks.math.n=3", "tasks.tools.n=3",
        "tasks.mode.n=3"])
    out = stage.run(recipe)
    [result] = [json.loads(p.read_text()) for p in out.glob("*.json")
                if p.name not in ("manifest.json", "summary.json")]  # the model's results
    assert set(result["tasks"]) == {"ruler", "ifeval", "math", "tools", "mode"}
    for task, modes in result["tasks"].items():
        assert set(modes) == {"think", "no_think"} and all(m["n"] > 0 for m in modes.values()), task
    ruler = result["tasks"]["ruler"]["no_think"]
    assert {e["length"] for e in ruler["examples"]} == {4096, 131072}
    assert len(ruler["by_task_length"]) == 11 and set(ruler["unavailable"]) == {"qa_1", "qa_2"}
    assert {128, 30, 120, 50, 32768} <= set(budgets)  # RULER's own budgets per task; the recipe's for the rest
    report = (out / "report.md").read_text()
    assert "- qa_1: **unavailable**: https://rajpurkar.github.io/" in report and "| fwe | string_match_all |" in report
    ifeval = result["tasks"]["ifeval"]["think"]
    assert ifeval["comparable"] == 0.0 and "google/IFEval unreachable" in ifeval["source"]


def _summary(score: float) -> dict:
    return {"score": score, "n": 4, "truncated": 0, "examples": []}


def test_report_compares_every_model_with_the_first_and_links_each_stage(tmp_path):
    """A pipeline's report: deltas from the first row, what moved, and each run dir's outputs, all read
    from each run's summary.json (written here with the helpers the stages use)."""
    sft_run, merge_run = tmp_path / "runs" / "sft", tmp_path / "runs" / "merge"
    for run in (sft_run, merge_run):
        (run / "sweep").mkdir(parents=True)
        (run / "manifest.json").write_text("{}")
    for name in ("loss.png", "mixture.txt", "preference.json", "README.md"):
        (sft_run / name).write_text("x")
    losses = [3.0 - 0.1 * i for i in range(24)]  # falls: first 10 mean 2.55, last 10 mean 1.15
    traces = tmp_path / "runs" / "synth-traces"
    traces.mkdir()
    (traces / "report.json").write_text("{}")
    write_summary(traces, {"stage": "synth-traces", "filters": {"report": "report.json"}})
    mixture = {"sources": [{"source": "runs/x/synth-traces/rows.jsonl", "rows": 7},
                           {"source": str(traces / "rows.jsonl"), "rows": 5}]}
    write_summary(sft_run, {
        "stage": "sft", "outputs": ["loss.png", "mixture.txt", "preference.json", "README.md"],
        "loss": loss_section([{"step": i + 1, "loss": v} for i, v in enumerate(losses)]),
        "trained_on": trained_on_section("mixture", "mixture.txt", mixture),
        "held_out": {"pairs_file": "held.jsonl", "beta": 0.05, "reward_margin": 0.25,
                     "start": {"model": "runs/x/sft", "pairs": 32, "accuracy": 0.75, "mean_margin": 1.0},
                     "end": {"pairs": 32, "accuracy": 0.875, "mean_margin": 6.0}}})
    rows = [{"weight": w, "scores": {"math (no_think)": 0.5}, "mean": 0.5} for w in (0.8, 1.0)]
    table = "| soup weight | math (no_think) | mean |\n"
    (merge_run / "sweep" / "sweep.md").write_text(table)
    write_summary(merge_run, {"stage": "merge", "outputs": ["sweep/sweep.md"],
                              "sweep": {"rows": rows, "best_weight": 0.8, "file": "sweep/sweep.md", "table": table},
                              "merged": {"soup": [{"path": "runs/x/apo/checkpoint-2", "weight": 0.5},
                                                  {"path": "runs/x/apo/checkpoint-4", "weight": 0.5}],
                                         "soup_weight": 0.9, "long_context": "runs/x/midtrain"}})
    results = [{"model": "embedded:base", "tasks": {"mode": {"think": _summary(0.0), "no_think": _summary(1.0)}}},
               {"model": str(sft_run), "tasks": {"mode": {"think": _summary(0.75), "no_think": _summary(1.0)}}},
               {"model": str(merge_run), "tasks": {"mode": {"think": _summary(0.5), "no_think": _summary(1.0)}}}]
    out = tmp_path / "eval"
    out.mkdir()
    report = eval_report.write_report(results, out, ["think", "no_think"])

    table = report.split("## ")[0]
    assert "| `embedded:base` | 0.000 | 1.000 |" in table  # the starting point: no delta
    assert f"| `{sft_run}` | 0.750 (+0.750) | 1.000 (+0.000) |" in table
    assert f"| `{merge_run}` | 0.500 (+0.500) | 1.000 (+0.000) |" in table
    assert (out / "progress.png").is_file()
    glance = report.split("## At a glance")[1].split("## ")[0]
    assert "| | **base** | **sft** | **merge** |" in glance  # the pipeline, left to right
    assert "| mode (think) | 0.00 | 0.75 | 0.50 |" in glance and "mode (no_think)" not in glance  # only what moved
    assert "| loss curve |  | [loss](../runs/sft/loss.png) |  |" in glance
    assert "| trained on |  | [mixture](../runs/sft/mixture.txt) |  |" in glance
    assert "| held-out pairs preferred |  | 0.75 → 0.88 |  |" in glance
    assert "| merge sweep |  |  | [sweep](../runs/merge/sweep/sweep.md) |" in glance
    assert "| merged from |  |  | 0.9 x soup of 2 + 0.1 x `runs/x/midtrain` |" in glance
    assert ("Merged: 0.9 x the soup of `runs/x/apo/checkpoint-2` (0.5), `runs/x/apo/checkpoint-4` (0.5); "
            "0.1 x `runs/x/midtrain`.") in report.split("### merge")[1]
    assert "[loss.png](../runs/sft/loss.png)" in report and "[preference.json](../runs/sft/preference.json)" in report
    assert "loss falls: mean of the first 10 logged steps 2.550, of the last 10 1.150" in report
    synth_link = "([synth filters](../runs/synth-traces/report.json))"  # a synth run's rows link its filter report
    assert f"`runs/x/synth-traces/rows.jsonl` 7, `{traces / 'rows.jsonl'}` 5 {synth_link}" in report
    assert "| before: `runs/x/sft` | 0.750 | 1.000 |" in report and "| after: sft | 0.875 | 6.000 |" in report
    assert "**No trade-off shows at this scale**: every sweep weight scores the same" in report.split("### merge")[1]


def test_progress_picture_places_apo_held_out_preference_at_its_start_and_its_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "apo").mkdir(parents=True)
    write_summary(tmp_path / "runs" / "apo", {"stage": "apo", "held_out": {
        "pairs_file": "held.jsonl", "beta": 0.1, "reward_margin": 0.5,
        "start": {"model": "runs/sft", "accuracy": 0.8125, "mean_margin": 0.0},
        "end": {"pairs": 16, "accuracy": 0.9375, "mean_margin": 1.0}}})
    results = [{"model": m} for m in ("embedded:base", "runs/sft/", "runs/apo", "runs/merge")]
    line = "held-out pairs preferred"
    assert eval_report.progress_points(results) == {line: [(1, 0.8125), (2, 0.9375)]}
    assert eval_report.progress_points([results[0], results[2]]) == {line: [(1, 0.9375)]}  # its start is not there
    assert eval_report.progress_points([results[0], results[1]]) == {}


def test_sweep_lines_name_a_trade_off_only_where_scores_move_in_opposite_directions(tmp_path):
    def write(rows):
        return "\n".join(sweep_lines({"rows": rows, "table": "table"}))

    def row(weight, ruler, mode):
        return {"weight": weight, "scores": {"ruler (think)": ruler, "mode (no_think)": mode}}

    both = write([row(0.5, 0.9, 0.5), row(0.9, 0.6, 0.8), row(1.0, 0.5, 0.9)])
    assert "**Trade-off**: ruler (think) is better at soup weight 0.5, mode (no_think) at 0.9" in both
    one_way = write([row(0.5, 0.5, 0.5), row(0.9, 0.5, 0.8), row(1.0, 0.5, 0.8)])
    assert "No trade-off shows at this scale**: only mode (no_think) changes with the weight" in one_way
    assert "Trade-off**" not in one_way


def test_report_skips_a_task_that_could_not_run_when_finding_what_moved():
    results = [{"model": "a", "tasks": {"ruler": {"think": _summary(None)}, "mode": {"think": _summary(0.0)}}},
               {"model": "b", "tasks": {"ruler": {"think": _summary(0.5)}, "mode": {"think": _summary(1.0)}}}]
    glance = eval_report.glance_table(results, ["ruler", "mode"], ["think"], Path("."))
    assert glance[2:] == ["| mode (think) | 0.00 | 1.00 |"]


def test_the_report_survives_old_and_damaged_run_directories(tmp_path, capsys):
    """A run of ours without summary.json (made before summaries) is named with what to do; a summary
    section missing keys is dropped with a warning instead of failing the whole report."""
    old, damaged = tmp_path / "runs" / "old-sft", tmp_path / "runs" / "sft"
    for run in (old, damaged):
        run.mkdir(parents=True)
        (run / "manifest.json").write_text(json.dumps({"stage": "sft", "recipe_sha256": "0" * 64}))
    write_summary(damaged, {"stage": "sft", "trained_on": {"sources": [{"source": "a.jsonl", "rows": 3}]},
                            "loss": {"steps": 1, "curve": "loss.png"}, "held_out": {"start": {}}})
    results = [{"model": str(run), "tasks": {"mode": {"think": _summary(0.5)}}} for run in (old, damaged)]
    out = tmp_path / "eval"
    out.mkdir()
    report = eval_report.write_report(results, out, ["think"])
    assert f"No summary.json in `{old}`" in report and "### sft" in report
    assert "Trained on" not in report and "Training loss" not in report and "Held-out" not in report
    warnings = capsys.readouterr().out
    assert "section `trained_on` lacks some of kind, table, sources; not shown" in warnings
    assert "section `held_out` lacks" in warnings
