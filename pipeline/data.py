"""Data mixture: sources -> normalised, validated rows -> budgeted mixture -> tokens + loss masks -> packs.

    mixture = build_sft_mixture(recipe, tokenizer, out_dir)   # used by the midtrain and sft stages

Each source is a Hub dataset or a local .jsonl/.json/.parquet file with a mode (`think`, `no_think`,
or `from_row`: the row's `chat_template_kwargs.enable_thinking`) and a budget: a row `fraction`
(>1 upsamples) or a `tokens` budget, drawn with the mixture seed. Rows are normalised to chat
`messages` and validated; a bad row goes to `quarantine.jsonl` with its source, index and reason,
and is counted in the report: nothing is dropped silently.

Tokenization renders each row with our chat template and keeps the template's assistant mask as the
labels (assistant content + `<|im_end|>`; never headers, system, user or tool text). Mid-training
trains on every token. Packing: best-fit decreasing through TRL's `pack_dataset` for SFT; for
mid-training our own `wrapped` packer, which (unlike TRL's) records document boundaries in
`seq_lengths`, so attention stays inside each document there too. Packed rows carry `seq_lengths`;
TRL's padding-free collator turns them into per-document `position_ids`.

Tokenized mixtures are cached under the cache dir by a fingerprint of the sources, their content,
the tokenizer, the template and every setting that changes the tokens.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.chat import THINK_OPEN, template_kwargs, think_block_problem
from pipeline.errors import UserError
from pipeline.inputs import classify_input
from pipeline.schema import Source, TrainRecipe

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}


class BadRow(ValueError):
    """A row that cannot be trained on; the message is the quarantine reason."""


# ----------------------------------------------------------------------------------------------
# Loading and normalising
# ----------------------------------------------------------------------------------------------
def load_source(source: Source) -> Iterable[dict[str, Any]]:
    """Rows of a Hub dataset or a local file.

    Local JSON is read as plain JSON, not through Arrow: Arrow merges the nested dicts of all rows
    into one struct type, so a tool schema or tool-call `arguments` would gain other rows' keys as None.
    """
    if classify_input(source.path) == "hub":
        from datasets import load_dataset

        return load_dataset(source.path, source.name, split=source.split)
    path = Path(source.path).expanduser()
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else [data]
    if path.suffix == ".parquet":
        from datasets import load_dataset

        return load_dataset("parquet", data_files=str(path), split="train")
    raise UserError(f"{source.path}: unsupported file type; use .jsonl, .json or .parquet")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from None
    return rows


def normalise_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat messages from the common layouts: messages, ShareGPT conversations, prompt/completion."""
    if row.get("messages") is not None:
        messages = [_message(m) for m in row["messages"]]
    elif row.get("conversations") is not None:
        messages = []
        for turn in row["conversations"]:
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise BadRow(f"unknown ShareGPT speaker {turn.get('from')!r}")
            messages.append({"role": role, "content": turn.get("value") or ""})
    elif row.get("prompt") is not None and row.get("completion") is not None:
        messages = _as_turns(row["prompt"], "user") + _as_turns(row["completion"], "assistant")
    else:
        raise BadRow("no `messages`, `conversations` or `prompt`/`completion` column")
    return messages


def _message(m: dict[str, Any]) -> dict[str, Any]:
    content = _text(m.get("content"))
    if m.get("role") == "assistant":
        # transformers masks whole tokens: leading newlines would merge with the header's "\n"
        # into one token and put part of the header into the trained span
        content = content.lstrip()
    out = {"role": m.get("role"), "content": content}
    if m.get("tool_calls"):
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
    return [_message(m) for m in value] if isinstance(value, list) else [{"role": role, "content": _text(value)}]


def row_mode(source: Source, row: dict[str, Any]) -> bool:
    """enable_thinking for this row."""
    if source.mode != "from_row":
        return source.mode == "think"
    kwargs = row.get("chat_template_kwargs") or {}
    if "enable_thinking" not in kwargs:
        raise BadRow("mode `from_row` but the row has no chat_template_kwargs.enable_thinking")
    return bool(kwargs["enable_thinking"])


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


def tokenize_row(tokenizer, messages, thinking: bool, rendering: Rendering, tools=None) -> dict[str, list[int]]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=rendering.assistant_only,
        **template_kwargs(thinking, today_date=rendering.today_date, knowledge_cutoff=rendering.knowledge_cutoff,
                          xml_tools=tools),
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


# ----------------------------------------------------------------------------------------------
# Budgets
# ----------------------------------------------------------------------------------------------
def take_fraction(n_rows: int, fraction: float | None, rng: random.Random) -> list[int]:
    """Row indices: whole copies for the integer part of `fraction`, a seeded sample for the rest."""
    if fraction is None:
        return list(range(n_rows))
    whole, part = divmod(fraction, 1.0)
    picked = list(range(n_rows)) * int(whole)
    picked += rng.sample(range(n_rows), round(part * n_rows))
    return picked


def take_tokens(lengths: list[int], budget: int, rng: random.Random) -> list[int]:
    """Row indices whose lengths add up to `budget` (the last row may overshoot): a seeded shuffle,
    repeated as often as needed to upsample."""
    if not lengths:
        return []
    picked, total = [], 0
    while total < budget:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for i in order:
            if total >= budget:
                break
            picked.append(i)
            total += lengths[i]
    return picked


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------
def pack_wrapped(rows: list[dict[str, list[int]]], seq_length: int) -> list[dict[str, list[int]]]:
    """Concatenate documents and cut every `seq_length` tokens, recording where each document
    (or its piece) lies in the chunk, so attention can stay inside documents."""
    packs, ids, labels, lengths = [], [], [], []
    for row in rows:
        start = 0
        while start < len(row["input_ids"]):
            room = seq_length - len(ids)
            piece = slice(start, start + room)
            ids += row["input_ids"][piece]
            labels += row["labels"][piece]
            lengths.append(len(row["input_ids"][piece]))
            start += room
            if len(ids) == seq_length:
                packs.append({"input_ids": ids, "labels": labels, "seq_lengths": lengths})
                ids, labels, lengths = [], [], []
    if ids:
        packs.append({"input_ids": ids, "labels": labels, "seq_lengths": lengths})
    return packs


def pack(dataset, seq_length: int, strategy: str):
    """Packed `datasets.Dataset` with input_ids, labels and seq_lengths."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    if strategy == "wrapped":
        return Dataset.from_list(pack_wrapped(dataset.select_columns(["input_ids", "labels"]).to_list(), seq_length))
    # One map batch = all rows, so best-fit sees every document (TRL's default batch is 1000 rows).
    return pack_dataset(dataset.select_columns(["input_ids", "labels"]), seq_length, strategy,
                        {"batch_size": max(len(dataset), 1)})


def packing_stats(packed, seq_length: int) -> dict[str, Any]:
    lengths = [len(ids) for ids in packed["input_ids"]]
    tokens = sum(lengths)
    trained = sum(sum(1 for t in labels if t != -100) for labels in packed["labels"])
    docs = sum(len(s) for s in packed["seq_lengths"])
    return {
        "packed_rows": len(lengths),
        "documents": docs,
        "tokens": tokens,
        "efficiency": round(tokens / (len(lengths) * seq_length), 4) if lengths else 0.0,
        "trained_token_share": round(trained / tokens, 4) if tokens else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# The mixture
# ----------------------------------------------------------------------------------------------
def mixture_fingerprint(recipe: TrainRecipe, tokenizer, template: str) -> str:
    from pipeline.runs import content_hash

    h = hashlib.sha256()
    for source in recipe.data.sources:
        h.update(json.dumps(source.model_dump(), sort_keys=True).encode())
        if classify_input(source.path) == "local":
            h.update(content_hash(Path(source.path).expanduser()).encode())
    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    settings = {
        "seed": recipe.data.seed, "stage": recipe.stage, "template": template, "chat": recipe.chat.model_dump(),
        "max_length": recipe.training.get("max_length"), "packing": recipe.training.get("packing", False),
        "packing_strategy": recipe.training.get("packing_strategy", "bfd"),
        "assistant_only_loss": recipe.training.get("assistant_only_loss", False),
    }
    h.update(hashlib.sha256(vocab).digest() + json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def build_sft_mixture(recipe: TrainRecipe, tokenizer, cache_root: Path, quarantine_path: Path):
    """(dataset ready for TRL, report dict). Cached by fingerprint under `cache_root`."""
    from pipeline.models import file_lock

    fingerprint = mixture_fingerprint(recipe, tokenizer, tokenizer.chat_template or "")
    cache = cache_root / fingerprint
    with file_lock(cache_root / f"{fingerprint}.lock"):  # ranks of one job build it once
        return _build_or_load(recipe, tokenizer, cache, fingerprint, quarantine_path)


def _build_or_load(recipe, tokenizer, cache: Path, fingerprint: str, quarantine_path: Path):
    from datasets import Dataset, load_from_disk

    if (cache / "report.json").is_file():
        report = json.loads((cache / "report.json").read_text())
        if report.get("quarantined") and (cache / "quarantine.jsonl").is_file():
            quarantine_path.write_text((cache / "quarantine.jsonl").read_text())
        return load_from_disk(str(cache / "dataset")), report

    max_length = recipe.training.get("max_length")
    rendering = Rendering(recipe.chat.today_date, recipe.chat.knowledge_cutoff,
                          assistant_only=bool(recipe.training.get("assistant_only_loss")))
    rng = random.Random(recipe.data.seed)
    rows, quarantined = [], []
    for si, source in enumerate(recipe.data.sources):
        rows += _source_rows(si, source, tokenizer, rendering, rng, quarantined)

    strategy = recipe.training.get("packing_strategy", "bfd") if recipe.training.get("packing") else None
    too_long = sum(1 for r in rows if max_length and len(r["input_ids"]) > max_length)
    report = {"fingerprint": fingerprint, "sources": _per_source(recipe, rows, quarantined),
              "modes": _per_mode(rows), "rows": len(rows), "quarantined": len(quarantined),
              "max_length": max_length, "rows_over_max_length": too_long,
              # wrapped packing splits long documents across rows; every other path truncates them
              "over_length_rows_are": "split" if strategy in ("wrapped", "bfd_split") else "truncated"}
    rng.shuffle(rows)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    if strategy:
        dataset = pack(dataset, max_length, strategy)
        report["packing"] = {"strategy": strategy, "seq_length": max_length, **packing_stats(dataset, max_length)}
    elif max_length:
        dataset = dataset.map(lambda r: {k: r[k][:max_length] for k in ("input_ids", "labels")})

    _write_quarantine(quarantine_path, quarantined)
    tmp = cache.with_name(cache.name + ".tmp")
    dataset.save_to_disk(str(tmp / "dataset"))
    if quarantined:
        (tmp / "quarantine.jsonl").write_text(quarantine_path.read_text())
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)
    return load_from_disk(str(cache / "dataset")), report


def _source_rows(si: int, source: Source, tokenizer, rendering: Rendering, rng: random.Random,
                 quarantined: list[dict]) -> list[dict]:
    label = source.path if source.split == "train" else f"{source.path}:{source.split}"
    data = load_source(source)
    tokenized = []
    for index, row in enumerate(tqdm(data, desc=f"tokenizing {label}", leave=False)):
        try:
            thinking = row_mode(source, row)
            messages = normalise_messages(row)
            validate_conversation(messages, thinking)
            enc = tokenize_row(tokenizer, messages, thinking, rendering, tools=row.get("tools"))
        except BadRow as e:
            quarantined.append({"source": label, "source_index": si, "row": index, "reason": str(e)})
            continue
        tokenized.append({**enc, "source": si, "thinking": thinking})
    if source.tokens is not None:
        picked = take_tokens([len(r["input_ids"]) for r in tokenized], source.tokens, rng)
    else:
        picked = take_fraction(len(tokenized), source.fraction, rng)
    return [tokenized[i] for i in picked]


# ----------------------------------------------------------------------------------------------
# Preference pairs (APO / DPO)
# ----------------------------------------------------------------------------------------------
def normalise_pair(row: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt messages, [chosen assistant turn], [rejected assistant turn]).

    Accepts a prompt string or message list with chosen/rejected as strings, single turns or full
    conversations that repeat the prompt (as many preference datasets store them)."""
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


def build_preference_mixture(recipe: TrainRecipe, quarantine_path: Path):
    """(conversational preference `datasets.Dataset` for TRL's DPO trainer, report dict).

    Each row carries its own chat_template_kwargs (mode and the recipe's fixed date), which TRL
    passes to the template per example. `chosen` must be a valid turn for the row's mode; `rejected`
    only needs to be a non-empty assistant turn (a malformed answer is a fine thing to push down)."""
    from datasets import Dataset

    rng = random.Random(recipe.data.seed)
    rows, quarantined = [], []
    for si, source in enumerate(recipe.data.sources):
        label = source.path if source.split == "train" else f"{source.path}:{source.split}"
        kept = []
        for index, row in enumerate(tqdm(load_source(source), desc=f"reading {label}", leave=False)):
            try:
                thinking = row_mode(source, row)
                prompt, chosen, rejected = normalise_pair(row)
                validate_conversation(prompt + chosen, thinking)
                if not rejected[0]["content"].strip():
                    raise BadRow("empty rejected answer")
            except BadRow as e:
                quarantined.append({"source": label, "source_index": si, "row": index, "reason": str(e)})
                continue
            kept.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": si, "thinking": thinking,
                         "chat_template_kwargs": template_kwargs(thinking, today_date=recipe.chat.today_date,
                                                                 knowledge_cutoff=recipe.chat.knowledge_cutoff)})
        if source.tokens is not None:
            lengths = [sum(len(m["content"]) for m in r["prompt"] + r["chosen"] + r["rejected"]) // 4 for r in kept]
            picked = take_tokens(lengths, source.tokens, rng)  # ~4 characters a token: budgets are approximate here
        else:
            picked = take_fraction(len(kept), source.fraction, rng)
        rows += [kept[i] for i in picked]
    rng.shuffle(rows)
    _write_quarantine(quarantine_path, quarantined)
    count, modes = Counter(r["source"] for r in rows), Counter("think" if r["thinking"] else "no_think" for r in rows)
    bad = Counter(q["source_index"] for q in quarantined)
    report = {"rows": len(rows), "quarantined": len(quarantined), "modes": dict(modes),
              "sources": [{"source": s.path, "split": s.split, "mode": s.mode, "rows": count[i], "quarantined": bad[i]}
                          for i, s in enumerate(recipe.data.sources)]}
    if not rows:
        raise UserError(f"{recipe._source}: no usable preference pairs; see {quarantine_path}")
    columns = ("prompt", "chosen", "rejected", "chat_template_kwargs")
    return Dataset.from_list([{k: r[k] for k in columns} for r in rows]), report


def _per_source(recipe, rows, quarantined) -> list[dict[str, Any]]:
    tokens, trained, count = Counter(), Counter(), Counter()
    for r in rows:
        count[r["source"]] += 1
        tokens[r["source"]] += len(r["input_ids"])
        trained[r["source"]] += sum(1 for t in r["labels"] if t != -100)
    bad = Counter(q["source_index"] for q in quarantined)
    return [{"source": s.path, "split": s.split, "mode": s.mode, "rows": count[i], "tokens": tokens[i],
             "trained_tokens": trained[i], "quarantined": bad[i]} for i, s in enumerate(recipe.data.sources)]


def _per_mode(rows) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"rows": 0, "tokens": 0})
    for r in rows:
        mode = "think" if r["thinking"] else "no_think"
        out[mode]["rows"] += 1
        out[mode]["tokens"] += len(r["input_ids"])
    return dict(out)


def _write_quarantine(path: Path, quarantined: Iterable[dict]) -> None:
    quarantined = list(quarantined)
    if quarantined:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(q) + "\n" for q in quarantined))


def format_report(report: dict[str, Any]) -> str:
    """The mixture report as a readable table."""
    lines = [f"{'source':<48} {'mode':<9} {'rows':>7} {'tokens':>10} {'trained':>10} {'quarant.':>8}"]
    for s in report["sources"]:
        name = s["source"] if s["split"] == "train" else f"{s['source']}:{s['split']}"
        lines.append(f"{name[-48:]:<48} {s['mode']:<9} {s['rows']:>7} {s['tokens']:>10} "
                     f"{s['trained_tokens']:>10} {s['quarantined']:>8}")
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

