"""vLLM and transformers backends agree: the same prompt token ids, the same greedy tokens, the same
decoded text (special tokens such as <think> and <tool_call> kept), both stopping at <|im_end|>.

    make test-vllm          # or: .venv-vllm/bin/python -m pytest tests_vllm/test_parity.py
"""

from __future__ import annotations

import json

import pytest
from conftest import CHAIN_TEXT, REPO, SUMMARY

from pipeline.core.chat import END_OF_TURN
from pipeline.generation import Request, SamplingSpec, TransformersBackend, VLLMBackend

GREEDY = SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=40, seed=0)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def demo_requests() -> list[Request]:
    """Realistic prompts in both modes, one with a tool, one multi-turn."""
    prompts = [json.loads(line)["messages"] for line in (REPO / "data/demo/prompts.jsonl").read_text().splitlines()]
    requests = [Request(m, enable_thinking=think) for m in prompts[:6] for think in (True, False)]
    requests.append(Request([{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER_TOOL]))
    turns = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "Name three colours."}]
    requests.append(Request(turns, enable_thinking=False))
    return requests


class Recorded:
    """Token ids as each backend's generator saw and produced them (wraps the generate call)."""

    @staticmethod
    def vllm(backend: VLLMBackend) -> list:
        """In the order the requests were added to the engine the backend drives (its step loop hands
        outputs back as they finish)."""
        seen: list = []
        engine = backend.llm.llm_engine
        add_request, step = engine.add_request, engine.step
        slots: dict[str, int] = {}

        def add(request_id, *args, **kwargs):
            slots[request_id] = len(seen)
            seen.append(None)
            return add_request(request_id, *args, **kwargs)

        def stepped():
            outputs = step()
            for o in outputs:
                if o.finished:
                    seen[slots[o.request_id]] = (list(o.prompt_token_ids), list(o.outputs[0].token_ids))
            return outputs

        engine.add_request, engine.step = add, stepped
        return seen

    @staticmethod
    def transformers(backend: TransformersBackend) -> list:
        seen: list = []
        generate = backend.model.generate

        def wrapped(*args, input_ids, attention_mask, **kwargs):
            out = generate(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            for row in range(len(input_ids)):
                prompt = input_ids[row][attention_mask[row].bool()].tolist()
                new = out[row, input_ids.shape[1]:].tolist()
                seen.append((prompt, new))
            return out

        backend.model.generate = wrapped
        return seen


def run_both(model: str, requests: list[Request]):
    """Transformers (left-padded batches, as the backend runs), then vLLM, on the same requests."""
    hf = TransformersBackend(model, dtype="float32", batch_size=8)
    hf_ids = Recorded.transformers(hf)
    with hf:
        hf_out = hf.generate(requests, GREEDY)
        stop_id = hf.stop_id
    # the backend runs requests sorted by length: put its records back in request order by prompt
    by_prompt = {tuple(prompt): (prompt, new) for prompt, new in hf_ids}
    prompts = [hf_tokenizer_ids(model, r) for r in requests]
    hf_ids = [by_prompt.get(tuple(p), (None, [])) for p in prompts]
    with VLLMBackend(model, dtype="float32", seed=0, enforce_eager=True) as llm:
        vllm_ids = Recorded.vllm(llm)
        vllm_out = llm.generate(requests, GREEDY)
    return hf_out, hf_ids, vllm_out, vllm_ids, stop_id


def hf_tokenizer_ids(model: str, request: Request) -> list[int]:
    from transformers import AutoTokenizer

    from pipeline.generation import Renderer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return tokenizer(Renderer(tokenizer)(request), add_special_tokens=False).input_ids


def cut(ids: list[int], stop_id: int) -> list[int]:
    return ids[:ids.index(stop_id)] if stop_id in ids else ids


@pytest.fixture(scope="module")
def smollm2_runs(smollm2):
    requests = demo_requests()
    return requests, run_both(smollm2, requests)


def test_prompt_ids_and_greedy_tokens_identical(smollm2_runs):
    requests, (hf_out, hf_ids, vllm_out, vllm_ids, stop_id) = smollm2_runs
    assert len(hf_ids) == len(vllm_ids) == len(requests)
    compared = mismatched = 0
    diverged = []
    for i, ((hf_prompt, hf_new), (vllm_prompt, vllm_new)) in enumerate(zip(hf_ids, vllm_ids)):
        assert hf_prompt == vllm_prompt, f"request {i}: prompt token ids differ"
        a, b = cut(hf_new, stop_id), cut(vllm_new, stop_id)
        compared += max(len(a), len(b))
        bad = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
        mismatched += bad
        if bad:
            diverged.append(i)
    SUMMARY.append(f"parity SmolLM2 (transformers vs vLLM, greedy): {len(requests)} requests, prompt token ids "
                   f"equal; {compared} generated tokens compared, {mismatched} mismatched, diverging {diverged}")
    assert compared > 10 * len(requests)
    assert mismatched == 0, f"requests {diverged} diverge between transformers and vLLM"


def test_same_text_and_stop(smollm2_runs):
    requests, (hf_out, _, vllm_out, _, _) = smollm2_runs
    for i, (a, b) in enumerate(zip(hf_out, vllm_out)):
        assert a.text == b.text, f"request {i}"
        assert (a.finish_reason, a.prompt_tokens) == (b.finish_reason, b.prompt_tokens), f"request {i}"
        assert END_OF_TURN not in b.text
    assert any(c.finish_reason == "stop" for c in vllm_out), "no request ended its turn: the stop is untested"


def test_special_tokens_survive_and_stop_at_end_of_turn(scripted_smollm3):
    """A model whose greedy output is <think>…</think>…<tool_call>{}</tool_call><|im_end|>: both
    backends return that text exactly and stop at <|im_end|> (not at max_new_tokens)."""
    requests = [Request([{"role": "user", "content": "Is it raining?"}], enable_thinking=think, tools=tools)
                for think in (True, False) for tools in (None, [WEATHER_TOOL])]
    hf_out, hf_ids, vllm_out, vllm_ids, _ = run_both(scripted_smollm3, requests)
    for i, (a, b) in enumerate(zip(hf_out, vllm_out)):
        assert hf_ids[i][0] == vllm_ids[i][0], f"request {i}: prompt token ids differ"
        assert a.text == CHAIN_TEXT, f"transformers, request {i}: {a.text!r}"
        assert b.text == CHAIN_TEXT, f"vLLM, request {i}: {b.text!r}"
        assert a.finish_reason == b.finish_reason == "stop"
        assert a.completion_tokens == b.completion_tokens == len(hf_ids[i][1]) == len(vllm_ids[i][1])
    SUMMARY.append(f"parity scripted SmolLM3 (head_dim 64): {len(requests)} requests, both backends wrote "
                   f"{CHAIN_TEXT!r} and stopped at <|im_end|>")
