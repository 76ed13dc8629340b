"""Rows: the one normaliser, and what one training example is before it becomes Arrow columns
(pipeline/data/mixture.py). Every stage reads its rows through pipeline/data/sources.py and makes sense of
them here: SFT and mid-training rows, APO pairs and held-out pairs, synth prompts.

    messages = normalise_messages(row)                       # messages / ShareGPT / prompt-completion
    extra = row_kwargs(row)                                  # tools, custom instructions (template kwargs)
    messages, extra = prompt_of(row)                         # what a model continues (synth prompts)
    enc, thinking = encode_row(row, source, tokenizer, rendering)   # ids + labels in the row's one mode

Each source (read by pipeline/data/sources.py) has a mode (`think`, `no_think`, or `from_row`: the
row's `chat_template_kwargs.enable_thinking`) and a budget (pipeline/data/reader.py). Rows are normalised
to chat `messages` (messages, ShareGPT `conversations`, prompt/completion; tool calls and tool results
kept), given their one mode (`row_mode`), validated for it; a bad row of any shape is a
`BadRow` whose message is its quarantine reason: nothing is dropped silently and nothing crashes.

A row's tools and custom instructions (smoltalk2's `chat_template_kwargs`: `xml_tools` as JSON
strings, `python_tools`, `custom_instructions`; or a `tools` column) reach the template. Tokenization
keeps the template's assistant mask as the labels (assistant content + `<|im_end|>`; never headers,
system, user or tool text); mid-training trains on every token.

A preference pair (APO) is normalised here too (`normalise_pair`, `preference_row`); the stages draw
rows, pairs and prompts from their sources through the one source reader (pipeline/data/reader.py).
A new row layout is one branch in `normalise_messages` (and `normalise_pair` for pairs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.core.chat import THINK_OPEN, resolve_thinking, template_kwargs, think_block_problem
from pipeline.core.schema import Source, TrainRecipe, source_label
from pipeline.data.sources import BadRow

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}


# ----------------------------------------------------------------------------------------------
# Loading and normalising
# ----------------------------------------------------------------------------------------------
def normalise_messages(row: Any) -> list[dict[str, Any]]:
    """Chat messages from the common layouts: messages, ShareGPT conversations, prompt/completion.
    Every layout gets the same treatment (assistant content stripped of leading whitespace), and a
    row of the wrong shape is a BadRow with the reason, never a traceback."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {_kind(row)}")
    if row.get("messages") is not None:
        messages = [_message(m, i) for i, m in enumerate(_listed(row["messages"], "messages"))]
    elif row.get("conversations") is not None:
        messages = []
        for i, turn in enumerate(_listed(row["conversations"], "conversations")):
            if not isinstance(turn, dict):
                raise BadRow(f"conversations[{i}] must be an object with `from` and `value`, got {_kind(turn)}")
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise BadRow(f"unknown ShareGPT speaker {turn.get('from')!r}")
            messages.append(_message({"role": role, "content": turn.get("value")}, i))
    elif row.get("prompt") is not None and row.get("completion") is not None:
        messages = _as_turns(row["prompt"], "user") + _as_turns(row["completion"], "assistant")
    else:
        raise BadRow("no `messages`, `conversations` or `prompt`/`completion` column")
    return messages


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _listed(value, key: str) -> list:
    if not isinstance(value, list):
        raise BadRow(f"`{key}` must be a list of messages, got {_kind(value)}")
    return value


def _message(m: Any, i: int = 0) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise BadRow(f"message {i} must be an object with `role` and `content`, got {_kind(m)}")
    content = _text(m.get("content"))
    if m.get("role") == "assistant":
        # transformers masks whole tokens: leading newlines would merge with the header's "\n"
        # into one token and put part of the header into the trained span
        content = content.lstrip()
    out = {"role": m.get("role"), "content": content}
    if m.get("tool_calls") is not None:
        if not isinstance(m["tool_calls"], list):
            raise BadRow(f"message {i}: `tool_calls` must be a list, got {_kind(m['tool_calls'])}")
        if m["tool_calls"]:
            out["tool_calls"] = m["tool_calls"]
    return out


def _text(content) -> str:
    """Content may be a string or a list of typed parts; only text parts are kept."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise BadRow(f"content of type {type(content).__name__} is neither text nor a list of parts")


def _as_turns(value, role: str) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [_message(m, i) for i, m in enumerate(value)]
    return [_message({"role": role, "content": value})]


def row_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    """What a row tells the template besides the mode: smoltalk2's `chat_template_kwargs`
    (`xml_tools` as a list of JSON strings, `python_tools`, `custom_instructions`) and a `tools`
    column (function schemas), as the released SmolLM3 training template uses them."""
    kwargs = row.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise BadRow(f"`chat_template_kwargs` must be an object, got {_kind(kwargs)}")
    out = {}
    for key in ("xml_tools", "python_tools"):
        if kwargs.get(key) is not None:
            out[key] = _tool_list(kwargs[key], f"chat_template_kwargs.{key}")
    if row.get("tools") is not None:
        out["xml_tools"] = out.get("xml_tools", []) + _tool_list(row["tools"], "tools")
    if kwargs.get("custom_instructions"):
        if not isinstance(kwargs["custom_instructions"], str):
            raise BadRow("`chat_template_kwargs.custom_instructions` must be text")
        out["custom_instructions"] = kwargs["custom_instructions"]
    return out


def prompt_of(row: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, template extras) of the conversation a model is asked to continue: the row, normalised
    like every other row, without its trailing assistant turns (the dataset's own answer; the model
    writes a new one). Tool calls, tool results and the row's tools and custom instructions before that
    point are kept, so the model sees what training will render. A `prompt` with no `completion` is a
    prompt as it is.

        >>> prompt_of({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
        ([{'role': 'user', 'content': 'Hi'}], {})
    """
    if isinstance(row, dict) and row.get("messages") is None and row.get("conversations") is None \
            and row.get("prompt") is not None and row.get("completion") is None:
        messages = _as_turns(row["prompt"], "user")
    else:
        messages = normalise_messages(row)
    extra = row_kwargs(row)
    while messages and messages[-1].get("role") == "assistant":
        messages.pop()
    if not any(m.get("role") == "user" for m in messages):
        raise BadRow("no user turn to answer")
    return messages, extra


def _tool_list(value, key: str) -> list:
    if isinstance(value, str):  # a JSON list stored as one string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(f"`{key}` is a string but not a JSON list of tools") from None
    if not isinstance(value, list):
        raise BadRow(f"`{key}` must be a list of tools, got {_kind(value)}")
    return value


def declared_thinking(row: dict[str, Any]) -> bool:
    """A row's own mode, `chat_template_kwargs.enable_thinking`: true or false, nothing else (a string
    "false" is truthy and would train a no-think row as a think row)."""
    kwargs = row.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict) or "enable_thinking" not in kwargs:
        raise BadRow("mode `from_row` but the row has no chat_template_kwargs.enable_thinking")
    if not isinstance(kwargs["enable_thinking"], bool):
        raise BadRow(f"chat_template_kwargs.enable_thinking must be true or false, got {kwargs['enable_thinking']!r}")
    return kwargs["enable_thinking"]


def row_mode(source: Source, row: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    """The one mode a row is validated and rendered in (enable_thinking).

    The source's `mode` (or, with `from_row`, the row's `chat_template_kwargs.enable_thinking`)
    decides. A `/think` or `/no_think` flag in the row's system message would make the template
    render the other mode; such a conflict is a BadRow (quarantined with the reason), never
    resolved silently: a think row rendered as /no_think would train its reasoning as an answer."""
    if source.mode != "from_row":
        declared = source.mode == "think"
    else:
        declared = declared_thinking(row)
    rendered = resolve_thinking(messages, declared)
    if rendered != declared:
        flag = "/think" if rendered else "/no_think"
        raise BadRow(f"the system message says {flag} but the row's mode is "
                     f"{'think' if declared else 'no_think'}; fix the row or the source's `mode`")
    return declared


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def validate_conversation(messages: list[dict[str, Any]], thinking: bool, *, final_assistant: bool = True) -> None:
    """Roles known, system only first, turns alternate, assistant turns non-empty, think blocks right."""
    if not messages:
        raise BadRow("no messages")
    previous = None
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise BadRow(f"message {i}: unknown role {role!r} (allowed: assistant, system, tool, user)")
        if role == "system" and i != 0:
            raise BadRow(f"message {i}: a system message may only come first")
        if role == "user" and previous in ("user",):
            raise BadRow(f"message {i}: two user turns in a row")
        if role == "assistant" and previous not in ("user", "tool"):
            raise BadRow(f"message {i}: an assistant turn must follow a user or tool turn")
        if role == "tool" and previous not in ("assistant", "tool"):
            raise BadRow(f"message {i}: a tool result must follow an assistant turn")
        if role == "assistant":
            if not m.get("content", "").strip() and not m.get("tool_calls"):
                raise BadRow(f"message {i}: empty assistant turn")
            _check_think_block(m.get("content", ""), i, thinking)
        previous = role
    if final_assistant and previous != "assistant":
        raise BadRow("the conversation does not end with an assistant turn")
    if thinking and final_assistant and THINK_OPEN not in messages[-1].get("content", ""):
        raise BadRow(f"message {len(messages) - 1}: think mode, but the final assistant turn has no <think> block")


def _check_think_block(content: str, i: int, thinking: bool) -> None:
    problem = think_block_problem(content, thinking)
    if problem:
        raise BadRow(f"message {i}: {problem}")


# ----------------------------------------------------------------------------------------------
# Tokenization with loss masks
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rendering:
    """How rows become tokens: template kwargs and whether only assistant tokens are trained."""

    today_date: str
    knowledge_cutoff: str
    assistant_only: bool


def tokenize_row(tokenizer, messages, thinking: bool, rendering: Rendering,
                 extra: dict[str, Any] | None = None) -> dict[str, list[int]]:
    """Token ids and labels of one conversation; `extra`: the row's tools and custom instructions."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=rendering.assistant_only,
        **template_kwargs(thinking, today_date=rendering.today_date, knowledge_cutoff=rendering.knowledge_cutoff,
                          **(extra or {})),
    )
    ids = list(out["input_ids"])
    if rendering.assistant_only:
        mask = out["assistant_masks"]
        if not any(mask):
            raise BadRow("the template marked no assistant tokens (is `{% generation %}` missing?)")
        labels = [t if m else -100 for t, m in zip(ids, mask)]
    else:
        labels = list(ids)
    return {"input_ids": ids, "labels": labels}


def encode_row(row: Any, source: Source, tokenizer, rendering: Rendering) -> tuple[dict[str, list[int]], bool]:
    """(input_ids + labels, thinking) of one raw row: normalised, its one mode decided, validated
    for that mode, rendered with its tools and custom instructions. Raises BadRow."""
    messages = normalise_messages(row)
    extra = row_kwargs(row)  # the row's shape first: a bad tools column is the reason, not what follows
    thinking = row_mode(source, row, messages)
    validate_conversation(messages, thinking)
    return tokenize_row(tokenizer, messages, thinking, rendering, extra), thinking


# ----------------------------------------------------------------------------------------------
# Preference pairs (APO / DPO)
# ----------------------------------------------------------------------------------------------
def normalise_pair(row: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt messages, [chosen assistant turn], [rejected assistant turn]).

    Accepts a prompt string or message list with chosen/rejected as strings, single turns or full
    conversations that repeat the prompt (as many preference datasets store them)."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {_kind(row)}")
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise BadRow(f"no `{key}` column")
    chosen, rejected = _as_turns(row["chosen"], "assistant"), _as_turns(row["rejected"], "assistant")
    if row.get("prompt") is not None:
        prompt = _as_turns(row["prompt"], "user")
    else:  # full conversations: the prompt is everything before the last turn
        prompt = chosen[:-1]
    if chosen[:-1] and chosen[:-1] != prompt or rejected[:-1] and rejected[:-1] != prompt:
        raise BadRow("chosen and rejected continue different conversations")
    chosen, rejected = chosen[-1:], rejected[-1:]
    for key, turn in (("chosen", chosen), ("rejected", rejected)):
        if not turn or turn[0]["role"] != "assistant":
            raise BadRow(f"`{key}` does not end with an assistant turn")
    return prompt, chosen, rejected


def preference_row(recipe: TrainRecipe, source: Source, row: dict[str, Any]) -> dict[str, Any]:
    """One pair as the APO stage trains on it and scores it held out: prompt, chosen, rejected, its mode
    (`thinking`) and the chat_template_kwargs the template gets. A BadRow says why it cannot be used."""
    prompt, chosen, rejected = normalise_pair(row)
    thinking = row_mode(source, row, prompt + chosen)
    validate_conversation(prompt + chosen, thinking)
    extra = row_kwargs(row)
    if not rejected[0]["content"].strip():
        raise BadRow("empty rejected answer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "thinking": thinking,
            "chat_template_kwargs": template_kwargs(thinking, today_date=recipe.chat.today_date,
                                                    knowledge_cutoff=recipe.chat.knowledge_cutoff, **extra)}


def format_report(report: dict[str, Any]) -> str:
    """The mixture report as a readable table. "trained" counts the trained tokens training sees: those within
    max_length (a long row is cut there, and an answer past the cut trains nothing)."""
    lines = [f"{'source':<48} {'mode':<9} {'rows':>7} {'tokens':>10} {'trained (within max_length)':>28} "
             f"{'quarant.':>8}"]
    for s in report["sources"]:
        name = source_label(s["source"], s["split"], s.get("name"))
        trained = s.get("trained_tokens_kept", s["trained_tokens"])  # reports of older caches: before the cut
        lines.append(f"{name[-48:]:<48} {s['mode']:<9} {s['rows']:>7} {s['tokens']:>10} {trained:>28} "
                     f"{s['quarantined']:>8}")
    for mode, m in sorted(report["modes"].items()):
        lines.append(f"mode {mode:<8} rows {m['rows']:>7}  tokens {m['tokens']:>10}")
    lines.append(f"rows {report['rows']}, quarantined {report['quarantined']}, longer than "
                 f"{report['max_length']}: {report['rows_over_max_length']} ({report['over_length_rows_are']})")
    if "packing" in report:
        p = report["packing"]
        lines.append(f"packing {p['strategy']} @ {p['seq_length']}: {p['documents']} documents -> "
                     f"{p['packed_rows']} rows, efficiency {p['efficiency']:.1%}, "
                     f"trained tokens {p['trained_token_share']:.1%}")
    return "\n".join(lines)

