"""GPU checks that CI (CPU only) cannot make, recorded in one JSON (`make gpu-check`).

    python scripts/gpu_check.py [--out runs/gpu-check.json] [--steps 5] [--seq-length 8192]

(a) vLLM vs transformers on the embedded SmolLM2 model: the same prompt token ids, the same greedy
    completion, both stopping at <|im_end|> (needs vLLM in this environment; recorded as skipped if not).
(b) packed vs per-document logits: a BFD-packed row of several documents through TRL's padding-free
    collator (position_ids, no attention mask) against each document alone.
(c) tokens/s, MFU and peak memory of SFT training steps on the SmolLM3-3B shape at 8k tokens (random init,
    bf16, activation checkpointing, 4 packed documents), model FLOPs = 6 x parameters x tokens; once
    without and once with Liger kernels (the latter recorded as skipped when liger-kernel is not installed).

Attention: flash_attention_2 when flash-attn is installed, else transformers' sdpa, which builds the
block-diagonal causal mask of packed rows from position_ids when no attention mask is given
(masking_utils.find_packed_sequence_indices). The implementation used, and why, is in the JSON.
Refuses (exit 2, one line) on a machine without a GPU. Never part of `make test`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from importlib import metadata
from pathlib import Path

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU
PACKED_DOCS = (3000, 2500, 1692, 1000)  # documents of the throughput row, scaled to --seq-length


def attention_implementation() -> dict:
    """flash_attention_2 first; sdpa (packed rows masked from position_ids) when flash-attn is missing."""
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        return {"attn_implementation": "flash_attention_2"}
    return {"attn_implementation": "sdpa",
            "attn_fallback_reason": "flash-attn is not installed here (pip install -e '.[gpu]'); sdpa with the "
                                    "packed-document mask transformers builds from position_ids"}


def environment() -> dict:
    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "python": sys.version.split()[0],
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            **{dist: version(dist) for dist in ("transformers", "trl", "datasets", "peft", "accelerate",
                                               "liger-kernel", "flash-attn", "vllm")}}


def check_vllm_parity() -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return {"status": "skipped",
                "why": f"vLLM is not installed in this environment (pip install -e '.[vllm]'): {e}"}
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


def check_packed_attention(device: str = "cuda") -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from pipeline.models import resolve_model
    from pipeline.packing import pack

    attn = attention_implementation()
    torch.manual_seed(0)
    docs = [{"input_ids": torch.randint(5, 1000, (n,)).tolist(), "labels": [1] * n} for n in (37, 301, 64, 18, 500)]
    row = pack(Dataset.from_list(docs), 1024, "bfd")[0]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([row])
    model = AutoModelForCausalLM.from_pretrained(resolve_model("embedded:tiny-smollm3"), dtype=torch.bfloat16,
                                                 attn_implementation=attn["attn_implementation"]).to(device).eval()
    worst = 0.0
    with torch.no_grad():
        # all that the trainer passes: position_ids, flash-attention's cu_seq_lens/max_length, seq_idx
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
        packed = model(**inputs, use_cache=False).logits[0].float()
        start = 0
        for n in row["seq_lengths"]:
            alone = model(torch.tensor([row["input_ids"][start:start + n]], device=device),
                          use_cache=False).logits[0].float()
            worst = max(worst, (packed[start:start + n] - alone).abs().max().item())
            start += n
    return {"status": "ok" if worst < 0.05 else "mismatch", **attn,
            "attn_implementation_used": model.config._attn_implementation, "inputs": sorted(inputs),
            "documents": len(row["seq_lengths"]), "tokens": sum(row["seq_lengths"]),
            "max_abs_logit_diff_bf16": worst}


def smollm3_3b_config():
    from transformers import SmolLM3Config

    return SmolLM3Config(vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=65536,
                         tie_word_embeddings=True, no_rope_layer_interval=4)


def check_training_throughput(steps: int, seq_length: int = 8192, liger: bool = True, device: str = "cuda") -> dict:
    """Run without Liger before with it: Liger patches the SmolLM3 classes for the rest of the process."""
    import torch
    from transformers import SmolLM3ForCausalLM

    if liger:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_smollm3
        except ImportError as e:
            return {"status": "skipped", "why": f"liger-kernel is not installed (pip install -e '.[gpu]'): {e}"}
        apply_liger_kernel_to_smollm3()
    cuda = device.startswith("cuda")
    attn = attention_implementation()
    config = smollm3_3b_config()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no 12 GB float32 copy on the host first
        model = SmolLM3ForCausalLM._from_config(config, dtype=torch.bfloat16,
                                                attn_implementation=attn["attn_implementation"])
    model.gradient_checkpointing_enable()
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, config.vocab_size, (1, seq_length), device=device)
    lengths = [n * seq_length // sum(PACKED_DOCS) for n in PACKED_DOCS]
    lengths[-1] += seq_length - sum(lengths)
    position_ids = torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)
    times = []
    for step in range(steps + 1):  # the first step warms up and is not counted
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, position_ids=position_ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    tokens_per_s = seq_length / (sum(times) / len(times))
    name = torch.cuda.get_device_name() if cuda else device
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = 6 * params * tokens_per_s / 1e12
    report = {"status": "ok", "gpu": name, **attn, "attn_implementation_used": model.config._attn_implementation,
              "liger": liger, "parameters": params, "seq_length": seq_length, "documents": lengths,
              "activation_checkpointing": True, "optimizer": "AdamW (fused, bf16 states)", "timed_steps": len(times),
              "step_s": [round(t, 3) for t in times], "tokens_per_s": round(tokens_per_s),
              "model_tflops": round(achieved, 1), "mfu": round(achieved / peak, 4) if peak else None,
              "final_loss": round(loss.item(), 3),
              "peak_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
              "peak_memory_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 1) if cuda else None}
    del model, optimizer, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu-check.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq-length", type=int, default=8192)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no GPU is visible on this machine; run it on a GPU node (it is never part of make test)",
              file=sys.stderr)
        return 2
    report = {"environment": environment()}
    print("environment", json.dumps(report["environment"]), flush=True)
    checks = (("vllm_parity", check_vllm_parity), ("packed_attention", check_packed_attention),
              ("training_throughput", lambda: check_training_throughput(args.steps, args.seq_length, liger=False)),
              ("training_throughput_liger", lambda: check_training_throughput(args.steps, args.seq_length)))
    for name, check in checks:
        try:
            report[name] = check()
        except Exception as e:  # one failed check must not hide the others' results
            report[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(report[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"-> {args.out}")
    return 0 if all(report[name]["status"] in ("ok", "skipped") for name, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
