"""Generation, shared by synth/ (teachers), merge/ (the sweep) and eval/: transformers (CPU or one GPU),
vLLM offline (GPU machines), and an OpenAI-compatible HTTP client (e.g. `vllm serve` on other machines).

    with make_backend(recipe.backend, model_path, dtype, seed=recipe.sampling.seed) as backend:
        completions = backend.generate([Request(messages, enable_thinking=True)], recipe.sampling)

vLLM is imported only when its backend starts (it lives in its own environment on GPU machines).

Every backend gets the prompt as *text rendered by the checkpoint's own chat template* (ours,
shipped with every checkpoint we write) through the Hugging Face tokenizer, so a prompt is
byte-identical whichever backend runs it and identical to what training rendered. Generation never
packs sequences (a KV cache would let packed documents see each other).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import http.client
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from pipeline.core.chat import DEFAULT_CUTOFF, DEFAULT_DATE, END_OF_TURN, template_kwargs
from pipeline.core.errors import UserError
from pipeline.core.redaction import remember
from pipeline.core.schema import Strict


class SamplingSpec(Strict):
    """SmolLM3's published defaults."""

    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(4096, gt=0)
    seed: int = 0


class BackendSpec(Strict):
    kind: Literal["transformers", "vllm", "openai"] = "transformers"
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, gt=0, description="vLLM context; above the checkpoint's native "
                                      "length, YaRN rope scaling is applied (SmolLM3: x2 for 128k).")
    hf_overrides: dict[str, Any] | None = Field(None, description="vLLM: config overrides, instead of the "
                                                "automatic YaRN scaling.")
    enforce_eager: bool = Field(False, description="vLLM: no CUDA graphs or torch.compile. Starts faster, decodes "
                                "slower; for short runs and vLLM's CPU build (engine start ~30 s instead of ~100 s).")
    base_url: str | None = Field(None, description="For `openai`: the `vllm serve` endpoint; `user:password@` in it "
                                  "is sent as HTTP basic auth and never shown.")
    served_model_name: str | None = Field(None, description="For `openai`: the model name the server serves "
                                          "(`vllm serve --served-model-name`); default the model path.")
    api_key_env: str | None = Field(None, description="For `openai`: the environment variable holding the API key "
                                    "(`vllm serve --api-key`); the key itself never goes in a recipe.")
    concurrency: int = Field(32, ge=1, description="For `openai`: requests in flight at once.")
    timeout_s: float = Field(600, gt=0, description="For `openai`: seconds to wait for one reply.")
    retry_budget_s: float = Field(600, ge=0, description="For `openai`: how long to keep retrying 429/5xx/"
                                  "connection errors (with backoff and Retry-After) before giving up.")
    batch_size: int = Field(8, ge=1, description="Prompts per batch for the transformers backend.")

    @model_validator(mode="after")
    def _url(self):
        if self.kind == "openai" and not self.base_url:
            raise ValueError("backend `openai` needs `base_url` (e.g. http://host:8000/v1)")
        if self.enforce_eager and self.kind != "vllm":
            raise ValueError(f"`enforce_eager` is a setting of backend `vllm`, not `{self.kind}` (for `openai`, "
                             "start the server with `--enforce-eager`)")
        return self


@dataclass
class Request:
    """One prompt: the conversation so far and what the template gets besides it, as a row's
    `chat_template_kwargs` carry it (tools, python tools, custom instructions)."""

    messages: list[dict[str, Any]]
    enable_thinking: bool = True
    tools: list[dict] | None = None  # xml_tools
    prefill: str = ""  # the assistant turn starts with this (e.g. RULER's answer prefix)
    python_tools: list | None = None
    custom_instructions: str | None = None

    @classmethod
    def of(cls, messages: list[dict[str, Any]], template: dict[str, Any], enable_thinking: bool,
           prefill: str = "") -> Request:
        """A request from a prompt and its template extras as pipeline.data.rows.prompt_of gives them (xml_tools,
        python_tools, custom_instructions): the one mapping synth's teacher and eval's model are sent through."""
        return cls(messages, enable_thinking=enable_thinking, tools=template.get("xml_tools"), prefill=prefill,
                   python_tools=template.get("python_tools"), custom_instructions=template.get("custom_instructions"))


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Renderer:
    """Renders requests with the model's template and the recipe's fixed date."""

    tokenizer: Any
    today_date: str = DEFAULT_DATE
    knowledge_cutoff: str = DEFAULT_CUTOFF

    def __call__(self, request: Request) -> str:
        kwargs = template_kwargs(request.enable_thinking, today_date=self.today_date,
                                 knowledge_cutoff=self.knowledge_cutoff, xml_tools=request.tools,
                                 python_tools=request.python_tools, custom_instructions=request.custom_instructions)
        prompt = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True,
                                                    **kwargs)
        return prompt + request.prefill


def end_of_turn(tokenizer) -> str:
    return END_OF_TURN if END_OF_TURN in tokenizer.get_vocab() else tokenizer.eos_token


class Backend:
    """What every backend shares: `with make_backend(...) as backend:` releases the model (and the
    accelerator memory it holds) when the block ends, so that a teacher and then a weak model, or
    several checkpoints in a row, never hold two engines at once."""

    def close(self) -> None:
        import gc

        for attribute in ("model", "llm"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TransformersBackend(Backend):
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

    def generate(self, requests: list[Request], sampling: SamplingSpec, desc: str = "generating") -> list[Completion]:
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
                text = self.tokenizer.decode(ids, skip_special_tokens=False)
                out[i] = Completion(text, "stop" if stopped else "length", int(batch["attention_mask"][row].sum()),
                                    len(ids) + int(stopped))
            bar.update(len(idx))
        bar.close()
        return out


class VLLMBackend(Backend):
    """vLLM offline engine on the GPUs of this machine (tensor parallel across them).

    Stops on the end-of-turn *token id*: vLLM drops special tokens when it detokenises by default,
    so a stop *string* "<|im_end|>" would never match. Special tokens are kept in the text, as the
    transformers backend keeps them, so `<think>` / `<tool_call>` survive whichever backend ran."""

    def __init__(self, model_path: str, dtype: str = "bfloat16", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, seed: int = 0,
                 hf_overrides: dict | None = None, enforce_eager: bool = False, renderer_kwargs=None):
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("backend `vllm` needs vLLM, in its own environment on a GPU machine: "
                               "`pip install -e '.[vllm]'` in a fresh venv (it pins its own torch)") from None
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        overrides = hf_overrides if hf_overrides is not None else context_overrides(model_path, max_model_len)
        self.llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed,
                       enforce_eager=enforce_eager, **({"hf_overrides": overrides} if overrides else {}))
        self.render = Renderer(self.tokenizer, **(renderer_kwargs or {}))

    def generate(self, requests: list[Request], sampling: SamplingSpec, desc: str = "generating") -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        stop_id = self.tokenizer.convert_tokens_to_ids(end_of_turn(self.tokenizer))
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                                max_tokens=sampling.max_new_tokens, stop_token_ids=[stop_id],
                                skip_special_tokens=False, spaces_between_special_tokens=False)
        prompts = [TokensPrompt(prompt_token_ids=self.tokenizer(self.render(r), add_special_tokens=False).input_ids)
                   for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=True)
        return [Completion(o.outputs[0].text, finish_reason(o.outputs[0].finish_reason),
                           len(o.prompt_token_ids), len(o.outputs[0].token_ids)) for o in outputs]

    def close(self) -> None:
        """Stops the engine, then vLLM's distributed state, then drops the references.

        The engine core runs in a process of its own that holds the weights and the KV cache; deleting
        `self.llm` leaves it running as long as any reference (a traceback, a cycle) survives, so it is
        shut down explicitly: the next model's engine must not start beside it."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except ImportError:
            pass
        super().close()


def context_overrides(model_path: str, max_model_len: int | None) -> dict | None:
    """YaRN rope scaling when `max_model_len` is past the checkpoint's native context (SmolLM3 is
    trained to 64k and reaches 128k with YaRN x2), in the `rope_parameters` form vLLM's
    `hf_overrides` takes; None when no scaling is needed. A model without RoPE cannot be stretched."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    native = getattr(config, "max_position_embeddings", None)
    if not max_model_len or not native or max_model_len <= native:
        return None
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if not rope:
        raise UserError(f"backend.max_model_len {max_model_len} is past {model_path}'s native context {native} and "
                        "the model has no rope parameters to scale; lower max_model_len or set backend.hf_overrides")
    rope.update(rope_type="yarn", factor=max_model_len / native, original_max_position_embeddings=native)
    return {"rope_parameters": rope}


class BackendError(UserError):
    """A generation server that refused a request or could not be reached in time."""


class OpenAIBackend(Backend):
    """Text completions from an OpenAI-compatible server (`vllm serve MODEL`), prompts rendered here.

    Requests are retried on 408/429/5xx and connection errors, with exponential backoff and jitter
    (or the server's Retry-After), for up to `retry_budget_s`; any other HTTP error (400: prompt
    plus max_tokens over the server's limit) is not retried. Every error names the URL and the
    server's own message. vLLM's extra parameters stop on the end-of-turn *token* and keep special
    tokens in the text, as the offline backends do."""

    def __init__(self, model_path: str, base_url: str, served_name: str | None = None, concurrency: int = 32,
                 timeout_s: float = 600, retry_budget_s: float = 600, api_key: str | None = None,
                 renderer_kwargs=None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        url, user_password = split_credentials(base_url.rstrip("/") + "/completions")
        self.url = url  # what messages show: without the password
        self.model = served_name or model_path
        self.concurrency, self.timeout_s, self.retry_budget_s = concurrency, timeout_s, retry_budget_s
        self.headers = {"Content-Type": "application/json"}
        if user_password and api_key:
            raise UserError(f"backend.base_url {url} carries user:password@ and backend.api_key_env an API key: both "
                            "go in the one Authorization header; keep one")
        if user_password:  # what a user:password@host URL means over HTTP (a proxy with basic auth)
            self.headers["Authorization"] = "Basic " + base64.b64encode(user_password.encode()).decode()
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.render = Renderer(self.tokenizer, **(renderer_kwargs or {}))

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        deadline, attempt = time.monotonic() + self.retry_budget_s, 0
        while True:
            attempt += 1
            try:
                req = urllib.request.Request(self.url, data=data, headers=self.headers)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return self._parse(resp.read())
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in (408, 429) and e.code < 500:
                    raise BackendError(f"{self.url}: HTTP {e.code} ({detail}); not retried: fix the request "
                                       "(e.g. prompt + max_new_tokens over the server's max_model_len)") from None
                problem, wait = f"HTTP {e.code} ({detail})", _retry_after(e.headers.get("Retry-After"))
            # refused, reset, timed out, or a reply cut short mid-body (http.client.IncompleteRead)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                problem, wait = f"{type(e).__name__}: {getattr(e, 'reason', e)}", None
            left = deadline - time.monotonic()
            if wait is not None and wait > left:  # waiting as asked would outlast the budget: no point trying
                raise BackendError(f"{self.url}: the server's Retry-After asks to wait {wait:.0f} s, more than the "
                                   f"{max(left, 0):.0f} s left of backend.retry_budget_s ({self.retry_budget_s:g} s); "
                                   f"gave up at once after {attempt} tries (last: {problem}); try later, or raise "
                                   "backend.retry_budget_s")
            wait = wait if wait is not None else min(60.0, 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            if time.monotonic() + wait > deadline:
                raise BackendError(f"{self.url}: gave up after {attempt} tries in {self.retry_budget_s:g} s "
                                   f"(backend.retry_budget_s); last: {problem}")
            time.sleep(wait)

    def _parse(self, raw: bytes) -> dict:
        try:
            reply = json.loads(raw)
            reply["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(f"{self.url}: the reply is not an OpenAI completion (no choices[0].text): "
                               f"{raw[:200]!r}") from None
        return reply

    def generate(self, requests: list[Request], sampling: SamplingSpec, desc: str = "generating") -> list[Completion]:
        stop = end_of_turn(self.tokenizer)
        stop_id = self.tokenizer.convert_tokens_to_ids(stop)

        def one(i_request):
            i, request = i_request
            body = {"model": self.model, "prompt": self.render(request), "max_tokens": sampling.max_new_tokens,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": -1,
                    "seed": sampling.seed + i, "stop": [stop], "stop_token_ids": [stop_id],
                    "skip_special_tokens": False}
            reply = self._post(body)
            choice, usage = reply["choices"][0], reply.get("usage", {})
            return Completion(choice["text"], finish_reason(choice.get("finish_reason")),
                              usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

        pool = ThreadPoolExecutor(self.concurrency)
        try:
            return list(tqdm(pool.map(one, enumerate(requests)), total=len(requests), desc=desc, leave=False))
        finally:  # on an error, requests not yet sent are dropped rather than waited for
            pool.shutdown(wait=True, cancel_futures=True)


def split_credentials(url: str) -> tuple[str, str | None]:
    """(`url` without `user:password@`, "user:password" or None). urllib would take the user info for
    part of the host name, and every message that names the URL would show the password."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    user_info, host = parts.netloc.rsplit("@", 1)
    user, _, password = user_info.partition(":")
    remember(password)  # a message quoting it from elsewhere is redacted too
    user_password = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), user_password


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The start of an error reply's body (the server's own message), even when it is cut short."""
    try:
        raw = error.read(500)
    except (OSError, http.client.HTTPException):
        return "reply cut short"
    return raw.decode("utf-8", "replace").strip()


def finish_reason(reason: str | None) -> str:
    """'stop' and 'length' as they are; anything else (abort, error, ...) kept, never read as a stop."""
    return reason or "unknown"


def make_backend(spec, model_path: str, dtype: str, seed: int = 0, renderer_kwargs=None):
    """The backend a recipe's `backend:` block asks for."""
    if spec.kind == "transformers":
        return TransformersBackend(model_path, dtype=dtype if dtype != "auto" else "float32",
                                   batch_size=spec.batch_size, renderer_kwargs=renderer_kwargs)
    if spec.kind == "vllm":
        return VLLMBackend(model_path, dtype=dtype, tensor_parallel_size=spec.tensor_parallel_size,
                           gpu_memory_utilization=spec.gpu_memory_utilization, max_model_len=spec.max_model_len,
                           seed=seed, hf_overrides=spec.hf_overrides, enforce_eager=spec.enforce_eager,
                           renderer_kwargs=renderer_kwargs)
    api_key = None
    if spec.api_key_env:
        api_key = os.environ.get(spec.api_key_env)
        if not api_key:
            raise UserError(f"backend.api_key_env: the environment variable {spec.api_key_env} is not set")
        remember(api_key)
    return OpenAIBackend(model_path, base_url=spec.base_url, served_name=spec.served_model_name,
                         concurrency=spec.concurrency, timeout_s=spec.timeout_s, retry_budget_s=spec.retry_budget_s,
                         api_key=api_key, renderer_kwargs=renderer_kwargs)
