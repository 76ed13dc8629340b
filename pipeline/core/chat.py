"""The dual-mode chat format, owned here and nowhere else.

    from pipeline.core.chat import install_template, template_kwargs
    install_template(tokenizer)                                   # ships with tokenizer.save_pretrained(...)
    tokenizer.apply_chat_template(messages, **template_kwargs(enable_thinking=False))

One template (templates/smollm3.jinja) renders training data (with `{% generation %}` masks),
inference prompts for transformers and vLLM (the same file, saved as chat_template.jinja next to the
weights) and the synthetic-data prompts, so train/inference parity holds by construction. This
module holds what the rest of the code needs to agree on about that format:

- the template text and how a recipe names it (`smollm3`, `model`, or a .jinja file);
- the one fixed date and knowledge cutoff (the published template stamps today's date into
  training data, which makes runs unreproducible);
- `template_kwargs`: the one way SFT rows, APO rows, eval prompts and synth prompts pass the mode,
  the date, tools and custom instructions to the template;
- `resolve_thinking`: the mode a conversation is rendered in (a `/think` or `/no_think` flag in the
  system message overrides `enable_thinking`, exactly as the template decides);
- the think-block rules (`think_block_problem`, `strip_think`), shared by training-data validation,
  synthetic-data filters and the mode-adherence eval;
- `has_generation_markers`: whether a template can produce assistant-only loss masks, decided by
  parsing it with jinja2 rather than by matching text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATE_PATH = Path(__file__).parent / "templates" / "smollm3.jinja"
DEFAULT_DATE = "01 July 2025"
DEFAULT_CUTOFF = "June 2025"
END_OF_TURN = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINK = "<think>\n\n</think>\n"  # what no-think mode writes before every assistant turn
MISSING_ANSWER = "nothing after </think>: the answer is missing"


class TemplateError(ValueError):
    """A chat template that cannot be found or used."""


# ----------------------------------------------------------------------------------------------
# The template
# ----------------------------------------------------------------------------------------------
def load_template() -> str:
    return TEMPLATE_PATH.read_text()


def template_text(name: str, base_dir: Path = Path(".")) -> str | None:
    """Text of a recipe's `chat.template`: `smollm3` (ours), a .jinja path (absolute, or relative to
    the working directory or the recipe's folder), or None for `model` (the tokenizer's own, known
    only once it loads)."""
    if name == "model":
        return None
    if name == "smollm3":
        return load_template()
    for candidate in (Path(name).expanduser(), Path(base_dir) / name):
        if candidate.is_file():
            return candidate.read_text()
    raise TemplateError(f"template file {name!r} not found; use `smollm3`, `model` or a .jinja path")


def install_template(tokenizer, template: str | None = None):
    """Set our template (or `template`) on the tokenizer; saving the tokenizer then ships it."""
    tokenizer.chat_template = template if template is not None else load_template()
    return tokenizer


def end_of_turn_as_eos(tokenizer, model=None) -> None:
    """`<|im_end|>` as the end-of-sequence token of the tokenizer (and the model's generation
    config), as the official SmolLM3 configs set it: plain `generate()` and vLLM then stop at the
    end of the assistant turn instead of running on into a new one."""
    if END_OF_TURN not in tokenizer.get_vocab():
        return
    if tokenizer.pad_token is None:  # keep the base's own EOS as padding, not the end of a turn
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.eos_token = END_OF_TURN
    if model is not None:
        eos = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        model.config.eos_token_id = eos
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.eos_token_id = eos
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def generation_markers_problem(template: str | None, name: str) -> str | None:
    """Why a template cannot train assistant-only loss (no `{% generation %}` markers), or None. The one
    check, made on the recipe's template before anything loads and on the tokenizer's once loaded."""
    if template is None or has_generation_markers(template):
        return None
    return f"assistant_only_loss needs `{{% generation %}}` markers, and the template `{name}` has none; use `smollm3`"


def has_generation_markers(template: str) -> bool:
    """Whether the template has a `{% generation %}` block (any whitespace control), found by
    parsing it as transformers does, so a comment that mentions the words does not count."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):  # the tag transformers adds; parsed into a marker node
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope([nodes.Output([nodes.TemplateData("\0generation\0")], lineno=lineno)] + body,
                               lineno=lineno)

    env = ImmutableSandboxedEnvironment(extensions=[Generation, "jinja2.ext.loopcontrols"])
    try:
        tree = env.parse(template)
    except Exception as e:  # a template jinja2 cannot parse cannot be used at all
        raise TemplateError(f"the chat template does not parse: {e}") from None
    return any(n.data == "\0generation\0" for n in tree.find_all(nodes.TemplateData))


# ----------------------------------------------------------------------------------------------
# What the template is given
# ----------------------------------------------------------------------------------------------
def template_kwargs(enable_thinking: bool = True, *, today_date: str = DEFAULT_DATE,
                    knowledge_cutoff: str = DEFAULT_CUTOFF, xml_tools: list | None = None,
                    python_tools: list | None = None, custom_instructions: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `apply_chat_template`, the same for training rows, preference rows,
    eval prompts and synth prompts. Tools and custom instructions are passed only when present, as
    smoltalk2's `chat_template_kwargs` carry them."""
    kwargs: dict[str, Any] = {"enable_thinking": bool(enable_thinking), "today_date": today_date,
                              "knowledge_cutoff": knowledge_cutoff}
    if xml_tools:
        kwargs["xml_tools"] = list(xml_tools)
    if python_tools:
        kwargs["python_tools"] = list(python_tools)
    if custom_instructions:
        kwargs["custom_instructions"] = custom_instructions
    return kwargs


def resolve_thinking(messages: list[dict[str, Any]], enable_thinking: bool) -> bool:
    """The mode the template renders `messages` in: a `/no_think` or `/think` flag in a leading
    system message overrides `enable_thinking` (the template checks `/no_think` first)."""
    system = messages[0].get("content") if messages and messages[0].get("role") == "system" else None
    if isinstance(system, str):
        if "/no_think" in system:
            return False
        if "/think" in system:
            return True
    return bool(enable_thinking)


# ----------------------------------------------------------------------------------------------
# Think blocks
# ----------------------------------------------------------------------------------------------
def think_block_problem(content: str, thinking: bool, required: bool = False) -> str | None:
    """What is wrong with an assistant turn's think block for its mode, or None. The one rule for
    training data, synthetic data and mode adherence: at most one block, opening the turn;
    reasoning in it in think mode, none in no-think mode; an answer after it. `required`: think
    mode must have a block."""
    opens, closes = content.count(THINK_OPEN), content.count(THINK_CLOSE)
    if opens == 0 and closes == 0:
        return "think mode, but the turn has no <think> block" if thinking and required else None
    if opens != 1 or closes != 1:
        return f"malformed think block ({opens} <think>, {closes} </think>)"
    if not content.lstrip().startswith(THINK_OPEN):
        return "the think block must open the assistant turn"
    reasoning, answer = content.split(THINK_CLOSE, 1)
    reasoning = reasoning.split(THINK_OPEN, 1)[1].strip()
    if thinking and not reasoning:
        return "think mode, but the think block is empty"
    if not thinking and reasoning:
        return "no_think mode, but the turn holds reasoning in its think block"
    if not answer.strip():
        return MISSING_ANSWER
    return None


def strip_think(text: str) -> str:
    """The answer part of a completion: everything after `</think>`. An unclosed think block
    means the model never answered (cut off while reasoning): the answer is empty."""
    text = text.strip()
    if THINK_CLOSE in text:
        return text.split(THINK_CLOSE, 1)[1].strip()
    if text.startswith(THINK_OPEN):
        return ""
    return text
