"""The SFT mixture end to end: quarantine, budgets, report, trained tokens, cache."""

import json

import pytest
from conftest import REPO
from transformers import AutoTokenizer

from pipeline.core.chat import install_template
from pipeline.core.recipe import load_recipe
from pipeline.data.mixture import build_sft_mixture
from pipeline.data.pairs import build_preference_mixture
from pipeline.data.rows import format_report


@pytest.fixture
def tok(tiny_model):
    return install_template(AutoTokenizer.from_pretrained(tiny_model))


def sft(write_recipe, sources, **training):
    recipe = {"name": "t", "stage": "sft", "model": {"name_or_path": "embedded:tiny-smollm3"},
              "data": {"sources": sources},
              "training": {"max_length": 256, "packing": True, "packing_strategy": "bfd",
                           "assistant_only_loss": True, **training}}
    return load_recipe(write_recipe(recipe))


def test_mixture_report_quarantine_and_labels(write_recipe, tok, tmp_path):
    # the shipped bad rows, then two good ones (a source with no good row at all is an error: below)
    mixed = tmp_path / "bad_rows.jsonl"
    good = (REPO / "data/demo/chat_no_think.jsonl").read_text().splitlines()[:2]
    mixed.write_text((REPO / "data/demo/bad_rows.jsonl").read_text() + "\n".join(good) + "\n")
    recipe = sft(write_recipe, [
        {"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think", "fraction": 0.5},
        {"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think", "fraction": 2.0},
        {"path": str(mixed), "mode": "no_think"},
    ])
    quarantine = tmp_path / "quarantine.jsonl"
    dataset, report = build_sft_mixture(recipe, tok, tmp_path / "cache", quarantine)
    by_source = {s["source"].split("/")[-1]: s for s in report["sources"]}
    assert by_source["chat_no_think.jsonl"]["rows"] == 16 and by_source["reasoning.jsonl"]["rows"] == 96
    assert by_source["bad_rows.jsonl"] == {**by_source["bad_rows.jsonl"], "rows": 2, "quarantined": 6}
    assert report["modes"]["think"]["rows"] == 96 and report["modes"]["no_think"]["rows"] == 18
    bad = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [b["row"] for b in bad] == list(range(6)) and bad[0]["reason"] == "message 1: empty assistant turn"
    assert all(b["source"].endswith("bad_rows.jsonl") for b in bad)
    packing = report["packing"]
    assert packing["documents"] == 114
    assert packing["tokens"] == sum(len(r) for r in dataset["input_ids"])
    assert packing["efficiency"] == round(packing["tokens"] / (len(dataset) * 256), 4)
    assert all(len(r) <= 256 for r in dataset["input_ids"])
    # trained tokens are exactly the assistant turns: decode them all and look for user text
    trained = tok.decode([t for labels in dataset["labels"] for t in labels if t != -100])
    assert "What is the capital" not in trained and "Metadata" not in trained
    everything = tok.decode([t for ids in dataset["input_ids"] for t in ids])
    assert trained.count("<|im_end|>") == everything.count("<|im_start|>assistant") >= 114
    assert "boxed" in trained and "<think>\n\n</think>\nThe capital of" in trained
    table = format_report(report)
    assert "quarantined 6" in table and "efficiency" in table


def test_mixture_txt_counts_the_trained_tokens_training_sees(write_recipe, tok, tmp_path):
    """A row longer than max_length is cut: its trained tokens past the cut are never trained, so mixture.txt's
    "trained" column counts those within max_length, the number the plan shows and the packed rows hold."""
    recipe = sft(write_recipe, [{"path": str(REPO / "data/demo/tools.jsonl"), "mode": "no_think"}], max_length=360)
    dataset, report = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    [source] = report["sources"]
    packed = sum(sum(t != -100 for t in row) for row in dataset["labels"])
    assert source["trained_tokens_kept"] == packed < source["trained_tokens"]
    header, line = format_report(report).splitlines()[:2]
    assert "tools.jsonl" in line and line.split()[-2] == str(packed) and "trained (within max_length)" in header


def test_mixture_is_cached_by_fingerprint(write_recipe, tok, tmp_path):
    sources = [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}]
    recipe = sft(write_recipe, sources)
    _, first = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    _, again = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    assert first == again and len(list((tmp_path / "cache").glob("*/report.json"))) == 1
    other = sft(write_recipe, sources, max_length=128)
    _, third = build_sft_mixture(other, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    assert third["fingerprint"] != first["fingerprint"]


def test_token_budget_source(write_recipe, tok, tmp_path):
    recipe = sft(write_recipe, [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think", "tokens": 20000}])
    _, report = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    tokens = report["sources"][0]["tokens"]
    assert 20000 <= tokens < 20000 + 300 and report["sources"][0]["rows"] > 48  # upsampled past one epoch


def test_midtrain_trains_every_token(write_recipe, tok, tmp_path):
    recipe = load_recipe(write_recipe({
        "name": "t", "stage": "midtrain", "model": {"name_or_path": "embedded:tiny-smollm3"},
        "data": {"sources": [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}]},
        "training": {"max_length": 128, "packing": True, "packing_strategy": "wrapped"}}))
    dataset, report = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    assert report["packing"]["trained_token_share"] == 1.0
    assert all(len(r) == 128 for r in dataset["input_ids"][:-1])  # wrapped: every row full but the last
    assert sum(sum(s) for s in dataset["seq_lengths"]) == report["packing"]["tokens"]


def test_preference_mixture_modes_and_quarantine(write_recipe, tmp_path, tok):
    bad = tmp_path / "bad_pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": "", "rejected": "x",
                               "chat_template_kwargs": {"enable_thinking": False}}) + "\n"
                   + json.dumps({"prompt": "Hi", "chosen": "ok", "rejected": "x"}) + "\n"
                   # a string is truthy: trained as think mode before it was refused
                   + json.dumps({"prompt": "Hi", "chosen": "ok", "rejected": "x",
                                 "chat_template_kwargs": {"enable_thinking": "false"}}) + "\n")
    recipe = load_recipe(write_recipe({
        "name": "t", "stage": "apo", "model": {"name_or_path": "embedded:tiny-smollm3"},
        "data": {"sources": [{"path": str(REPO / "data/demo/preferences.jsonl"), "mode": "from_row"},
                             # a source with no usable pair stops the run, as a source of rows does
                             {"path": str(bad), "mode": "from_row", "allow_empty": True}]},
        "training": {"loss_type": "apo_zero"}}))
    dataset, report = build_preference_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    assert report["rows"] == 64 and report["modes"] == {"think": 32, "no_think": 32} and report["quarantined"] == 3
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert reasons == ["message 1: empty assistant turn",
                       "mode `from_row` but the row has no chat_template_kwargs.enable_thinking",
                       "chat_template_kwargs.enable_thinking must be true or false, got 'false'"]
    row = dataset[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chat_template_kwargs"]["today_date"] == "01 July 2025"


def apo(write_recipe, sources):
    return load_recipe(write_recipe({"name": "t", "stage": "apo", "model": {"name_or_path": "embedded:tiny-smollm3"},
                                     "data": {"sources": sources}, "training": {"loss_type": "apo_zero"}}))


def test_a_pair_token_budget_counts_the_tokens_training_sees(write_recipe, tmp_path, tok):
    """`tokens` counts each pair as the trainer sees it (prompt + chosen, prompt + rejected, rendered by the
    stage's tokenizer and template), not 4 characters a token: the pairs' own total draws each pair once, one
    token more draws one pair twice."""
    from pipeline.core.chat import template_kwargs

    demo = REPO / "data/demo/preferences.jsonl"
    total = 0
    for row in map(json.loads, demo.read_text().splitlines()):
        kwargs = template_kwargs(row["chat_template_kwargs"]["enable_thinking"], today_date="01 July 2025",
                                 knowledge_cutoff="June 2025")
        for answer in ("chosen", "rejected"):  # the demo's pairs are message lists already
            ids = tok.apply_chat_template(row["prompt"] + row[answer], tokenize=True, return_dict=True, **kwargs)
            total += len(ids["input_ids"])
    whole = apo(write_recipe, [{"path": str(demo), "mode": "from_row", "tokens": total}])
    assert build_preference_mixture(whole, tok, tmp_path / "cache", tmp_path / "q.jsonl")[1]["rows"] == 64
    more = apo(write_recipe, [{"path": str(demo), "mode": "from_row", "tokens": total + 1}])
    assert build_preference_mixture(more, tok, tmp_path / "cache", tmp_path / "q.jsonl")[1]["rows"] == 65


def test_preference_pairs_are_cached_by_content_and_a_bad_line_is_quarantined(write_recipe, tmp_path, tok,
                                                                             monkeypatch):
    """A line that is not JSON is quarantined with its reason, as the mixture of rows does (it stopped the APO
    stage before); the pairs are built once per content, as the mixture is: a second build reads the cache."""
    import pipeline.data.pairs as pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text((REPO / "data/demo/preferences.jsonl").read_text() + "{not json\n")
    recipe = apo(write_recipe, [{"path": str(data), "mode": "from_row", "fraction": 2.0}])
    first, report = build_preference_mixture(recipe, tok, tmp_path / "cache", tmp_path / "run1" / "q.jsonl")
    assert report["rows"] == 128 and report["quarantined"] == 1  # a fraction above 1 upsamples pairs too
    assert [json.loads(line)["row"] for line in (tmp_path / "run1" / "q.jsonl").read_text().splitlines()] == [64]
    assert "not valid JSON" in (tmp_path / "run1" / "q.jsonl").read_text()
    assert [p.name for p in (tmp_path / "run1").iterdir()] == ["q.jsonl"]  # no spool or temp file beside it
    monkeypatch.setattr(pairs, "preference_rows", lambda *a: pytest.fail("the sources were read again"))
    again, report_again = build_preference_mixture(recipe, tok, tmp_path / "cache", tmp_path / "run2" / "q.jsonl")
    assert again.to_list() == first.to_list() and report_again == report
    assert (tmp_path / "run2" / "q.jsonl").read_text() == (tmp_path / "run1" / "q.jsonl").read_text()
    data.write_text(data.read_text() + "{still not json\n")  # changed content: a new entry, read again
    with pytest.raises(pytest.fail.Exception, match="read again"):
        build_preference_mixture(recipe, tok, tmp_path / "cache", tmp_path / "run3" / "q.jsonl")


def test_leading_newlines_in_answers_do_not_train_the_header(write_recipe, tok, tmp_path):
    data = tmp_path / "lead.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "\n\n<think>\nr\n</think>\n\nHello"}]})
                    + "\n")
    recipe = sft(write_recipe, [{"path": str(data), "mode": "think"}], packing=False)
    dataset, _ = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    trained = tok.decode([t for t in dataset[0]["labels"] if t != -100])
    assert trained == "<think>\nr\n</think>\n\nHello<|im_end|>"


def test_a_source_is_named_the_same_by_the_mixture_report_the_quarantine_and_the_plan(tmp_path):
    """One label for a source everywhere: path, Hub config, split (a smoltalk2 subset is a config + split)."""
    import io

    from pipeline.core.schema import Source
    from pipeline.data.reader import write_quarantine
    from pipeline.data.rows import format_report
    from pipeline.planning import plan

    split = "smoltalk_smollm3_everyday_conversations_no_think"
    source = Source(path="HuggingFaceTB/smoltalk2", name="SFT", split=split)
    label = "HuggingFaceTB/smoltalk2:SFT:smoltalk_smollm3_everyday_conversations_no_think"
    assert plan.source_label(source.model_dump()) == label
    quarantine = io.StringIO()
    write_quarantine(quarantine, source, 0, [(3, "empty assistant turn")])
    assert json.loads(quarantine.getvalue())["source"] == label
    report = {"sources": [{"source": source.path, "name": source.name, "split": source.split, "mode": "no_think",
                           "rows": 1, "tokens": 9, "trained_tokens": 4, "quarantined": 1}],
              "modes": {}, "rows": 1, "quarantined": 1, "max_length": 16, "rows_over_max_length": 0,
              "over_length_rows_are": "truncated"}
    assert label[-48:] in format_report(report)
    assert plan.source_label({"path": "data/x.jsonl"}) == "data/x.jsonl"
