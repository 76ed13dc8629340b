"""The dual-mode chat template: exact renderings, flags, tools, masks (sentinel sweep), parity."""

import datetime

import pytest
from transformers import AutoTokenizer

from pipeline.core.chat import install_template, template_kwargs

SYSTEM_THINK = ("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: 01 July 2025\n"
                "Reasoning Mode: /think\n\n## Custom Instructions\n\n")
SYSTEM_NO_THINK = SYSTEM_THINK.replace("Reasoning Mode: /think", "Reasoning Mode: /no_think")
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL = {"name": "get_weather", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def render(tokenizer, messages, *, add_generation_prompt: bool = False, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs(**kwargs))


def assistant_mask(tokenizer, messages, **kwargs) -> tuple[list[int], list[int]]:
    """(input_ids, mask): mask is 1 exactly on trained tokens (assistant content + <|im_end|>)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, **template_kwargs(**kwargs))
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.fixture(scope="module")
def tok(tiny_model):
    return install_template(AutoTokenizer.from_pretrained(tiny_model))


def test_exact_think_rendering(tok):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}]
    assert render(tok, messages) == (SYSTEM_THINK + "Be kind.\n\n<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                                     "<|im_start|>assistant\n<think>\nadd\n</think>\n\n4<|im_end|>\n")


def test_exact_no_think_rendering_with_default_instructions(tok):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert render(tok, messages, enable_thinking=False) == (
        SYSTEM_NO_THINK + "You are a helpful assistant. Answer directly and concisely, without writing out your "
        "reasoning.\n\n<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n4"
        "<|im_end|>\n")
    assert "Reason step by step inside <think>" in render(tok, messages[:1])


def test_system_flags_override_enable_thinking(tok):
    user = {"role": "user", "content": "hi"}
    off = render(tok, [{"role": "system", "content": "Be brief. /no_think"}, user], enable_thinking=True)
    assert "Reasoning Mode: /no_think" in off and "Custom Instructions\n\nBe brief.\n\n<|im_end|>" in off
    on = render(tok, [{"role": "system", "content": "/think Be brief."}, user], enable_thinking=False)
    assert "Reasoning Mode: /think" in on and "Custom Instructions\n\nBe brief.\n\n<|im_end|>" in on
    override = render(tok, [{"role": "system", "content": "/system_override You are a pirate."}, user])
    assert override.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nhi")


def test_generation_prompt_in_both_modes(tok):
    user = [{"role": "user", "content": "hi"}]
    assert render(tok, user, add_generation_prompt=True).endswith("hi<|im_end|>\n<|im_start|>assistant\n")
    assert render(tok, user, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n")


def test_tools_calls_and_results(tok):
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]
    text = render(tok, messages, enable_thinking=False, xml_tools=[TOOL])
    assert '<tools>\n{"name": "get_weather", "description": "Weather for a city."' in text
    assert ('<|im_start|>assistant\n<think>\n\n</think>\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>') in text
    assert "<|im_start|>user\n18C<|im_end|>" in text  # as it is, as SmolLM3's released template renders it
    assert "<|im_start|>tool" not in text
    python = render(tok, messages[:1], python_tools=["def add(a: int, b: int) -> int"])
    assert "inside <code></code>" in python and "def add(a: int, b: int) -> int" in python


def test_date_is_a_variable_never_today(tok):
    user = [{"role": "user", "content": "hi"}]
    assert "Today Date: 02 Feb 2024" in render(tok, user, today_date="02 Feb 2024")
    today = datetime.date.today().strftime("%d %B %Y")
    assert today not in tok.apply_chat_template(user, tokenize=False)
    assert "Today Date: 01 July 2025" in tok.apply_chat_template(user, tokenize=False)


@pytest.mark.parametrize("thinking", [True, False])
def test_label_mask_sentinel_sweep(tok, thinking):
    """Decoding the trained tokens gives every assistant content and nothing else."""
    think = "<think>\nREASONSENT\n</think>\n\n" if thinking else ""
    messages = [{"role": "system", "content": "SYSSENT"}, {"role": "user", "content": "USERSENTA"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "content": "TOOLSENT"},
                {"role": "assistant", "content": think + "ASSTSENTA"}, {"role": "user", "content": "USERSENTB"},
                {"role": "assistant", "content": think + "ASSTSENTB"}]
    ids, mask = assistant_mask(tok, messages, enable_thinking=thinking, xml_tools=[TOOL])
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    untrained = tok.decode([t for t, m in zip(ids, mask) if not m])
    for sentinel in ("ASSTSENTA", "ASSTSENTB", "get_weather"):
        assert sentinel in trained
    for sentinel in ("SYSSENT", "USERSENTA", "USERSENTB", "TOOLSENT", "Metadata", "<|im_start|>"):
        assert sentinel not in trained
    assert trained.count("<|im_end|>") == 3 and untrained.count("<|im_start|>assistant") == 3
    assert ("REASONSENT" in trained) == thinking and ("<think>\n\n</think>" in trained) == (not thinking)


@pytest.mark.parametrize("thinking", [True, False])
def test_inference_prompt_is_the_training_prefix(tok, thinking):
    """Train/inference parity: the generation prompt + what the model was trained to emit
    reproduces the training rendering token for token."""
    answer = "<think>\nok\n</think>\n\nHello!" if thinking else "Hello!"
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    training = render(tok, convo, enable_thinking=thinking)
    prompt = render(tok, convo[:1], enable_thinking=thinking, add_generation_prompt=True)
    ids, mask = assistant_mask(tok, convo, enable_thinking=thinking)
    completion = tok.decode([t for t, m in zip(ids, mask) if m])
    # no-think: the prompt pre-fills the empty think block that training taught the model to emit
    prefill = "" if thinking else "<think>\n\n</think>\n"
    assert completion.startswith(prefill) and prompt.endswith("<|im_start|>assistant\n" + prefill)
    assert prompt + completion[len(prefill):] + "\n" == training
    assert tok(prompt + completion[len(prefill):] + "\n", add_special_tokens=False).input_ids == ids


def test_saved_tokenizer_ships_the_template(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert again.chat_template == tok.chat_template
    assert render(again, messages, enable_thinking=False) == render(tok, messages, enable_thinking=False)


# ----------------------------------------------------------------------------------------------
# Against SmolLM3's released template (HuggingFaceTB/SmolLM3-3B, chat_template.jinja). The expected
# strings below were written by hand from reading it: a tool message is a user turn holding the tool's
# text as it is; assistant content loses its leading newlines (`content.lstrip("\n")`); a no-think
# turn is `<think>\n\n</think>\n` + content; tool calls are part of the assistant content (smoltalk2
# writes them there). Only the system turn differs (its prose is ours), so it is cut off before comparing.
# ----------------------------------------------------------------------------------------------
def conversation(text: str) -> str:
    """Everything after the system turn."""
    assert text.startswith("<|im_start|>system\n")
    return text.split("<|im_end|>\n", 1)[1]


CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("thinking", [True, False])
def test_tool_results_render_as_released(tok, thinking):
    think = "<think>\nI need the weather.\n</think>\n" if thinking else ""
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": think + CALL_TEXT},
                {"role": "tool", "content": '{"temperature": "18C"}'},
                {"role": "tool", "content": "<tool_response>\nsunny\n</tool_response>"},
                {"role": "assistant", "content": think + "It is 18C and sunny."}]
    prefix = "" if thinking else "<think>\n\n</think>\n"
    assert conversation(render(tok, messages, enable_thinking=thinking, xml_tools=[TOOL])) == (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        f"<|im_start|>assistant\n{prefix}{think}{CALL_TEXT}<|im_end|>\n"
        '<|im_start|>user\n{"temperature": "18C"}<|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"  # never wrapped twice
        f"<|im_start|>assistant\n{prefix}{think}It is 18C and sunny.<|im_end|>\n")


@pytest.mark.parametrize("thinking", [True, False])
def test_leading_newlines_of_assistant_content_are_dropped_as_released(tok, thinking):
    """Prompt histories (synth, eval multi-turn) carry assistant turns as generated, often starting
    with newlines; the released template drops them, so training rows and prompts agree."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHello!\n"},
                {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "\n" + CALL_TEXT},
                {"role": "tool", "content": "18C"}, {"role": "user", "content": "Thanks"}]
    prefix = "" if thinking else "<think>\n\n</think>\n"
    assert conversation(render(tok, messages, enable_thinking=thinking, add_generation_prompt=True)) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        f"<|im_start|>assistant\n{prefix}Hello!\n<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        f"<|im_start|>assistant\n{prefix}{CALL_TEXT}<|im_end|>\n"
        "<|im_start|>user\n18C<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n"
        f"<|im_start|>assistant\n{prefix}")


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("content", ["", "\n", "Let me check.", "Let me check.\n", "\nLet me check.\n"])
def test_structured_tool_calls_render_as_calls_written_in_the_content(tok, thinking, content):
    """`tool_calls` (OpenAI style) render as the same turn written out the way smoltalk2 writes it and
    the released template renders it: the content, a newline unless it already ends in one, the call."""
    think = "<think>\nlook it up\n</think>\n" if thinking else ""
    structured = [{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": think + content, "tool_calls": [CALL]}]
    text = (think + content).lstrip("\n")
    written = [structured[0], {"role": "assistant",
                               "content": text + ("" if not text or text.endswith("\n") else "\n") + CALL_TEXT}]
    ours = conversation(render(tok, structured, enable_thinking=thinking))
    assert ours == conversation(render(tok, written, enable_thinking=thinking))
    assert ("\n\n<tool_call>" in ours) == (think + content).endswith("\n\n")  # only where the content holds it


# ----------------------------------------------------------------------------------------------
# Where ours deliberately differs from the released template (README, "The chat format")
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", ["<think>\n\n</think>\n", "<think>\nearlier reasoning\n</think>\n"])
def test_a_no_think_turn_that_holds_a_think_block_gets_no_second_one(tok, block):
    """The released template puts the empty block before every no-think assistant turn, also before one that
    already opens with a block (`<think>\n\n</think>\n<think>...`): a row or a replayed turn that carries its
    block would train or prompt two. Ours renders the turn's own block alone."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": block + "Hello!"}]
    assert conversation(render(tok, messages, enable_thinking=False)) == (
        f"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n{block}Hello!<|im_end|>\n")


def test_structured_tool_calls_are_rendered_where_the_released_template_drops_them(tok):
    """The released template renders only `content`: an OpenAI-style turn with `tool_calls` and no content would
    be an empty turn followed by a tool result for a call never made. Ours writes the calls as smoltalk2 rows
    write them in the content (test_structured_tool_calls_render_as_calls_written_in_the_content)."""
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None,
                                                          "tool_calls": [CALL]}, {"role": "tool", "content": "18C"}]
    assert conversation(render(tok, messages, enable_thinking=False)) == (
        "<|im_start|>user\nWeather?<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\n\n</think>\n{CALL_TEXT}<|im_end|>\n"
        "<|im_start|>user\n18C<|im_end|>\n")

