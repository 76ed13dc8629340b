"""Generation backends shared by eval/ and synth/: transformers (CPU or one GPU), vLLM offline
(GPU machines), and an OpenAI-compatible HTTP client (e.g. `vllm serve` on other machines).

Every backend gets the prompt as *text rendered by the checkpoint's own chat template* (ours,
shipped with every checkpoint we write) through the Hugging Face tokenizer, so a prompt is
byte-identical whichever backend runs it and identical to what training rendered. Generation never
packs sequences (a KV cache would let packed documents see each other).
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from pipeline.chat import DEFAULT_CUTOFF, DEFAULT_DATE, END_OF_TURN, template_kwargs
from pipeline.errors import UserError


@dataclass
class Request:
    messages: list[dict[str, Any]]
    enable_thinking: bool = True
    tools: list[dict] | None = None
    prefill: str = ""  # the assistant turn starts with this (e.g. RULER's answer prefix)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 4096
    seed: int = 0


@dataclass
class Renderer:
    """Renders requests with the model's template and the recipe's fixed date."""

    tokenizer: Any
    today_date: str = DEFAULT_DATE
    knowledge_cutoff: str = DEFAULT_CUTOFF

    def __call__(self, request: Request) -> str:
        kwargs = template_kwargs(request.enable_thinking, today_date=self.today_date,
                                 knowledge_cutoff=self.knowledge_cutoff, xml_tools=request.tools)
        prompt = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True,
                                                    **kwargs)
        return prompt + request.prefill


def end_of_turn(tokenizer) -> str:
    return END_OF_TURN if END_OF_TURN in tokenizer.get_vocab() else tokenizer.eos_token


class TransformersBackend:
    """Batched `generate` with left padding; requests sorted by length so batches pad little."""

    def __init__(self, model_path: str, dtype: str = "float32", batch_size: int = 8, renderer_kwargs=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.batch_size = batch_size
        self.render = Renderer(self.tokenizer, **(renderer_kwargs or {}))
        self.stop_id = self.tokenizer.convert_tokens_to_ids(end_of_turn(self.tokenizer))

    def generate(self, requests: list[Request], sampling: Sampling, desc: str = "generating") -> list[Completion]:
        import torch

        prompts = [self.render(r) for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.model.device)
            torch.manual_seed(sampling.seed + start)
            sample = sampling.temperature > 0
            with torch.no_grad():
                generated = self.model.generate(
                    **batch, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                    temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
                    top_k=None, eos_token_id=self.stop_id, pad_token_id=self.tokenizer.pad_token_id,
                    use_cache=True)  # whatever the checkpoint's config says: without it, decoding is quadratic
            new = generated[:, batch["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                stopped = self.stop_id in ids
                ids = ids[:ids.index(self.stop_id)] if stopped else ids
                out[i] = Completion(self.tokenizer.decode(ids, skip_special_tokens=False), "stop" if stopped else "length",
                                    int(batch["attention_mask"][row].sum()), len(ids) + int(stopped))
            bar.update(len(idx))
        bar.close()
        return out


class VLLMBackend:
    """vLLM offline engine on the GPUs of this machine (tensor parallel across them)."""

    def __init__(self, model_path: str, dtype: str = "bfloat16", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, seed: int = 0,
                 renderer_kwargs=None):
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("backend `vllm` needs vLLM, in its own environment on a GPU machine: "
                               "`pip install -e '.[vllm]'` in a fresh venv (it pins its own torch)") from None
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed)
        self.render = Renderer(self.tokenizer, **(renderer_kwargs or {}))

    def generate(self, requests: list[Request], sampling: Sampling, desc: str = "generating") -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                                max_tokens=sampling.max_new_tokens, stop=[end_of_turn(self.tokenizer)])
        prompts = [TokensPrompt(prompt_token_ids=self.tokenizer(self.render(r), add_special_tokens=False).input_ids)
                   for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=True)
        return [Completion(o.outputs[0].text, "stop" if o.outputs[0].finish_reason == "stop" else "length",
                           len(o.prompt_token_ids), len(o.outputs[0].token_ids)) for o in outputs]


class OpenAIBackend:
    """Text completions from an OpenAI-compatible server (`vllm serve MODEL`), prompts rendered here."""

    def __init__(self, model_path: str, base_url: str, served_name: str | None = None, concurrency: int = 32,
                 timeout_s: float = 600, retries: int = 3, renderer_kwargs=None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.url = base_url.rstrip("/") + "/completions"
        self.model = served_name or model_path
        self.concurrency, self.timeout_s, self.retries = concurrency, timeout_s, retries
        self.render = Renderer(self.tokenizer, **(renderer_kwargs or {}))

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except OSError:
                if attempt == self.retries - 1:
                    raise
                time.sleep(2 ** attempt)
        raise AssertionError("unreachable")

    def generate(self, requests: list[Request], sampling: Sampling, desc: str = "generating") -> list[Completion]:
        stop = end_of_turn(self.tokenizer)

        def one(i_request):
            i, request = i_request
            body = {"model": self.model, "prompt": self.render(request), "max_tokens": sampling.max_new_tokens,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed + i,
                    "stop": [stop]}
            reply = self._post(body)
            choice, usage = reply["choices"][0], reply.get("usage", {})
            return Completion(choice["text"], "stop" if choice.get("finish_reason") == "stop" else "length",
                              usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(tqdm(pool.map(one, enumerate(requests)), total=len(requests), desc=desc, leave=False))


def make_backend(spec, model_path: str, dtype: str, seed: int = 0, renderer_kwargs=None):
    """The backend a recipe's `backend:` block asks for."""
    if spec.kind == "transformers":
        return TransformersBackend(model_path, dtype=dtype if dtype != "auto" else "float32",
                                   batch_size=spec.batch_size, renderer_kwargs=renderer_kwargs)
    if spec.kind == "vllm":
        return VLLMBackend(model_path, dtype=dtype, tensor_parallel_size=spec.tensor_parallel_size,
                           gpu_memory_utilization=spec.gpu_memory_utilization, max_model_len=spec.max_model_len,
                           seed=seed, renderer_kwargs=renderer_kwargs)
    return OpenAIBackend(model_path, base_url=spec.base_url, renderer_kwargs=renderer_kwargs)
