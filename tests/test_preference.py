"""Preference measurement: log-probabilities of answers, derived a second way token by token."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.core.chat import install_template, template_kwargs
from pipeline.training.preference import pair_logprobs, preference_stats, reward_margin


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return model, install_template(AutoTokenizer.from_pretrained(tiny_model))


def brute_force_logprob(model, tokenizer, prompt, answer, kwargs) -> float:
    """Score the answer token by token, each with its own forward pass on its prefix: the prompt as
    inference renders it, then the answer's content and <|im_end|> (what the model has to write)."""
    prompt_ids = tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kwargs),
                           add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer[-1]["content"] + "<|im_end|>", add_special_tokens=False).input_ids
    total = 0.0
    with torch.no_grad():
        for i, token in enumerate(answer_ids):
            logits = model(input_ids=torch.tensor([prompt_ids + answer_ids[:i]]), use_cache=False).logits[0, -1]
            total += float(torch.log_softmax(logits.float(), -1)[token])
    return total


def test_answer_logprobs_match_token_by_token_scoring(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    pairs = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "<think>\n2+2 is 4.\n</think>\n\n4"}],
              "rejected": [{"role": "assistant", "content": "<think>\nMaybe 5.\n</think>\n\n5, I think"}],
              "chat_template_kwargs": template_kwargs(True)}]
    multi_turn = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
    pairs.append({"prompt": multi_turn, "chosen": [{"role": "assistant", "content": "Paris."}],
                  "rejected": [{"role": "assistant", "content": "<think>\nHmm.\n</think>\n\nLyon."}],
                  "chat_template_kwargs": template_kwargs(False)})
    for pair, (chosen, rejected) in zip(pairs, pair_logprobs(model, tok, pairs)):
        kwargs = pair["chat_template_kwargs"]
        for logprob, answer in ((chosen, pair["chosen"]), (rejected, pair["rejected"])):
            assert logprob == pytest.approx(brute_force_logprob(model, tok, pair["prompt"], answer, kwargs), abs=1e-3)


def test_stats_and_reward_margin():
    stats = preference_stats([(-1.0, -3.0), (-5.0, -2.0), (-2.0, -2.5)])
    assert stats == {"pairs": 3, "accuracy": round(2 / 3, 4), "mean_margin": round((2 - 3 + 0.5) / 3, 4)}
    # the policy moved chosen up by 1 and rejected down by 1 on each pair: margin beta * 2
    assert reward_margin([(0.0, -4.0)], [(-1.0, -3.0)], beta=0.1) == pytest.approx(0.2)
