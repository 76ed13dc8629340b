"""Data: normalising, validation/quarantine, budgets, packing efficiency, packed == per-document."""

import json
import random
import re

import pytest
import torch
from conftest import REPO

from pipeline.data.packing import pack, packing_stats
from pipeline.data.reader import take_fraction, take_tokens
from pipeline.data.rows import BadRow, normalise_messages, validate_conversation

USER = {"role": "user", "content": "Hi"}


def test_normalise_layouts():
    expected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert normalise_messages({"messages": expected}) == expected
    assert normalise_messages({"conversations": [{"from": "human", "value": "Hi"},
                                                 {"from": "gpt", "value": "Hello"}]}) == expected
    assert normalise_messages({"prompt": "Hi", "completion": "Hello"}) == expected
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "image"},
                                                       {"type": "text", "text": "i"}]},
                          {"role": "assistant", "content": "Hello"}]}
    assert normalise_messages(parts) == expected
    with pytest.raises(BadRow, match="no `messages`"):
        normalise_messages({"text": "x"})
    with pytest.raises(BadRow, match="unknown ShareGPT speaker 'bot'"):
        normalise_messages({"conversations": [{"from": "bot", "value": "x"}]})


def test_every_shipped_bad_row_is_rejected_with_its_reason():
    rows = [json.loads(line) for line in (REPO / "data/demo/bad_rows.jsonl").read_text().splitlines()]
    reasons = []
    for row in rows:
        with pytest.raises(BadRow) as e:
            validate_conversation(normalise_messages(row), thinking=False)
        reasons.append(str(e.value))
    assert reasons == [
        "message 1: empty assistant turn",
        "message 1: unknown role 'robot' (allowed: assistant, system, tool, user)",
        "the conversation does not end with an assistant turn",
        "message 1: malformed think block (1 <think>, 0 </think>)",
        "message 2: a system message may only come first",
        "no `messages`, `conversations` or `prompt`/`completion` column",
    ]


def test_think_block_rules_per_mode():
    def convo(answer):
        return [USER, {"role": "assistant", "content": answer}]

    validate_conversation(convo("<think>\nadd them\n</think>\n\n4"), thinking=True)
    validate_conversation(convo("<think>\n\n</think>\n4"), thinking=False)
    validate_conversation(convo("4"), thinking=False)
    cases = {
        ("4", True): "think mode, but the final assistant turn has no <think> block",
        ("<think>\n\n</think>\n4", True): "think mode, but the think block is empty",
        ("<think>\nreasoning\n</think>\n4", False): "no_think mode, but the turn holds reasoning",
        ("<think>\nx\n</think>\n", True): "nothing after </think>: the answer is missing",
        ("Sure. <think>x</think> 4", True): "the think block must open the assistant turn",
        ("<think>a</think><think>b</think>4", True): "malformed think block (2 <think>, 2 </think>)",
    }
    for (answer, thinking), reason in cases.items():
        with pytest.raises(BadRow, match=re.escape(reason)):
            validate_conversation(convo(answer), thinking=thinking)


def test_tool_turn_order():
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    good = [USER, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "1"},
            {"role": "assistant", "content": "It is 1."}]
    validate_conversation(good, thinking=False)
    with pytest.raises(BadRow, match="message 1: a tool result must follow an assistant turn"):
        validate_conversation([USER, {"role": "tool", "content": "1"}], thinking=False)


def test_fraction_budget_up_and_down_sampling_is_seeded():
    picked = take_fraction(10, 2.5, random.Random(0))
    counts = [picked.count(i) for i in range(10)]
    assert len(picked) == 25 and min(counts) == 2 and max(counts) == 3
    assert picked == take_fraction(10, 2.5, random.Random(0))
    one, two = take_fraction(10, 0.3, random.Random(1)), take_fraction(10, 0.3, random.Random(2))
    assert sorted(set(one)) != sorted(set(two))
    assert take_fraction(4, None, random.Random(0)) == [0, 1, 2, 3]


def test_token_budget_reaches_budget_and_upsamples():
    lengths = [100, 200, 300, 400]
    down = take_tokens(lengths, 450, random.Random(0))
    total = sum(lengths[i] for i in down)
    assert 450 <= total < 450 + max(lengths) and len(set(down)) == len(down)
    up = take_tokens(lengths, 2500, random.Random(0))
    assert sum(lengths[i] for i in up) >= 2500 and min(up.count(i) for i in range(4)) == 2


def _rows(lengths, seed=0):
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(5, 1000) for _ in range(n)], "labels": [-100] * (n // 2) + [1] * (n - n // 2)}
            for n in lengths]


def test_wrapped_packing_keeps_every_token_and_document_boundaries():
    from datasets import Dataset

    rows = _rows([5, 9, 3, 12])
    packs = pack(Dataset.from_list(rows), 8, "wrapped").to_list()
    flat = [t for p in packs for t in p["input_ids"]]
    assert flat == [t for r in rows for t in r["input_ids"]]
    assert [len(p["input_ids"]) for p in packs] == [8, 8, 8, 5]
    assert [p["seq_lengths"] for p in packs] == [[5, 3], [6, 2], [1, 7], [5]]
    assert all(sum(p["seq_lengths"]) == len(p["labels"]) == len(p["input_ids"]) for p in packs)


@pytest.mark.parametrize("num_proc", [None, 2])
def test_wrapped_rows_equal_trls_wrapped_packing(num_proc):
    """TRL's `pack_dataset(..., "wrapped")` cuts the concatenated stream every seq_length tokens; ours
    cuts the same stream (rows computed per batch from document end offsets, in worker processes)
    and adds where each document piece starts."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    rng = random.Random(1)
    lengths = [max(1, int(rng.lognormvariate(4.0, 1.0))) for _ in range(1500)]  # some longer than a row
    docs = Dataset.from_list(_rows(lengths))
    ours = pack(docs, 128, "wrapped", num_proc=num_proc)
    theirs = pack_dataset(docs, 128, "wrapped", {"batch_size": len(docs)})  # one stream, not one per map batch
    assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]
    pieces = [n for row in ours["seq_lengths"] for n in row]
    assert sum(pieces) == sum(lengths) and len(pieces) >= len(lengths)
    # merging the pieces that continue a document across a row boundary gives back the documents
    merged = []
    for row in ours["seq_lengths"]:
        for j, n in enumerate(row):
            continues = j == 0 and merged and merged[-1] < lengths[len(merged) - 1]
            if continues:
                merged[-1] += n
            else:
                merged.append(n)
    assert merged == lengths


@pytest.mark.parametrize("num_proc", [None, 2])
def test_bfd_with_truncate_packs_the_first_seq_length_tokens_of_longer_documents(num_proc):
    from datasets import Dataset

    rng = random.Random(2)
    lengths = [rng.choice([5, 40, 64, 65, 200]) for _ in range(400)]
    rows = _rows(lengths)
    packed = pack(Dataset.from_list(rows), 64, "bfd", num_proc=num_proc, truncate=True).to_list()
    pieces = []
    for row in packed:
        start = 0
        for n in row["seq_lengths"]:
            pieces.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
        assert start == len(row["input_ids"]) <= 64
    expected = [(tuple(r["input_ids"][:64]), tuple(r["labels"][:64])) for r in rows]
    assert sorted(pieces) == sorted(expected)  # every document once, cut to its first 64 tokens, labels aligned
    with pytest.raises(ValueError, match="longer than seq_length"):
        pack(Dataset.from_list(rows), 64, "bfd")  # without truncate, over-length documents are refused


def test_bfd_packing_efficiency_on_a_realistic_length_distribution():
    """Chat SFT lengths are roughly log-normal (median ~500 tokens, long tail); cap at the sequence length."""
    from datasets import Dataset

    rng = random.Random(0)
    seq = 4096
    lengths = [min(seq, max(16, int(rng.lognormvariate(6.2, 0.9)))) for _ in range(3000)]
    packed = pack(Dataset.from_list(_rows(lengths)), seq, "bfd")
    stats = packing_stats(packed, seq)
    assert stats["documents"] == len(lengths)  # every document whole, none split
    assert stats["tokens"] == sum(lengths)
    assert stats["efficiency"] >= 0.95, stats
    assert all(len(ids) <= seq for ids in packed["input_ids"])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_forward_equals_per_document_forward(tiny_model, impl):
    """The exact training path: our packing -> TRL's padding-free collator -> the model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    docs = _rows([37, 101, 64, 18], seed=3)
    packed = pack(Dataset.from_list(docs), 256, "bfd")
    assert len(packed) == 1
    row = packed[0]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([row])
    assert "attention_mask" not in batch
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=impl).eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        start = 0
        for length in row["seq_lengths"]:
            ids = torch.tensor([row["input_ids"][start:start + length]])
            alone = model(ids, use_cache=False).logits[0]
            assert (logits[start:start + length] - alone).abs().max().item() < 1e-4
            start += length
    # and the leaking variant really leaks, so the check above can fail
    leaky = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=False, return_position_ids=True)([row])
    with torch.no_grad():
        bled = model(**{k: v for k, v in leaky.items() if k != "labels"}, use_cache=False).logits[0]
    assert (bled - logits).abs().max().item() > 1e-2


@pytest.mark.slow
def test_flex_attention_packed_rows_equal_per_document_logits(tiny_model, monkeypatch):
    """flex_attention, what `auto` trains with on a GPU without flash-attn, here on CPU in float32: BFD and
    wrapped rows through TRL's padding-free collator give every document piece the logits sdpa gives it alone.
    transformers turns the collator's position_ids into document ids and a BlockMask; the same row without
    document boundaries (positions 0..L-1) must differ, so the check can fail. flex_attention is compiled
    (torch.compile, inductor's C++ backend on CPU): 1-2 minutes, once per mask function and row length."""
    import torch._inductor.config
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    bfd = pack(Dataset.from_list(_rows([37, 101, 64, 18, 36], seed=5)), 256, "bfd")
    wrapped = pack(Dataset.from_list(_rows([150, 200, 90, 72], seed=6)), 256, "wrapped")
    rows = [bfd[0], wrapped[0], wrapped[1]]  # all 256 tokens: one compiled shape
    assert len(bfd) == 1 and len(wrapped) == 2 and {len(r["input_ids"]) for r in rows} == {256}
    assert [len(r["seq_lengths"]) for r in rows] == [5, 2, 3]  # the second document continues in row 2
    # compile in this process: with a pool of compile workers this test took 4.6 min instead of 1.9 (cold
    # inductor cache, 2 cores at load 5)
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    flex = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="flex_attention").eval()
    alone = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    assert flex.config._attn_implementation == "flex_attention"
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    with torch.no_grad():
        for row in rows:
            batch = {k: v for k, v in collate([row]).items() if k != "labels"}
            assert "attention_mask" not in batch
            packed = flex(**batch, use_cache=False).logits[0]
            start = 0
            for n in row["seq_lengths"]:
                reference = alone(torch.tensor([row["input_ids"][start:start + n]]), use_cache=False).logits[0]
                assert (packed[start:start + n] - reference).abs().max().item() < 1e-4
                start += n
            no_boundaries = torch.arange(len(row["input_ids"])).unsqueeze(0)
            control = flex(input_ids=batch["input_ids"], position_ids=no_boundaries, use_cache=False).logits[0]
            first = row["seq_lengths"][0]
            assert (control[first:] - packed[first:]).abs().max().item() > 1e-2


def test_packing_refuses_a_row_length_that_is_not_positive():
    """max_length 0 with wrapped packing once looped forever while memory grew."""
    import numpy as np

    from pipeline.data.packing import bfd_plan, wrapped_rows

    for plan in (wrapped_rows, bfd_plan):
        for bad in (0, -4):
            with pytest.raises(ValueError, match="seq_length must be positive"):
                plan(np.array([3, 5]), bad)
