"""`make bench-synth`: our synth stage against the vLLM engine it drives, on vLLM's CPU build (.venv-vllm)
with the embedded SmolLM2-135M-Instruct, in generated tokens per second of wall time:

  offline pair (one process, one engine):   (1) raw `LLM.generate` over all prompts
                                            (2) our `synth-traces` stage, `backend: vllm`
  http pair (one process, one `vllm serve` on 127.0.0.1):
                                            (3) our stage, `backend: openai`
                                            (4) a raw asyncio client (aiohttp) at the same concurrency

Same prompts (a mix whose natural lengths run from a word to the token limit, as traces do), same
sampling (greedy: seeded sampling on the CPU build crashes once a prefill is split across steps, and
greedy makes every configuration generate the same tokens) and the same engine settings (the server is
given the offline engine's max_num_seqs and max_num_batched_tokens). Each pair runs in its own process,
after one untimed run of every prompt (the first run at a new batch shape is slower on the CPU build),
in the order raw, ours, ours, raw, so that a drift of the machine's load weighs on both;
the ratio is of the summed tokens over the summed seconds. The raw side gets its prompts already
rendered and tokenized; ours renders, tokenizes, keys, stores (fsync), filters and writes its rows in
its time, engine start excluded for both. Ours is also given for its generation phase alone (from its
first request to its last completion stored, as its summary.json records it): what is left is the
stage's fixed cost (reading prompts, the manifest, filters, rows), seconds per run, not per token.

    .venv-vllm/bin/python benchmarks/synth_stream.py [--max-new-tokens 128] [--repeats 2]

Writes runs/bench/synth_stream.json (and a log per pair beside it); prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "runs" / "bench"
MODEL = "embedded:smollm2-135m-instruct"
# vLLM 0.32's CPU defaults for its offline engine, given to the server too (its own are 128 and 2048)
MAX_NUM_SEQS, MAX_BATCHED_TOKENS = 256, 4096

TOPICS = ["the moon", "bread", "rain", "a bicycle", "the ocean", "coffee", "a library", "winter", "trees",
          "music", "a volcano", "honey", "chess", "the heart", "glass", "a river"]
# from a word to past any limit: the spread that makes a batch wait for its longest
ASKS = ["Answer with one word only: what colour is {}?", "In one short sentence, what is {}?",
        "Give three short facts about {}.", "Write a long, detailed essay about {}, with many paragraphs."]


def write_prompts(path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": ask.format(topic)}]} for topic in TOPICS for ask in ASKS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def recipe(prompts: Path, out: Path, max_new_tokens: int, backend: dict):
    from pipeline.core.recipe import load_recipe

    body = {"name": "bench", "stage": "synth-traces", "output_dir": str(out),
            "teacher": {"name_or_path": MODEL, "dtype": "float32"}, "backend": backend, "modes": ["no_think"],
            "prompts": {"sources": [{"path": str(prompts)}]},
            "sampling": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": max_new_tokens},
            "filters": {"decontaminate": False, "dedup": "none"}}
    path = out.with_suffix(".yaml")
    path.write_text(json.dumps(body))  # JSON is YAML
    return load_recipe(path)


def run_ours(prompts: Path, work: Path, tag: str, max_new_tokens: int, backend: dict) -> dict:
    """Our stage, whole (prompts read, keyed, generated, stored, filtered, rows written)."""
    import synth.stage as synth_stage
    from pipeline.core.summary import read_summary

    r = recipe(prompts, work / tag, max_new_tokens, backend)
    t0 = time.perf_counter()
    out = synth_stage.run(r)
    seconds = time.perf_counter() - t0
    generation = read_summary(out)["generation"]["this_run"]["teacher"]
    return {"config": "ours", "seconds": seconds, "tokens": generation["completion_tokens"],
            "prompts": generation["prompts"], "cut": generation["cut"], "generation_seconds": generation["seconds"]}


def rendered(prompts: Path, tokenizer_path: str, max_new_tokens: int) -> list[str]:
    """The prompts as our stage sends them: rendered by the model's template (the raw side starts from these)."""
    from transformers import AutoTokenizer

    import synth.stage as synth_stage
    from pipeline.generation import Renderer

    r = recipe(prompts, Path(tempfile.mkdtemp()) / "render", max_new_tokens, {"kind": "vllm", "enforce_eager": True})
    items = synth_stage.work_items(r, synth_stage.load_prompts(r), "teacher", MODEL)
    render = Renderer(AutoTokenizer.from_pretrained(tokenizer_path))
    return [render(synth_stage.request(it)) for it in items]


# ---- the offline pair --------------------------------------------------------------------------------
def offline_pair(prompts: Path, work: Path, max_new_tokens: int, repeats: int) -> list[dict]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    import synth.stage as synth_stage
    from pipeline.core.models import resolve_model
    from pipeline.generation import VLLMBackend

    path = resolve_model(MODEL)
    backend = VLLMBackend(path, dtype="float32", enforce_eager=True)  # the engine our stage builds
    backend.close = lambda: None  # shared by every run of the pair; stopped at the end
    synth_stage.make_backend = lambda *args, **kwargs: backend
    texts = rendered(prompts, path, max_new_tokens)
    token_prompts = [TokensPrompt(prompt_token_ids=backend.tokenizer(t, add_special_tokens=False).input_ids)
                     for t in texts]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, stop_token_ids=[backend.stop_id],
                            skip_special_tokens=False, spaces_between_special_tokens=False)
    backend.llm.generate(token_prompts, params, use_tqdm=False)  # warm-up: every batch shape the runs meet

    def raw() -> dict:
        t0 = time.perf_counter()
        outputs = backend.llm.generate(token_prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        return {"config": "raw", "seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                "prompts": len(outputs), "cut": sum(o.outputs[0].finish_reason == "length" for o in outputs)}

    runs = []
    for i, config in enumerate(abba(repeats)):
        runs.append(raw() if config == "raw" else
                    run_ours(prompts, work, f"offline-{i}", max_new_tokens, {"kind": "vllm", "enforce_eager": True}))
        print(json.dumps(runs[-1]), flush=True)
    backend.llm.llm_engine.engine_core.shutdown()
    return runs


# ---- the http pair -----------------------------------------------------------------------------------
def http_pair(prompts: Path, work: Path, max_new_tokens: int, repeats: int) -> list[dict]:
    from transformers import AutoTokenizer

    from pipeline.core.chat import END_OF_TURN
    from pipeline.core.models import resolve_model

    path = resolve_model(MODEL)
    port = free_port()
    log = open(OUT / "synth_stream-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
                               "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32",
                               "--seed", "0", "--max-num-seqs", str(MAX_NUM_SEQS),
                               "--max-num-batched-tokens", str(MAX_BATCHED_TOKENS)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_ready(url, server)
        texts = rendered(prompts, path, max_new_tokens)
        stop_id = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(END_OF_TURN)
        concurrency = 1024  # what our stage asks of this server (1 engine x 1024): both send every prompt at once
        backend = {"kind": "openai", "base_url": url, "served_model_name": path, "concurrency": concurrency}
        asyncio.run(raw_client(url, path, texts, max_new_tokens, concurrency, stop_id))  # warm-up, as offline
        runs = []
        for i, config in enumerate(abba(repeats)):
            if config == "raw":
                t0 = time.perf_counter()
                tokens, cut = asyncio.run(raw_client(url, path, texts, max_new_tokens, concurrency, stop_id))
                runs.append({"config": "raw", "seconds": time.perf_counter() - t0, "tokens": tokens,
                             "prompts": len(texts), "cut": cut})
            else:
                runs.append(run_ours(prompts, work, f"http-{i}", max_new_tokens, backend))
            print(json.dumps(runs[-1]), flush=True)
        return runs
    finally:
        os.killpg(server.pid, 9)
        server.wait()


async def raw_client(url: str, model: str, texts: list[str], max_new_tokens: int, concurrency: int,
                     stop_id: int) -> tuple[int, int]:
    """The least a client can do: every prompt sent with at most `concurrency` in flight, replies counted.
    The request body is the one our backend sends (the same stop and special tokens)."""
    import aiohttp

    from pipeline.core.chat import END_OF_TURN

    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(text: str) -> dict:
            body = {"model": model, "prompt": text, "max_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0,
                    "top_k": -1, "stop": [END_OF_TURN], "stop_token_ids": [stop_id], "skip_special_tokens": False}
            async with limit, session.post(url + "/completions", json=body) as resp:
                resp.raise_for_status()
                return await resp.json()

        replies = await asyncio.gather(*(one(t) for t in texts))
    return (sum(r["usage"]["completion_tokens"] for r in replies),
            sum(r["choices"][0]["finish_reason"] == "length" for r in replies))


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"vllm serve exited ({server.returncode}); see {OUT / 'synth_stream-server.log'}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=5):
                return
        except OSError:
            time.sleep(1)
    sys.exit(f"vllm serve not ready in {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def abba(repeats: int) -> list[str]:
    return ["raw", "ours", "ours", "raw"] * (repeats // 2) + (["raw", "ours"] if repeats % 2 else [])


# ---- the parent: one process per pair, then the table --------------------------------------------------
def totals(runs: list[dict], config: str) -> dict:
    mine = [r for r in runs if r["config"] == config]
    tokens, seconds = sum(r["tokens"] for r in mine), sum(r["seconds"] for r in mine)
    out = {"runs": len(mine), "tokens": tokens, "seconds": round(seconds, 2),
           "tokens_per_s": round(tokens / seconds, 2), "cut": sum(r["cut"] for r in mine),
           "prompts": sum(r["prompts"] for r in mine)}
    if config == "ours":  # the streaming loop alone: from the first request to the last completion stored
        generating = sum(r["generation_seconds"] for r in mine)
        out.update(generation_seconds=round(generating, 2), generation_tokens_per_s=round(tokens / generating, 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration per pair")
    parser.add_argument("--pair", choices=["offline", "http"], help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    prompts = work / "prompts.jsonl"
    write_prompts(prompts)
    if args.pair:
        pair = offline_pair if args.pair == "offline" else http_pair
        runs = pair(prompts, work, args.max_new_tokens, args.repeats)
        (OUT / f"synth_stream-{args.pair}.json").write_text(json.dumps(runs))
        return

    result = {"model": MODEL, "prompts": len(TOPICS) * len(ASKS), "max_new_tokens": args.max_new_tokens,
              "sampling": "greedy", "repeats": args.repeats, "cpus": os.cpu_count(),
              "load_average_before": os.getloadavg(), "pairs": {}}
    for pair in ("offline", "http"):
        print(f"{pair} pair ...", flush=True)
        with open(OUT / f"synth_stream-{pair}.log", "w") as log:
            subprocess.run([sys.executable, __file__, "--pair", pair, "--max-new-tokens", str(args.max_new_tokens),
                            "--repeats", str(args.repeats)], stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")})
        runs = json.loads((OUT / f"synth_stream-{pair}.json").read_text())
        raw, ours = totals(runs, "raw"), totals(runs, "ours")
        base = raw["tokens_per_s"]
        result["pairs"][pair] = {"raw": raw, "ours": ours, "ratio": round(ours["tokens_per_s"] / base, 3),
                                 "ratio_generation": round(ours["generation_tokens_per_s"] / base, 3), "runs": runs}
    result["load_average_after"] = os.getloadavg()
    (OUT / "synth_stream.json").write_text(json.dumps(result, indent=2))
    print(table(result))


def table(result: dict) -> str:
    names = {"offline": ("raw LLM.generate", "synth-traces, vllm backend"),
             "http": ("raw asyncio client", "synth-traces, openai backend")}
    lines = [f"{result['prompts']} prompts, greedy, max_new_tokens {result['max_new_tokens']}, "
             f"{result['repeats']} runs each; load average before {result['load_average_before'][0]:.1f}, after "
             f"{result['load_average_after'][0]:.1f} on {result['cpus']} CPUs",
             "| pair | baseline tok/s | ours tok/s | ours / baseline | its generation phase alone "
             "| tokens (baseline / ours) | cut at the limit |",
             "|---|---|---|---|---|---|---|"]
    for pair, p in result["pairs"].items():
        base, ours = names[pair]
        lines.append(f"| {base} vs {ours} | {p['raw']['tokens_per_s']:.1f} | {p['ours']['tokens_per_s']:.1f} | "
                     f"{p['ratio']:.3f}x | {p['ratio_generation']:.3f}x | "
                     f"{p['raw']['tokens']} / {p['ours']['tokens']} | "
                     f"{p['raw']['cut']} / {p['ours']['cut']} of {p['raw']['prompts']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
