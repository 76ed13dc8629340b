"""`make gpu-check` runs on GPU machines only; here it must refuse in one line, not crash. Its parts run here on
the configs the script itself builds (small_config, the 3B config at the rehearsal's sizes): the throughput
records and their JSON, the logits check, the attention FLOPs, the stage overrides, the guard that keeps one
failing part from ending the run, the rehearsal's verdict, and scripts/gpu_check.sh (what `make gpu-check`
runs) installing carried wheels first on the path. `make gpu-rehearsal` runs all of it end to end (CI)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def test_gpu_check_refuses_clearly_without_a_gpu():
    out = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py")], capture_output=True, text=True,
                         cwd=REPO, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "no GPU is visible" in out.stderr and "Traceback" not in out.stderr


def gpu_check():
    """scripts/gpu_check.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_scripts_own_configs_build_a_model():
    """The configs the script trains and compares, built as it builds them (these tests used to pass a tiny config
    of their own, and the script's small_config() left SmolLM3's pad id 128004 outside its 49,152-token vocabulary:
    every run stopped at the logits part with `Padding_idx must be within num_embeddings`). On the meta device,
    so the 3B shape costs no memory."""
    import torch
    from transformers import SmolLM3ForCausalLM

    g = gpu_check()
    for config in (g.small_config(), g.smollm3_3b_config(), rehearsal_config(g)):
        with torch.device("meta"):
            model = SmolLM3ForCausalLM._from_config(config, dtype=torch.bfloat16)
        embedding = model.get_input_embeddings()
        assert embedding.num_embeddings == config.vocab_size and 0 <= embedding.padding_idx < config.vocab_size
        for special in (config.pad_token_id, config.bos_token_id, config.eos_token_id):
            assert 0 <= special < config.vocab_size, special


def rehearsal_config(g):
    """The model the rehearsal's throughput grid and stage runs train: the script's 3B config at tiny sizes."""
    return g.smollm3_3b_config(**g.REHEARSAL.sizes)


@pytest.mark.slow
def test_throughput_records_land_on_disk_as_each_finishes(tmp_path):
    """The part that times training steps, on CPU with a tiny shape: every record is in the JSON file when it
    is added (a run killed at its limit keeps them), with the keys `smolalign plan` reads; a configuration
    that does not fit the time left is recorded as skipped, not silently dropped."""
    g = gpu_check()
    out = tmp_path / "gpu-check.json"
    report = g.Report(out, {"date_utc": "x", "gpu": None, "peak_bf16_tflops": None, "torch": "x"})
    seen = []
    real_add = report.add

    def add(section, record):
        real_add(section, record)
        seen.append(len(json.loads(out.read_text())[section]))  # already on disk

    report.add = add
    g.measure_throughput(report, g.Budget(600), lengths=(64, 128), steps=1, device="cpu", config=rehearsal_config(g),
                         implementations=("sdpa", "eager"))
    records = json.loads(out.read_text())["throughput"]
    assert seen == list(range(1, 9)) and len(records) == 8
    for r in records:
        assert r["status"] == "ok", r
        assert isinstance(r["seq_length"], int) and isinstance(r["activation_checkpointing"], bool)
        assert r["attn_implementation"] in ("sdpa", "eager") and r["liger"] is False
        assert r["tokens_per_s"] > 0 and r["mfu"] is None and r["attention_tflops_per_step"] > 0
        assert "peak_memory_gib" in r and sum(r["documents"] for r in [r]) >= 1
    assert {(r["seq_length"], r["attn_implementation"], r["activation_checkpointing"]) for r in records} == {
        (n, impl, ac) for n in (64, 128) for impl in ("sdpa", "eager") for ac in (False, True)}
    # and `smolalign plan` (pipeline/planning/costs.py) reads them
    from pipeline.planning.costs import read_gpu_check

    assert read_gpu_check(out)["rows"] == records

    late = g.Report(tmp_path / "late.json", {"peak_bf16_tflops": None})
    g.measure_throughput(late, g.Budget(600), lengths=(64,), steps=1, device="cpu", config=rehearsal_config(g),
                         implementations=("sdpa",), reserve_s=600)
    assert [r["status"].split(" (")[0] for r in late.data["throughput"]] == ["skipped: time budget"] * 2


def test_attention_flops_equal_torch_flop_counter():
    """Our attention FLOPs against torch's own counter: eager attention's two batched matmuls (QK^T and AV)
    over one document, counted by FlopCounterMode, are the full-square forward count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import SmolLM3ForCausalLM

    g = gpu_check()
    config = rehearsal_config(g)
    model = SmolLM3ForCausalLM._from_config(config, attn_implementation="eager").eval()
    n = 96
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, config.vocab_size, (1, n)), use_cache=False)
    bmm = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "bmm" in str(op))
    assert bmm > 0
    assert g.attention_tflops(config, [n], square=True) * 1e12 == 3 * bmm  # forward + backward = 3 x forward
    # causal within documents: half of each document's square; a packed row's square counts every pair
    assert g.attention_tflops(config, [n, n]) == g.attention_tflops(config, [n], square=True)


def test_stage_runs_change_only_data_steps_saving_and_tracker_of_the_real_recipes(tmp_path):
    from pipeline.core.batch import batch_for
    from pipeline.core.recipe import load_recipe

    g = gpu_check()
    for stage, length in (("sft", 65536), ("apo", 24576)):
        real = load_recipe(REPO / f"recipes/smollm3/{stage}.yaml")
        sets = g.stage_overrides(stage, length, str(tmp_path / "model"), str(tmp_path / "rows.jsonl"),
                                 str(tmp_path / stage), 4, ("training.torch_compile=true",))
        run = load_recipe(REPO / f"recipes/smollm3/{stage}.yaml", sets)
        assert run.model.name_or_path == str(tmp_path / "model") and run.model.attn_implementation == "auto"
        assert [s.path for s in run.data.sources] == [str(tmp_path / "rows.jsonl")]
        assert run.training["save_strategy"] == "no" and run.training["max_steps"] == 4
        assert run.training["max_length"] == length and run.training["torch_compile"] is True
        changed = {k for k in real.training.keys() | run.training.keys()
                   if real.training.get(k) != run.training.get(k)}
        assert changed <= {"max_steps", "save_strategy", "report_to", "logging_steps", "max_length", "torch_compile",
                           "global_batch_size"}
        # everything that sets the speed is the recipe's own; a step is 2 micro-steps on the one GPU
        for key in ("activation_checkpointing", "use_liger_kernel", "bf16", "per_device_train_batch_size"):
            assert run.training[key] == real.training[key]
        assert batch_for(run.settings, 1).accumulation == 2
        # the rehearsal on CPU changes two more, and says so; the model keeps the recipe's dtype and `auto`
        rehearsed = load_recipe(REPO / f"recipes/smollm3/{stage}.yaml", sets + list(g.REHEARSAL.stage_sets))
        assert {k for k in real.training.keys() | rehearsed.training.keys()
                if real.training.get(k) != rehearsed.training.get(k)} - changed == {"bf16", "use_liger_kernel"}
        assert rehearsed.model.dtype == real.model.dtype == "bfloat16"
        assert rehearsed.model.attn_implementation == "auto"


def test_steady_tokens_per_s_leaves_out_the_first_step():
    """transformers logs tokens seen and tokens over the time since training started; the first step
    (compilation, warm-up) is left out."""
    g = gpu_check()
    history = [{"step": 1, "loss": 2.0, "num_input_tokens_seen": 100, "train_tokens_per_second": 10.0},  # t=10 s
               {"step": 2, "loss": 1.9, "num_input_tokens_seen": 200, "train_tokens_per_second": 200 / 12.5},
               {"step": 3, "loss": 1.8, "num_input_tokens_seen": 300, "train_tokens_per_second": 20.0},  # t=15 s
               {"step": 3, "train_runtime": 15.2, "train_tokens_per_second": 19.7}]  # the summary: no loss
    assert g.steady_tokens_per_s(history) == (200 / 5, 2)
    assert g.steady_tokens_per_s(history[:1]) == (None, 1)


@pytest.mark.slow
def test_packed_logits_check_passes_isolated_rows_and_its_control_differs(tmp_path):
    """The logits part as the rehearsal runs it (the script's small_config, rows of 512 tokens, flex_attention
    without torch.compile: compiled, it costs minutes here and has its own CPU test in test_data.py), in float32
    with a tight tolerance: BFD and wrapped rows match their documents, the control does not, and flash-attn,
    absent here, is recorded as skipped with the reason."""
    g = gpu_check()
    report = g.Report(tmp_path / "gpu-check.json", {"peak_bf16_tflops": None})
    g.check_packed_logits(report, g.Budget(600), device="cpu", dtype="float32", tolerance=1e-3,
                          row_tokens=g.REHEARSAL.logits_row_tokens, compile_flex=False)
    records = json.loads((tmp_path / "gpu-check.json").read_text())["packed_logits"]
    assert [(r["attn_implementation"], r.get("rows")) for r in records] == [
        ("flex_attention", "bfd"), ("flex_attention", "wrapped"), ("sdpa", "bfd"), ("sdpa", "wrapped"),
        ("flash_attention_2", None)]
    for r in records[:4]:
        assert r["status"] == "ok" and r["max_abs_logit_diff_bf16"] < 1e-3 < r["control_min_abs_diff_bf16"], r
    assert records[0]["compiled"] is False and "compiled" not in records[2]
    assert records[0]["documents"] == 5 and records[1]["documents"] == 5 and records[1]["tokens"] == 1024
    assert records[4]["status"] == "skipped: flash-attn is not installed"


def test_a_configuration_that_ran_out_of_memory_is_skipped_at_longer_rows_only():
    g = gpu_check()
    failed, budget = {("sdpa", False): 32768}, g.Budget(600)
    assert g.skip_reason("sdpa", False, 65536, failed, budget, 0, 10) == (
        "skipped: out of memory at 32768 tokens already")
    assert g.skip_reason("sdpa", False, 8192, failed, budget, 0, 10) is None
    assert g.skip_reason("sdpa", True, 65536, failed, budget, 0, 10) is None  # with checkpointing: its own record
    assert g.skip_reason("flex_attention", False, 65536, failed, budget, 0, 10) is None
    assert g.skip_reason("sdpa", True, 8192, failed, budget, 590, 20).startswith("skipped: time budget")


# ---- scripts/gpu_wheels.sh: DEST is the user's to name; only what the script wrote is ever deleted ----
def gpu_wheels(tmp_path, dest) -> subprocess.CompletedProcess:
    """Run scripts/gpu_wheels.sh with a Python whose `-m pip` is a stand-in (no network here): it logs the
    call and writes one wheel into the -d directory; every other call is the real interpreter."""
    python, log = tmp_path / "python", tmp_path / "pip.log"
    python.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then
    echo "$@" >> {log}
    while [ $# -gt 0 ]; do [ "$1" = -d ] && touch "$2/trl-1.16.0-py3-none-any.whl"; shift; done
    exit 0
fi
exec {sys.executable} "$@"
""")
    python.chmod(0o755)
    return subprocess.run(["bash", "scripts/gpu_wheels.sh", str(python), str(dest)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("dest", ["a checkout", "a file", "an old .whl without the marker"])
def test_gpu_wheels_refuses_a_dest_it_did_not_make_and_deletes_nothing(tmp_path, dest):
    """Before: `rm -rf "$DEST"` on whatever was named (`.` wiped the checkout, `~` the home directory)."""
    target = tmp_path / "dest"
    if dest == "a file":
        target.write_text("mine\n")
    else:
        target.mkdir()
        (target / ("README.md" if dest == "a checkout" else "old-1.0-py3-none-any.whl")).write_text("mine\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = gpu_wheels(tmp_path, target)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: gpu wheels: {target} "), result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name not in ("python",)) == before
    assert not (tmp_path / "pip.log").exists()  # refused before anything ran


def test_gpu_wheels_replaces_only_its_own_wheels(tmp_path):
    dest = tmp_path / "whl"
    first = gpu_wheels(tmp_path, dest)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in dest.iterdir()) == [".smolalign-gpu-wheels", "tokenizer",
                                                      "trl-1.16.0-py3-none-any.whl"]
    (dest / "trl-1.15.0-py3-none-any.whl").write_text("last time's\n")  # a stale version goes
    again = gpu_wheels(tmp_path, dest)
    assert again.returncode == 0, again.stderr
    assert not (dest / "trl-1.15.0-py3-none-any.whl").exists() and (dest / "trl-1.16.0-py3-none-any.whl").exists()
    (dest / "notes.txt").write_text("mine\n")  # something the script did not write: refused, all kept
    refused = gpu_wheels(tmp_path, dest)
    assert refused.returncode == 2 and "notes.txt" in refused.stderr
    assert (dest / "notes.txt").exists() and (dest / "trl-1.16.0-py3-none-any.whl").exists()


# ---- no part can end the run; the rehearsal's verdict ----
@pytest.mark.slow
def test_a_failing_part_becomes_an_error_record_and_the_run_goes_on(tmp_path, monkeypatch):
    """Issue 28 as it struck: small_config() without a pad id raised in the logits part, and main() let the
    exception end the run, so a GPU run stopped after the environment record. That config is put back here (the
    real AssertionError of torch's embedding): the part becomes an error record with its traceback, the throughput
    grid after it still runs and is on disk, and the rehearsal fails naming the part."""
    from transformers import SmolLM3Config

    g = gpu_check()
    monkeypatch.setattr(g, "small_config", lambda: SmolLM3Config(vocab_size=49152, hidden_size=64, num_hidden_layers=2,
                                                                 num_attention_heads=4, num_key_value_heads=2))
    out = tmp_path / "rehearsal.json"
    rc = g.main(["--rehearsal", "--parts", "logits,throughput", "--lengths", "64", "--out", str(out),
                 "--workdir", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    [logits] = data["packed_logits"]
    assert logits["status"] == "error: AssertionError: Padding_idx must be within num_embeddings", logits
    assert "torch/nn/modules/sparse.py" in logits["traceback"]  # where it was raised
    grid = {(r["attn_implementation"], r["activation_checkpointing"]): r["status"] for r in data["throughput"]}
    assert grid == {("sdpa", False): "ok", ("sdpa", True): "ok",
                    ("flash_attention_2", False): "skipped: flash-attn is not installed",
                    ("flash_attention_2", True): "skipped: flash-attn is not installed"}
    assert rc == 1
    problems = g.rehearsal_problems(data, ["logits", "throughput"])
    assert "packed_logits: no ok record" in problems
    assert "packed_logits: error: AssertionError: Padding_idx must be within num_embeddings" in problems
    assert not any(p.startswith("throughput") for p in problems)


def test_one_configuration_failing_does_not_stop_the_grid(tmp_path):
    """An attention implementation transformers does not know raises inside one configuration; the others run."""
    g = gpu_check()
    report = g.Report(tmp_path / "gpu-check.json", {"peak_bf16_tflops": None})
    g.measure_throughput(report, g.Budget(600), lengths=(32,), steps=1, device="cpu", config=rehearsal_config(g),
                         implementations=("no_such_attention", "sdpa"))
    records = json.loads((tmp_path / "gpu-check.json").read_text())["throughput"]
    assert [r["attn_implementation"] for r in records] == ["no_such_attention"] * 2 + ["sdpa"] * 2
    assert all(r["status"].startswith("error: ") and r["traceback"] for r in records[:2]), records[:2]
    assert [r["status"] for r in records[2:]] == ["ok", "ok"]


def test_the_rehearsal_passes_only_when_every_part_wrote_ok_and_nothing_else():
    g = gpu_check()
    parts = ["logits", "throughput", "stages"]

    def report(**changes):
        data = {"environment": {"carried": {"dir": "/site", "distributions": {"trl": "1.16.0"}, "not_in_use": {}},
                                "imports": {"trl": "ok", "liger_kernel.transformers": "ok"}},
                "vllm_parity": [],
                "packed_logits": [{"attn_implementation": "sdpa", "rows": "bfd", "status": "ok"},
                                  {"attn_implementation": "flash_attention_2",
                                   "status": "skipped: flash-attn is not installed"}],
                "throughput": [{"seq_length": 256, "attn_implementation": "sdpa", "activation_checkpointing": True,
                                "status": "ok"}],
                "stages": [{"stage": "sft", "seq_length": 512, "status": "ok"}]}
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                data[section][field] = value
            else:
                data[section] = value
        return data

    assert g.rehearsal_problems(report(), parts) == []
    late = {"seq_length": 256, "attn_implementation": "sdpa", "activation_checkpointing": True,
            "status": "skipped: time budget (needs ~25 s, 13 s left)"}
    assert g.rehearsal_problems(report(throughput=[late]), parts) == [
        "throughput: no ok record",
        "throughput: sdpa 256 tokens checkpointing: skipped: time budget (needs ~25 s, 13 s left)"]
    assert g.rehearsal_problems(report(stages=[{"status": "skipped: not installed: trl, datasets"}]), parts) == [
        "stages: no ok record", "stages: skipped: not installed: trl, datasets"]
    assert g.rehearsal_problems(report(stages=[]), parts) == ["stages: no ok record"]
    crashed = {"status": "error: AssertionError: Padding_idx must be within num_embeddings", "traceback": "..."}
    assert g.rehearsal_problems(report(packed_logits=[crashed]), parts) == [
        "packed_logits: no ok record",
        "packed_logits: error: AssertionError: Padding_idx must be within num_embeddings"]
    assert g.rehearsal_problems(report(environment__carried=None), parts) == [
        "environment: no carried wheels: run it as `make gpu-check` runs it (scripts/gpu_check.sh)"]
    shadowed = {"dir": "/site", "distributions": {"transformers": "5.23.0"}, "not_in_use": {"transformers": "5.17.0"}}
    assert g.rehearsal_problems(report(environment__carried=shadowed), parts) == [
        "environment: carried wheels not first on the path: {'transformers': '5.17.0'}"]
    broken = {"liger_kernel.transformers": "error: ImportError: cannot import name 'x' from 'triton'"}
    assert g.rehearsal_problems(report(environment__imports=broken), parts) == [
        "environment: import liger_kernel.transformers: error: ImportError: cannot import name 'x' from 'triton'"]
    assert g.rehearsal_problems(report(), ["logits"]) == []  # a part not asked for is not judged


# ---- scripts/gpu_check.sh (`make gpu-check`): carried wheels installed into a private target, first on the path ----
def make_wheel(directory, name: str, version: str, files: dict[str, str], tag: str = "py3-none-any"):
    """A real wheel (zip with METADATA, WHEEL and RECORD) that pip installs."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return wheel


def run_gpu_check_sh(tmp_path, *args, env=None):
    return subprocess.run(["bash", "scripts/gpu_check.sh", sys.executable, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "GPU_WHEELS": str(tmp_path / "wheels"),
                                                       "GPU_SITE": str(tmp_path / "site"), **(env or {})})


@pytest.mark.slow
def test_make_gpu_check_installs_the_carried_wheels_first_on_the_path(tmp_path):
    """A carried wheel of a distribution this venv also has (wonderwords, at a version nobody has) must be the
    one the script sees: installed with pip --no-index --no-deps --target into the private site, that site
    before the venv's packages. The site is what `make gpu-check` replaces next time, and only it."""
    (tmp_path / "wheels").mkdir()
    make_wheel(tmp_path / "wheels", "wonderwords", "0.0.1", {"wonderwords_probe.py": "CARRIED = True\n"})
    out = tmp_path / "rehearsal.json"
    result = run_gpu_check_sh(tmp_path, "--rehearsal", "--parts", "", "--out", str(out))
    assert "1 carried wheels from" in result.stdout, result.stdout + result.stderr
    carried = json.loads(out.read_text())["environment"]["carried"]
    assert carried == {"dir": str(tmp_path / "site"), "distributions": {"wonderwords": "0.0.1"}, "not_in_use": {}}
    assert (tmp_path / "site/wonderwords_probe.py").is_file() and (tmp_path / "site/.smolalign-gpu-site").is_file()
    assert not (tmp_path / "site.tmp").exists()
    assert "carried" not in result.stderr  # no problem with the carried wheels in the verdict


def test_carried_wheels_not_first_on_the_path_are_named(tmp_path, monkeypatch):
    """What the old `make gpu-check` did (the wheels installed, the script run without them on its path): the
    carried distributions the process gets from elsewhere are named, with the version it gets instead."""
    from importlib import metadata

    site = tmp_path / "site"
    (site / "wonderwords-0.0.1.dist-info").mkdir(parents=True)
    monkeypatch.setenv("SMOLALIGN_GPU_SITE", str(site))
    carried = gpu_check().carried_wheels()
    assert carried["not_in_use"] == {"wonderwords": metadata.version("wonderwords")} != {"wonderwords": "0.0.1"}


def test_make_gpu_check_refuses_wheels_for_another_python_in_one_line(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels/regex-2026.12.2-cp399-cp399-manylinux_2_17_x86_64.whl").write_bytes(b"not read")
    result = run_gpu_check_sh(tmp_path, "--rehearsal")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: gpu-check: ") and "is for Python 3.99 and" in line and "GPU_PYVER=" in line
    assert not (tmp_path / "site").exists() and not (tmp_path / "site.tmp").exists()


def test_make_gpu_check_leaves_a_site_it_did_not_make(tmp_path):
    (tmp_path / "wheels").mkdir()
    make_wheel(tmp_path / "wheels", "wonderwords", "0.0.1", {"wonderwords_probe.py": ""})
    (tmp_path / "site").mkdir()
    (tmp_path / "site/mine.txt").write_text("mine\n")
    result = run_gpu_check_sh(tmp_path, "--rehearsal")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "was not made by this script" in result.stderr and (tmp_path / "site/mine.txt").read_text() == "mine\n"
