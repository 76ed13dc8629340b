"""Generation, shared by synth/ (teachers), merge/ (the sweep) and eval/: transformers (CPU or one GPU),
vLLM offline (GPU machines), and an OpenAI-compatible HTTP client (e.g. `vllm serve` on other machines).

    with make_backend(recipe.backend, model_path, dtype, seed=recipe.sampling.seed) as backend:
        completions = backend.generate([Request(messages, enable_thinking=True)], recipe.sampling)
        # or, as each finishes (synth): tags are the caller's, e.g. work items
        with closing(backend.stream(((item, request) for ...), recipe.sampling)) as finished:
            for item, completion in finished: ...

`stream` keeps the engine fed: the vLLM and HTTP backends send requests as the engine frees room for
them and hand back each completion as soon as it finishes, never waiting for a batch's longest one.
vLLM is imported only when its backend starts (it lives in its own environment on GPU machines).

Every backend gets the prompt as *text rendered by the checkpoint's own chat template* (ours,
shipped with every checkpoint we write) through the Hugging Face tokenizer, so a prompt is
byte-identical whichever backend runs it and identical to what training rendered. Generation never
packs sequences (a KV cache would let packed documents see each other).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import http.client
import itertools
import json
import os
import random
import re
import resource
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import closing
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
    concurrency: int | None = Field(None, ge=1, description="For `openai`: requests in flight at once. Default: "
                                    "what the server can take (its engines, read from its /metrics, x 1024 "
                                    "sequences each, vLLM's default max_num_seqs on H100/H200), else 256.")
    timeout_s: float = Field(3600, gt=0, description="For `openai`: seconds without a byte from the server before a "
                             "request is retried (a reply comes whole when its generation ends: a long trace "
                             "queued behind others takes long).")
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
    seed: int | None = None  # this request's sampling seed; None: the sampling spec's

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

    def generate(self, requests: list[Request], sampling: SamplingSpec, desc: str = "generating") -> list[Completion]:
        """One completion per request, in the requests' order."""
        out: list[Completion | None] = [None] * len(requests)
        with closing(self.stream(enumerate(requests), sampling)) as finished, \
                tqdm(total=len(requests), desc=desc, unit="prompt", leave=False) as bar:
            for i, completion in finished:
                out[i] = completion
                bar.update(1)
        return out

    def stream(self, requests: Iterable[tuple[Any, Request]], sampling: SamplingSpec
               ) -> Iterator[tuple[Any, Completion]]:
        """(tag, completion) for each (tag, request), in the order they finish. `requests` is read as the
        backend has room, so it can be a generator over millions. Close the iterator (`closing(...)`) when
        stopping early: requests still in the engine are dropped then.

        This default (the transformers backend, which has no continuous batching) runs chunks of
        `stream_chunk` requests through `generate`."""
        source = iter(requests)
        while chunk := list(itertools.islice(source, self.stream_chunk)):
            tags = [tag for tag, _ in chunk]
            yield from zip(tags, self.generate([request for _, request in chunk], sampling))

    stream_chunk = 64


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
        self.stop_id = self.tokenizer.convert_tokens_to_ids(end_of_turn(self.tokenizer))
        self._ids = itertools.count()

    def stream(self, requests: Iterable[tuple[Any, Request]], sampling: SamplingSpec
               ) -> Iterator[tuple[Any, Completion]]:
        """vLLM's own `LLM.generate` adds every prompt to the engine, then calls `llm_engine.step()` until
        none is left, keeping each finished output. This is that loop, with requests added while it runs:
        the engine always holds more unfinished requests than it can schedule (`max_num_seqs`), so a slot
        freed by a finished sequence is refilled at the next step (continuous batching), and each output
        is handed back the step it finishes. The engine core runs in its own process, so it keeps
        computing while we render the next prompts and store the last outputs. The step loop of the
        synchronous engine rather than vLLM's AsyncLLM: the same engine and scheduler, without an event
        loop in our code; and rather than `llm.generate` per chunk, which waits for each chunk's longest
        sequence. Adding only up to `in_flight` ahead means a list of millions is never rendered, nor
        held, up front."""
        engine = self.llm.llm_engine
        source, pending = iter(requests), {}
        in_flight = 2 * engine.vllm_config.scheduler_config.max_num_seqs
        try:
            while True:
                for tag, request in itertools.islice(source, in_flight - len(pending)):
                    request_id = f"smolalign-{next(self._ids)}"
                    engine.add_request(request_id, self._prompt(request), self._params(request, sampling))
                    pending[request_id] = tag
                if not pending:
                    return
                for output in engine.step():
                    if output.finished:
                        yield pending.pop(output.request_id), Completion(
                            output.outputs[0].text, finish_reason(output.outputs[0].finish_reason),
                            len(output.prompt_token_ids), len(output.outputs[0].token_ids))
        except GeneratorExit:  # the caller stopped early: the engine must not go on with our requests
            if pending:
                engine.abort_request(list(pending))
            raise

    def _prompt(self, request: Request):
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=self.tokenizer(self.render(request), add_special_tokens=False).input_ids)

    def _params(self, request: Request, sampling: SamplingSpec):
        from vllm import SamplingParams

        # Greedy decoding needs no seed; a seeded request gets a generator of its own, which vLLM's CPU
        # build cannot carry across a prefill split over steps (RuntimeError: CPU Generator does not use
        # offset): a greedy run is safe there at any size.
        seed = None if sampling.temperature == 0 else request.seed if request.seed is not None else sampling.seed
        return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=seed,
                              max_tokens=sampling.max_new_tokens, stop_token_ids=[self.stop_id],
                              skip_special_tokens=False, spaces_between_special_tokens=False)

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


class RequestRefused(BackendError):
    """The server refused one request for what it holds (HTTP 400, 413, 422: a prompt over its context);
    the other requests can go on."""


# HTTP statuses that judge the request, not the server or our settings (401, 403, 404 stop the run at once)
REFUSED = (400, 413, 422)


# Requests in flight when the recipe does not say: a full batch for every engine behind the server, as vLLM 0.32
# sizes one on H100/H200/B200 (`max_num_seqs` 1024; 256 on smaller GPUs, 128 on CPU). More than an engine runs
# wait in its queue at the cost of a socket, and refill a finished sequence's slot at its next step.
SEQUENCES_PER_ENGINE = 1024
# ...and where the server does not say how many engines it has (not vLLM, or metrics off)
DEFAULT_CONCURRENCY = 256
FILES_KEPT_FOR_THE_REST = 256  # open files the process needs besides its sockets (shards, model files, logs)


class OpenAIBackend(Backend):
    """Text completions from an OpenAI-compatible server (`vllm serve MODEL`), prompts rendered here.

    Requests are retried on 408/429/5xx and connection errors, with exponential backoff and jitter
    (or the server's Retry-After), for up to `retry_budget_s`; any other HTTP error (400: prompt
    plus max_tokens over the server's limit) is not retried. Every error names the URL and the
    server's own message. vLLM's extra parameters stop on the end-of-turn *token* and keep special
    tokens in the text, as the offline backends do."""

    def __init__(self, model_path: str, base_url: str, served_name: str | None = None, concurrency: int | None = None,
                 timeout_s: float = 3600, retry_budget_s: float = 600, api_key: str | None = None,
                 renderer_kwargs=None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        root, user_password = split_credentials(base_url.rstrip("/"))
        self.url = root + "/completions"  # what messages show: without the password
        self.model = served_name or model_path
        self.timeout_s, self.retry_budget_s = timeout_s, retry_budget_s
        self.headers = {"Content-Type": "application/json"}
        if user_password and api_key:
            raise UserError(f"backend.base_url {self.url} carries user:password@ and backend.api_key_env an API key: "
                            "both go in the one Authorization header; keep one")
        if user_password:  # what a user:password@host URL means over HTTP (a proxy with basic auth)
            self.headers["Authorization"] = "Basic " + base64.b64encode(user_password.encode()).decode()
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.render = Renderer(self.tokenizer, **(renderer_kwargs or {}))
        self.stop = end_of_turn(self.tokenizer)
        self.stop_id = self.tokenizer.convert_tokens_to_ids(self.stop)
        self.concurrency = fit_open_files(concurrency or self._server_capacity(root))

    def _server_capacity(self, root: str) -> int:
        """DEFAULT_CONCURRENCY, or SEQUENCES_PER_ENGINE for each engine a vLLM server reports in its
        Prometheus metrics (`vllm:cache_config_info` has one line per engine: data parallel ranks)."""
        metrics = re.sub(r"/v1$", "", root) + "/metrics"
        try:
            request = urllib.request.Request(metrics, headers=self.headers)
            with urllib.request.urlopen(request, timeout=10) as resp:
                text = resp.read(16 << 20).decode("utf-8", "replace")
            engines = set(re.findall(r'^vllm:cache_config_info\{[^}\n]*\bengine="(\d+)"', text, re.M))
            why = "no vllm:cache_config_info in it"
        except (OSError, http.client.HTTPException) as e:
            engines, why = set(), _problem(e)
        if engines:
            n = len(engines) * SEQUENCES_PER_ENGINE
            print(f"backend.concurrency: {n} requests in flight ({len(engines)} engine(s) serve {root}, "
                  f"{SEQUENCES_PER_ENGINE} each)")
            return n
        print(f"backend.concurrency: {metrics} does not say how many engines serve it ({why}); sending "
              f"{DEFAULT_CONCURRENCY} requests at once. Set backend.concurrency to the server's max_num_seqs x its "
              "data-parallel size to keep it full")
        return DEFAULT_CONCURRENCY

    def stream(self, requests: Iterable[tuple[Any, Request]], sampling: SamplingSpec
               ) -> Iterator[tuple[Any, Completion]]:
        """Up to `concurrency` requests in flight over the whole list: the next is sent as soon as any
        reply arrives, and each reply is handed back as it arrives. Asynchronous (asyncio and aiohttp),
        so that the thousands in flight a data-parallel server takes cost sockets, not threads. The
        event loop runs inside this generator between its yields: what the caller does with a reply
        (store it) happens while the server goes on generating the requests in flight.

        A request the server refuses for what it holds (HTTP 400: over its context) is left out, the
        others go on, and the refusals are raised at the end. Any other failure (the retry budget spent on
        a server that is gone, a 401 or 404) stops new requests; the replies to those in flight are still
        received and handed back, then it is raised. No finished generation is thrown away."""
        import aiohttp

        async def open_session():
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency),
                                         timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s,
                                                                       sock_read=self.timeout_s))

        loop = asyncio.new_event_loop()
        session = loop.run_until_complete(open_session())
        source, pending, failure, refused, index = iter(requests), {}, None, [], itertools.count()
        try:
            while True:
                if failure is None:
                    for tag, request in itertools.islice(source, self.concurrency - len(pending)):
                        task = loop.create_task(self._complete(session, self._body(request, sampling, next(index))))
                        pending[task] = tag
                if not pending:
                    break
                done, _ = loop.run_until_complete(asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))
                for task in done:
                    tag, error = pending.pop(task), task.exception()
                    if error is None:
                        yield tag, task.result()
                    elif isinstance(error, RequestRefused):
                        refused.append(error)
                    elif failure is None:
                        failure = error
                        if pending:
                            print(f"{failure}\nwaiting for the {len(pending)} requests in flight before stopping")
            if failure is not None:
                raise failure
            if refused:
                raise RequestRefused(f"{len(refused)} of {next(index)} requests were refused and left out, every "
                                     f"other reply came back; the first: {refused[0]}")
        finally:
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending))
            loop.run_until_complete(session.close())
            loop.close()

    def _body(self, request: Request, sampling: SamplingSpec, index: int) -> dict:
        seed = request.seed if request.seed is not None else sampling.seed + index
        return {"model": self.model, "prompt": self.render(request), "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": -1, "seed": seed,
                "stop": [self.stop], "stop_token_ids": [self.stop_id], "skip_special_tokens": False}

    async def _complete(self, session, body: dict) -> Completion:
        reply = await self._post(session, body)
        choice, usage = reply["choices"][0], reply.get("usage", {})
        return Completion(choice["text"], finish_reason(choice.get("finish_reason")),
                          usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    async def _post(self, session, body: dict) -> dict:
        import aiohttp

        data = json.dumps(body).encode()
        deadline, attempt = time.monotonic() + self.retry_budget_s, 0
        while True:
            attempt += 1
            try:
                async with session.post(self.url, data=data, headers=self.headers) as resp:
                    if resp.status < 400:
                        return self._parse(await resp.read())
                    detail = await _error_detail(resp)
                    if resp.status in REFUSED:
                        raise RequestRefused(f"{self.url}: HTTP {resp.status} ({detail}); not retried: fix the "
                                             "request (e.g. prompt + max_new_tokens over the server's max_model_len)")
                    if resp.status not in (408, 429) and resp.status < 500:
                        raise BackendError(f"{self.url}: HTTP {resp.status} ({detail}); not retried: check "
                                           "backend.base_url, served_model_name and api_key_env")
                    problem, wait = f"HTTP {resp.status} ({detail})", _retry_after(resp.headers.get("Retry-After"))
            # refused, reset, timed out, or a reply cut short mid-body (aiohttp.ClientPayloadError)
            except (aiohttp.ClientError, OSError) as e:
                problem, wait = _problem(e), None
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
            await asyncio.sleep(wait)

    def close(self) -> None:
        """Nothing to free: the model is the server's (Backend.close's garbage collection costs ~0.4 s)."""

    def _parse(self, raw: bytes) -> dict:
        try:
            reply = json.loads(raw)
            reply["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(f"{self.url}: the reply is not an OpenAI completion (no choices[0].text): "
                               f"{raw[:200]!r}") from None
        return reply


def fit_open_files(concurrency: int) -> int:
    """Each request in flight holds a socket: raise this process's open-file limit to fit them (up to its
    hard limit), or send fewer, saying so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = concurrency + FILES_KEPT_FOR_THE_REST
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(1, soft - FILES_KEPT_FOR_THE_REST)
        print(f"warning: backend.concurrency: this process may open {soft} files (ulimit -n), room for {fitted} "
              f"requests in flight, not {concurrency}; sending {fitted}. Raise the hard limit to send more")
        return fitted
    return concurrency


def _problem(error: BaseException) -> str:
    """A connection problem in words: the OS's reason where there is one ("Connection refused"), which
    aiohttp's own messages leave out."""
    cause = getattr(error, "os_error", None) or getattr(error, "reason", None) or error
    code = getattr(cause, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(error) or "no reply"
    return f"{type(error).__name__}: {reason}"


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


async def _error_detail(resp) -> str:
    """The start of an error reply's body (the server's own message), even when it is cut short."""
    import aiohttp

    try:
        raw = await resp.content.read(500)
    except (aiohttp.ClientError, OSError):
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
