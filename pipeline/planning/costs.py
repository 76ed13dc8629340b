"""What a training run costs before it starts: parameters from a model's shape, memory per GPU under the
launcher's sharding, and tokens/s per GPU from a throughput table. Arithmetic only: no model loads.

    shape = model_shape("runs/demo/midtrain")              # config.json, or None when the model is not here
    memory_per_gpu(shape, dtype="bfloat16", sharding=("zero", 3), gpus=8, seq_length=65536, ...)
    tokens_per_second(shape, "h100", span=2048, measured=read_gpu_check("runs/gpu-check.json"))

Memory per GPU, for P parameters, b bytes per element of the model's dtype, N GPUs sharing the state:
- one process or DDP: weights b*P, gradients b*P, AdamW's two states b*P each (torch keeps them in the
  parameters' dtype; this is what `make gpu-check` measured on an H100: 24.3 GiB at 8k tokens, Liger, checkpointing).
- DeepSpeed ZeRO and FSDP (mixed precision): 16-bit weights and gradients, fp32 master weights and AdamW
  states (12 bytes a parameter), sharded over N: ZeRO-0 shards nothing, ZeRO-1 the optimizer, ZeRO-2 the gradients too,
  ZeRO-3 and FSDP full sharding everything; ZeRO-3/FSDP also gather one layer's weights at a time.
- activations, elements per token and layer saved for the backward pass of a Llama-style layer (norm
  inputs, q/k/v before and after rotary, attention output, the MLP's gate, up, activation and product):
  8*hidden + 3*kv + 4*intermediate. With activation checkpointing only each layer's input is kept
  (hidden per token and layer) and one layer is recomputed at a time. Attention itself (flash / sdpa) keeps
  no L x L matrix; `eager` does (heads x L x L per layer, two copies).
- logits: (b + 4) bytes per token and vocabulary entry (the logits and their fp32 upcast for the loss);
  none with Liger's fused linear cross-entropy, which never builds them whole.
- LoRA (`trainable`: the adapters' parameters, `lora_parameters`): the base weights are frozen, so they get no
  gradients and no optimizer states; the adapters are float32 (peft casts them up by default): 16 bytes a
  parameter (weights, gradients, two AdamW states), sharded like the rest. Activations are the same: the
  backward pass still carries gradients through every layer.
Compute per token (`lora_speedup`): full training does a forward (2P) and a backward for the activations (2P)
and for the weights (2P), plus the forward again with activation checkpointing; LoRA skips the frozen weights'
2P (and adds 6 x trainable), attention costing the same.
Checked against measured peaks: the H100 gpu-check figures (tests/test_plan.py) and the demo SFT run on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
# Dense bf16 TFLOP/s (vendor figures) and memory as torch reports it (`total capacity` in its OOM messages).
GPUS = {
    "h100": {"name": "H100 80GB", "peak_tflops": 989.0, "memory_gib": 79.1},
    "h200": {"name": "H200 141GB", "peak_tflops": 989.0, "memory_gib": 139.8},
    "a100": {"name": "A100 80GB", "peak_tflops": 312.0, "memory_gib": 79.1},
}
# The one training throughput we have measured (README, `scripts/gpu_check.py --steps 10`): SmolLM3-3B shape,
# one packed row of 8192 tokens holding 4 documents, activation checkpointing, Liger, fused AdamW, sdpa.
# Every other GPU kind, model and length is derived from it (FLOPs per token, peak TFLOP/s): an estimate.
MEASURED_H100 = {"gpu": "NVIDIA H100 80GB HBM3", "date_utc": "2026-11-23", "kind": "h100", "seq_length": 8192,
                 "documents": 4, "tokens_per_s": 12542, "mfu": 0.234, "peak_memory_gib": 24.3, "liger": True,
                 "activation_checkpointing": True, "parameters": 3_075_098_624}
# HuggingFaceTB/SmolLM3-3B's architecture (its config.json): the measured model, and what estimates assume
# when a recipe's model is not on this machine (said so in the plan).
SMOLLM3_3B = {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
              "num_key_value_heads": 4, "vocab_size": 128256, "tie_word_embeddings": True, "name": "SmolLM3-3B"}


# ----------------------------------------------------------------------------------------------
# The model's shape
# ----------------------------------------------------------------------------------------------
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings", "head_dim")


def model_shape(directory: str | Path) -> dict[str, Any] | None:
    """The architecture numbers of a checkpoint directory's config.json (None when there is none)."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    return {k: data[k] for k in SHAPE_KEYS if data.get(k) is not None} | {"name": data.get("_name_or_path") or
                                                                         str(directory)}


def _dims(shape: dict[str, Any]) -> tuple[int, int, int, int, int, int]:
    d, heads = shape["hidden_size"], shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or d // heads
    kv = shape.get("num_key_value_heads", heads) * head_dim
    return d, heads * head_dim, kv, shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]


def parameters(shape: dict[str, Any]) -> int:
    """Parameters of a Llama-style decoder (no biases): embeddings (+ an untied head), per layer q/k/v/o,
    gate/up/down and two norms, and the final norm. SmolLM3-3B: 3,075,098,624."""
    d, q, kv, inter, layers, vocab = _dims(shape)
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * inter + 2 * d
    embeddings = vocab * d * (1 if shape.get("tie_word_embeddings", True) else 2)
    return embeddings + layers * per_layer + d


# LoRA target module -> (input width, output width), from the model's dimensions (d, q, kv, inter).
LORA_MODULES = {"q_proj": ("d", "q"), "k_proj": ("d", "kv"), "v_proj": ("d", "kv"), "o_proj": ("q", "d"),
                "gate_proj": ("d", "inter"), "up_proj": ("d", "inter"), "down_proj": ("inter", "d")}


def lora_parameters(shape: dict[str, Any], r: int, targets: list[str] | str) -> tuple[int, list[str]]:
    """(the LoRA adapters' parameters, target names not counted): r x (in + out) per adapted linear layer.
    `all-linear` is every linear layer of the decoder but the output head (peft's rule)."""
    d, q, kv, inter, layers, _ = _dims(shape)
    width = {"d": d, "q": q, "kv": kv, "inter": inter}
    names = list(LORA_MODULES) if targets == "all-linear" else list(targets)
    known = [n for n in names if n in LORA_MODULES]
    per_layer = sum(r * (width[LORA_MODULES[n][0]] + width[LORA_MODULES[n][1]]) for n in known)
    return layers * per_layer, [n for n in names if n not in LORA_MODULES]


# ----------------------------------------------------------------------------------------------
# Memory per GPU
# ----------------------------------------------------------------------------------------------
def memory_per_gpu(shape: dict[str, Any], *, dtype: str, sharding: tuple[str, int], gpus: int, seq_length: int,
                   batch: int = 1, checkpointing: bool, liger: bool, attn_implementation: str = "sdpa",
                   capacity_gib: float | None = None, trainable: int | None = None) -> dict[str, Any]:
    """Bytes per GPU by part, in GiB, with and without activation checkpointing; `total_gib` is the one
    the recipe asks for. `sharding`: ("none", 0), ("zero", 1|2|3) or ("fsdp", 0). `trainable`: the LoRA
    adapters' parameters (None: every parameter trains)."""
    p, b = parameters(shape), DTYPE_BYTES[dtype]
    d, q, kv, inter, layers, vocab = _dims(shape)
    kind, stage = sharding
    n = max(gpus, 1)
    full = kind == "fsdp" or (kind == "zero" and stage == 3)
    if trainable is not None:  # LoRA: frozen weights in the model's dtype; fp32 adapters with their states
        weights = (2 * p / n if full else (2 if kind == "zero" else b) * p) + 4 * trainable / (n if full else 1)
        grads = 4 * trainable / (n if full or (kind == "zero" and stage >= 2) else 1)
        optimizer = 8 * trainable / (n if kind != "none" and (full or stage >= 1) else 1)
        gathered = 2 * (p - vocab * d) / layers if full else 0
    elif kind == "none":
        weights, grads, optimizer, gathered = b * p, b * p, 2 * b * p, 0
    else:
        weights = 2 * p / n if full else 2 * p
        grads = 2 * p / n if full or stage >= 2 else 2 * p
        optimizer = 12 * p / n if full or stage >= 1 else 12 * p  # ZeRO-0 shards nothing
        gathered = 2 * (p - vocab * d) / layers if full else 0  # one layer's weights gathered at a time
    tokens = seq_length * batch
    per_layer = (8 * d + 3 * kv + 4 * inter) * b * tokens
    if attn_implementation == "eager":
        per_layer += 2 * shape["num_attention_heads"] * seq_length * seq_length * batch * b
    logits = 0 if liger else (b + 4) * tokens * vocab
    without = layers * per_layer + logits
    with_ckpt = layers * d * b * tokens + per_layer + logits
    states = weights + grads + optimizer + gathered
    out = {
        "parameters": p, "trainable_parameters": p if trainable is None else trainable,
        "weights_gib": weights / GIB, "gradients_gib": grads / GIB,
        "optimizer_gib": optimizer / GIB, "gathered_layer_gib": gathered / GIB, "logits_gib": logits / GIB,
        "activations_checkpointed_gib": with_ckpt / GIB, "activations_full_gib": without / GIB,
        "total_checkpointed_gib": (states + with_ckpt) / GIB, "total_full_gib": (states + without) / GIB,
        "checkpointing": checkpointing,
    }
    out["total_gib"] = out["total_checkpointed_gib"] if checkpointing else out["total_full_gib"]
    if capacity_gib:
        out["capacity_gib"] = capacity_gib
        out["fits"] = out["total_gib"] <= 0.9 * capacity_gib  # allocator fragmentation, CUDA context, buffers
    return out


def launcher_sharding(launcher: dict[str, Any] | None) -> tuple[str, int]:
    """("zero", stage) / ("fsdp", 0) / ("none", 0) from an accelerate config (recipes/accelerate/*.yaml)."""
    if not launcher:
        return "none", 0
    if launcher.get("distributed_type") == "DEEPSPEED":
        return "zero", int((launcher.get("deepspeed_config") or {}).get("zero_stage", 2))  # accelerate's default
    if launcher.get("distributed_type") == "FSDP":
        return "fsdp", 0
    return "none", 0


# ----------------------------------------------------------------------------------------------
# Throughput
# ----------------------------------------------------------------------------------------------
def flops_per_token(shape: dict[str, Any], span: float) -> float:
    """Training FLOPs per token: 6 x parameters, plus causal attention over a document of `span` tokens
    (6 x layers x span x q width: QK^T and AV, forward and backward, half the square)."""
    d, q, kv, inter, layers, vocab = _dims(shape)
    return 6 * parameters(shape) + 6 * layers * span * q


def lora_speedup(shape: dict[str, Any], span: float, trainable: int, checkpointing: bool) -> float:
    """How much faster a LoRA step is than full training, per token, in compute: the frozen weights get no
    weight gradients (4P + 6 x trainable instead of 6P; 2P more each with checkpointing's second forward),
    attention costing the same (its backward has no weights; a third more with checkpointing). An estimate:
    measured throughput is of full training."""
    d, q, kv, inter, layers, vocab = _dims(shape)
    p, recompute = parameters(shape), 2 if checkpointing else 0
    attention = 6 * layers * span * q * (4 / 3 if checkpointing else 1)
    return ((6 + recompute) * p + attention) / ((4 + recompute) * p + 6 * trainable + attention)


def read_gpu_check(path: str | Path) -> dict[str, Any] | None:
    """The measured throughput `make gpu-check` wrote (`environment` + `throughput` rows), if any.
    A file of another layout, or with no usable row, is not used (None)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("throughput"), list):
        return None
    env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
    rows = [r for r in data["throughput"] if isinstance(r, dict) and r.get("status") == "ok"
            and _positive(r.get("tokens_per_s")) and _positive(r.get("seq_length"))]
    if not rows:
        return None
    return {"file": str(path), "gpu": env.get("gpu"), "date_utc": env.get("date_utc"), "rows": rows}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def gpu_kind(name: str | None) -> str | None:
    """'h100' / 'h200' / 'a100' from a device name such as 'NVIDIA H100 80GB HBM3'."""
    return next((k for k in GPUS if k in (name or "").lower()), None)


def tokens_per_second(shape: dict[str, Any], kind: str, span: float, *, checkpointing: bool = True,
                      liger: bool = True, measured: dict[str, Any] | None = None,
                      attn_implementation: str = "auto") -> dict[str, Any]:
    """Training tokens/s per GPU of `kind` for this model at documents of `span` tokens: from a measured
    row of `make gpu-check` on that kind when there is one, else from the H100 figure in this module;
    either way scaled by FLOPs per token to this shape and span (and by peak TFLOP/s to another kind)."""
    base, source = _base_row(kind, checkpointing, liger, measured, attn_implementation)
    base_shape = base.get("shape") or SMOLLM3_3B
    base_span = base["seq_length"] / base.get("documents", 1)
    achieved = flops_per_token(base_shape, base_span) * base["tokens_per_s"]  # FLOP/s on that GPU
    if base["kind"] != kind:
        achieved *= GPUS[kind]["peak_tflops"] / GPUS[base["kind"]]["peak_tflops"]
    tps = achieved / flops_per_token(shape, span)
    exact = base["kind"] == kind and base_span == span and base_shape == shape
    return {"tokens_per_s": tps, "source": source, "estimate": not exact,
            "basis": f"{base['tokens_per_s']:,.0f} tokens/s, {base.get('gpu')}, {base['seq_length']} tokens, "
                     f"{base.get('date_utc')}"}


# What `auto` picks on a GPU, best first (pipeline/training/train.py): flash-attn where it imports, else
# flex_attention.
AUTO_ON_GPU = ("flash_attention_2", "flex_attention")


def _base_row(kind: str, checkpointing: bool, liger: bool, measured: dict[str, Any] | None,
              attn_implementation: str = "auto"):
    measured_kind = gpu_kind(measured.get("gpu")) if measured else None
    if measured and measured_kind is None:  # no peak TFLOP/s to scale it by: its figure is not this GPU's
        return MEASURED_H100, (f"estimate from the one measured figure (H100, SmolLM3-3B shape, 8k tokens, "
                               f"2026-11-23): {measured['file']} was measured on {measured.get('gpu')}, which "
                               f"plan cannot scale to {GPUS[kind]['name']}")
    if measured:
        rows = [r for r in measured["rows"] if bool(r.get("activation_checkpointing", True)) == checkpointing]
        rows = rows or measured["rows"]
        # the recipe's attention: sdpa computes a packed row's full square, flex and flash skip masked blocks
        wanted = AUTO_ON_GPU if attn_implementation == "auto" else (attn_implementation,)
        rows = [r for r in rows if r.get("attn_implementation") in wanted] or rows
        rows = sorted(rows, key=lambda r: (bool(r.get("liger")) != liger, -r["seq_length"],
                                           _rank(wanted, r.get("attn_implementation"))))
        row = rows[0]
        return ({**row, "kind": measured_kind, "gpu": measured.get("gpu"), "date_utc": measured.get("date_utc")},
                f"measured by make gpu-check ({measured['file']}, {measured.get('gpu')}, {measured.get('date_utc')})")
    return MEASURED_H100, ("estimate from the one measured figure (H100, SmolLM3-3B shape, 8k tokens, "
                           "2026-11-23): scaled by FLOPs per token and peak TFLOP/s")


def _rank(wanted: tuple[str, ...], implementation: str | None) -> int:
    return wanted.index(implementation) if implementation in wanted else len(wanted)


def gpu_hours(tokens: float, tps: float) -> float:
    return tokens / tps / 3600 if tps else math.inf
