"""The dual-mode chat format: our template, installed on every tokenizer and checkpoint we write.

    from pipeline.chat import install_template, render
    install_template(tokenizer)                       # ships with tokenizer.save_pretrained(...)
    text = render(tokenizer, messages, enable_thinking=False, add_generation_prompt=True)

One template renders training data (with `{% generation %}` masks), inference prompts for
transformers and vLLM (same file, saved as chat_template.jinja next to the weights), and the
synthetic-data prompts: train/inference parity holds by construction and is tested.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_PATH = Path(__file__).parent / "templates" / "smollm3.jinja"
DEFAULT_DATE = "01 July 2025"
DEFAULT_CUTOFF = "June 2025"


def load_template() -> str:
    return TEMPLATE_PATH.read_text()


def install_template(tokenizer, template: str | None = None):
    """Set our template (or `template`) on the tokenizer; saving the tokenizer then ships it."""
    tokenizer.chat_template = template if template is not None else load_template()
    return tokenizer


def template_kwargs(enable_thinking: bool = True, today_date: str = DEFAULT_DATE,
                    knowledge_cutoff: str = DEFAULT_CUTOFF, xml_tools=None, python_tools=None) -> dict:
    kwargs = {"enable_thinking": enable_thinking, "today_date": today_date, "knowledge_cutoff": knowledge_cutoff}
    if xml_tools:
        kwargs["xml_tools"] = xml_tools
    if python_tools:
        kwargs["python_tools"] = python_tools
    return kwargs


def render(tokenizer, messages, *, add_generation_prompt: bool = False, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs(**kwargs))


def assistant_mask(tokenizer, messages, **kwargs) -> tuple[list[int], list[int]]:
    """(input_ids, mask): mask is 1 exactly on trained tokens (assistant content + <|im_end|>)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, **template_kwargs(**kwargs))
    return list(out["input_ids"]), list(out["assistant_masks"])
