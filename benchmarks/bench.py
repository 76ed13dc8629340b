"""Benchmarks, as ratios against a baseline measured in the same process (`make bench`).

    python benchmarks/bench.py [--rows 2000] [--train-steps 4] [--out runs/bench]

1. data path: our tokenize + assistant mask + BFD pack, against TRL's own SFT data path on the same
   rows, in tokens/s; both single-process, both from conversational rows to packed, labelled rows.
   TRL is called through its public API: constructing an `SFTTrainer` with assistant_only_loss and
   BFD packing prepares the dataset (the model is loaded before the clock starts).
2. packing efficiency (non-pad share) of BFD and wrapped against the 100% limit, on log-normal
   SFT-like document lengths.
3. training: tokens/s of packed + padding-free batches against padded batches on a log-normal spread
   of document lengths (SFT data is), with as many documents per step in both (a padded batch of one
   document would have no padding and measure nothing), same model (SmolLM2-135M on CPU), counting
   only real (non-pad) tokens.
Results are printed as a table and written to <out>/bench.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

from pipeline.core.chat import DEFAULT_CUTOFF, DEFAULT_DATE, install_template, template_kwargs

REPO = Path(__file__).resolve().parent.parent


def demo_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` conversations drawn from the shipped demo data (both modes, multi-turn, tools)."""
    rows = []
    for name, thinking in (("chat_no_think.jsonl", False), ("reasoning.jsonl", True), ("tools.jsonl", False)):
        for line in (REPO / "data/demo" / name).read_text().splitlines():
            row = json.loads(line)
            rows.append({"messages": row["messages"], "thinking": thinking})
    rng = random.Random(seed)
    return [rng.choice(rows) for _ in range(n)]


def bench_data_path(tokenizer, rows: list[dict], seq_length: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pipeline.data.packing import pack, packing_stats
    from pipeline.data.rows import Rendering, tokenize_row, validate_conversation

    rendering = Rendering(DEFAULT_DATE, DEFAULT_CUTOFF, assistant_only=True)
    t0 = time.perf_counter()
    tokenized = []
    for r in rows:
        validate_conversation(r["messages"], r["thinking"])
        tokenized.append(tokenize_row(tokenizer, r["messages"], r["thinking"], rendering))
    ours = pack(Dataset.from_list(tokenized), seq_length, "bfd")
    ours_s = time.perf_counter() - t0
    tokens = packing_stats(ours, seq_length)["tokens"]

    # TRL: the same rows as conversational data, the same template kwargs, its own preparation.
    conv = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": template_kwargs(r["thinking"])}
                              for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_length=seq_length, packing=True, packing_strategy="bfd",
                         assistant_only_loss=True, report_to="none", bf16=False)
        model = AutoModelForCausalLM.from_pretrained(_tiny())
        t0 = time.perf_counter()
        theirs = SFTTrainer(model=model, args=args, train_dataset=conv, processing_class=tokenizer).train_dataset
        trl_s = time.perf_counter() - t0
    trl_tokens = sum(len(x) for x in theirs["input_ids"])
    return {"rows": len(rows), "seq_length": seq_length, "ours_tokens": tokens, "trl_tokens": trl_tokens,
            "ours_tokens_per_s": round(tokens / ours_s), "trl_tokens_per_s": round(trl_tokens / trl_s),
            "ratio_ours_over_trl": round((tokens / ours_s) / (trl_tokens / trl_s), 3)}


def bench_packing(seq_length: int = 4096, n: int = 5000) -> dict:
    from datasets import Dataset

    from pipeline.data.packing import pack, packing_stats

    rng = random.Random(0)
    lengths = [min(seq_length, max(16, int(rng.lognormvariate(6.2, 0.9)))) for _ in range(n)]
    docs = Dataset.from_list([{"input_ids": [1] * k, "labels": [1] * k} for k in lengths])
    out = {}
    for strategy in ("bfd", "wrapped"):
        t0 = time.perf_counter()
        stats = packing_stats(pack(docs, seq_length, strategy), seq_length)
        out[strategy] = {"efficiency": stats["efficiency"], "limit": 1.0, "rows": stats["packed_rows"],
                         "seconds": round(time.perf_counter() - t0, 2)}
    return {"documents": n, "seq_length": seq_length, **out}


def lognormal_documents(n: int, seq_length: int, seed: int = 0) -> list[dict]:
    """SFT-like document lengths (log-normal, median ~seq_length/8, long tail, capped), token ids
    drawn from the vocabulary, every token trained: only the lengths matter for this benchmark."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        k = min(seq_length, max(16, int(rng.lognormvariate(math.log(seq_length / 8), 0.9))))
        ids = [rng.randrange(100, 40000) for _ in range(k)]
        docs.append({"input_ids": ids, "labels": ids})
    return docs


def bench_training(docs: list[dict], steps: int, seq_length: int) -> dict:
    """Same documents, same model: BFD-packed padding-free rows vs padded batches holding as many
    documents per step as a packed row does on average (each batch padded to its longest document)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pipeline.core.models import resolve_model
    from pipeline.data.packing import pack

    path = resolve_model("embedded:smollm2-135m-instruct")
    tokenizer = install_template(AutoTokenizer.from_pretrained(path))
    tokenized = Dataset.from_list(docs)
    packed = pack(tokenized, seq_length, "bfd")
    padded_batch = max(1, round(len(tokenized) / len(packed)))  # documents per packed row, on average
    results = {}
    for name, data, batch, padding_free in (("packed_padding_free", packed, 1, True),
                                            ("padded", tokenized, padded_batch, False)):
        with tempfile.TemporaryDirectory() as tmp:
            args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, bf16=False,
                             padding_free=padding_free, dataset_kwargs={"skip_prepare_dataset": True},
                             max_length=None, report_to="none", logging_steps=1, save_strategy="no",
                             include_num_input_tokens_seen="non_padding", disable_tqdm=True)
            model = AutoModelForCausalLM.from_pretrained(path)
            model.config.use_cache = False
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            results[name] = {"batch": batch, "steps": steps, "real_tokens": trainer.state.num_input_tokens_seen,
                             "tokens_per_s": round(trainer.state.num_input_tokens_seen / seconds, 1)}
    results["ratio_packed_over_padded"] = round(results["packed_padding_free"]["tokens_per_s"]
                                                / results["padded"]["tokens_per_s"], 3)
    return results


def _tiny() -> str:
    from pipeline.core.models import resolve_model

    return resolve_model("embedded:tiny-smollm3")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = install_template(AutoTokenizer.from_pretrained(_tiny()))
    rows = demo_rows(args.rows)
    report = {"data_path": bench_data_path(tokenizer, rows, 2048), "packing": bench_packing(),
              "training": bench_training(lognormal_documents(400, 2048, seed=1), args.train_steps, 2048)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    d, p, t = report["data_path"], report["packing"], report["training"]
    print(f"data path  ours {d['ours_tokens_per_s']:>9} tok/s  TRL {d['trl_tokens_per_s']:>9} tok/s  "
          f"ratio {d['ratio_ours_over_trl']}")
    print(f"packing    BFD {p['bfd']['efficiency']:.2%}  wrapped {p['wrapped']['efficiency']:.2%}  (limit 100%)")
    print(f"training   packed {t['packed_padding_free']['tokens_per_s']} tok/s  padded {t['padded']['tokens_per_s']} "
          f"tok/s  ratio {t['ratio_packed_over_padded']}")
    print(f"-> {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
