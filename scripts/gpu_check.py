"""GPU checks that CI (CPU only) cannot make, recorded in one JSON (`make gpu-check`).

    python scripts/gpu_check.py [--out runs/gpu-check.json] [--steps 5]

(a) vLLM vs transformers on the embedded SmolLM2 model: the same prompt token ids, the same greedy
    completion, both stopping at <|im_end|> (needs vLLM in this environment; recorded as skipped if not).
(b) packed vs per-document logits with flash-attention 2: a BFD-packed row of several documents through
    TRL's padding-free collator (position_ids, no attention mask) against each document alone.
(c) tokens/s and MFU of SFT training steps on the SmolLM3-3B shape at 8k tokens (random init, bf16,
    activation checkpointing, Liger kernels when installed), model FLOPs = 6 x parameters x tokens.
Refuses (exit 2, one line) on a machine without a GPU. Never part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU


def check_vllm_parity() -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"status": "skipped", "why": "vLLM is not installed in this environment (pip install -e '.[vllm]')"}
    from eval.backends import Request, Sampling, TransformersBackend, VLLMBackend
    from pipeline.models import resolve_model

    path = resolve_model("embedded:smollm2-135m-instruct")
    requests = [Request([{"role": "user", "content": q}], enable_thinking=mode)
                for q in ("What is the capital of France?", "Write a haiku about the sea.", "2+2?")
                for mode in (True, False)]
    greedy = Sampling(temperature=0.0, top_p=1.0, max_new_tokens=64)
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


def check_packed_flash_attention() -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from pipeline.models import resolve_model
    from pipeline.packing import pack

    torch.manual_seed(0)
    docs = [{"input_ids": torch.randint(5, 1000, (n,)).tolist(), "labels": [1] * n} for n in (37, 301, 64, 18, 500)]
    row = pack(Dataset.from_list(docs), 1024, "bfd")[0]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([row])
    model = AutoModelForCausalLM.from_pretrained(resolve_model("embedded:tiny-smollm3"), dtype=torch.bfloat16,
                                                 attn_implementation="flash_attention_2").cuda().eval()
    worst = 0.0
    with torch.no_grad():
        inputs = {k: v.cuda() for k, v in batch.items() if k != "labels"}
        packed = model(**inputs, use_cache=False).logits[0].float()
        start = 0
        for n in row["seq_lengths"]:
            alone = model(torch.tensor([row["input_ids"][start:start + n]]).cuda(), use_cache=False).logits[0].float()
            worst = max(worst, (packed[start:start + n] - alone).abs().max().item())
            start += n
    return {"status": "ok" if worst < 0.05 else "mismatch", "documents": len(row["seq_lengths"]),
            "max_abs_logit_diff_bf16": worst}


def check_training_throughput(steps: int, seq_length: int = 8192) -> dict:
    import torch
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    config = SmolLM3Config(vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                           num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=65536,
                           tie_word_embeddings=True, no_rope_layer_interval=4)
    liger = False
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_smollm3

        apply_liger_kernel_to_smollm3()
        liger = True
    except ImportError:
        pass
    torch.manual_seed(0)
    model = SmolLM3ForCausalLM(config).to(torch.bfloat16).cuda()
    model.config._attn_implementation = "flash_attention_2"
    model.gradient_checkpointing_enable()
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, config.vocab_size, (1, seq_length), device="cuda")
    position_ids = torch.cat([torch.arange(n) for n in (3000, 2500, 1692, 1000)]).unsqueeze(0).cuda()  # 4 docs
    times = []
    for step in range(steps + 1):  # the first step warms up and is not counted
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, position_ids=position_ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    tokens_per_s = seq_length / (sum(times) / len(times))
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = 6 * params * tokens_per_s / 1e12
    return {"status": "ok", "gpu": name, "parameters": params, "seq_length": seq_length, "liger": liger,
            "activation_checkpointing": True, "tokens_per_s": round(tokens_per_s), "model_tflops": round(achieved, 1),
            "mfu": round(achieved / peak, 4) if peak else None, "peak_memory_gb":
            round(torch.cuda.max_memory_allocated() / 2**30, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu-check.json")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no GPU is visible on this machine; run it on a GPU node (it is never part of make test)",
              file=sys.stderr)
        return 2
    report = {}
    for name, check in (("vllm_parity", check_vllm_parity), ("packed_flash_attention", check_packed_flash_attention),
                        ("training_throughput", lambda: check_training_throughput(args.steps))):
        try:
            report[name] = check()
        except Exception as e:  # one failed check must not hide the others' results
            report[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(report[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"-> {args.out}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
