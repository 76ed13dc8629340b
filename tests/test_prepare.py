"""Data preparation on the real datasets' schema and at scale (issue 11): smoltalk2-shaped rows,
every bad row shape quarantined, sources that yield nothing, sharded preparation, BFD against TRL."""

import json
import random
from pathlib import Path

import pytest
from conftest import REPO
from transformers import AutoTokenizer

from pipeline.core.chat import install_template
from pipeline.core.errors import UserError
from pipeline.core.recipe import load_recipe
from pipeline.data.mixture import build_sft_mixture

TOOL = {"name": "get_weather", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def tok(tiny_model):
    return install_template(AutoTokenizer.from_pretrained(tiny_model))


def sft(write_recipe, sources, name="recipe.yaml", **training):
    return load_recipe(write_recipe({
        "name": "t", "stage": "sft", "model": {"name_or_path": "embedded:tiny-smollm3"},
        "data": {"sources": sources, "num_proc": 1},
        "training": {"max_length": 512, "packing": True, "packing_strategy": "bfd", "assistant_only_loss": True,
                     **training}}, name))


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def smoltalk2_row(thinking: bool):
    """A row as HuggingFaceTB/smoltalk2 (config SFT) stores it: xml_tools as JSON strings."""
    answer = ("<think>\nThe user wants the weather in Paris; call the tool.\n</think>\n\n" if thinking else "")
    return {"messages": [{"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": answer + '<tool_call>\n{"name": "get_weather", '
                                                          '"arguments": {"city": "Paris"}}\n</tool_call>'},
                         {"role": "tool", "content": '{"temp": 21}'},
                         {"role": "assistant", "content": ("<think>\n21 degrees.\n</think>\n\n" if thinking else "")
                          + "It is 21 °C in Paris."}],
            "chat_template_kwargs": {"enable_thinking": thinking, "xml_tools": [json.dumps(TOOL)],
                                     "python_tools": None, "custom_instructions": "You are WeatherBot."},
            "source": "xlam_traces_no_think"}


def test_smoltalk2_rows_declare_their_tools_and_instructions_and_train_only_the_assistant(write_recipe, tok,
                                                                                          tmp_path):
    data = write_jsonl(tmp_path / "smoltalk2.jsonl", [smoltalk2_row(True), smoltalk2_row(False)])
    dataset, report = build_sft_mixture(sft(write_recipe, [{"path": str(data), "mode": "from_row"}]), tok,
                                        tmp_path / "cache", tmp_path / "q.jsonl")
    assert report["rows"] == 2 and report["quarantined"] == 0
    documents = [(row["input_ids"][s - n:s], row["labels"][s - n:s]) for row in dataset.to_list()
                 for s, n in zip(_ends(row["seq_lengths"]), row["seq_lengths"])]
    assert len(documents) == 2
    for ids, labels in documents:
        text = tok.decode(ids)
        system = text.split("<|im_end|>")[0]
        assert "<tools>" in system and '"name": "get_weather"' in system  # declared, as a JSON line
        assert "You are WeatherBot." in system  # custom instructions from the row's kwargs
        trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
        assert '<tool_call>\n{"name": "get_weather"' in trained and "It is 21 °C in Paris.<|im_end|>" in trained
        # the tool result is a user turn: never trained; headers never trained
        assert '"temp": 21' not in trained and "<|im_start|>" not in trained and "Weather in Paris?" not in trained


BAD_SHAPES = [
    (["a", "list"], "a row must be a JSON object, got list"),
    (None, "a row must be a JSON object, got null"),
    ({"messages": "hello"}, "`messages` must be a list of messages, got str"),
    ({"messages": ["hi", "there"]}, "message 0 must be an object"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "tool_calls": "call"}]},
     "`tool_calls` must be a list"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "tools": 5},
     "`tools` must be a list of tools"),
    ({"messages": [{"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "<think>\nhm\n</think>\n\nhello"}]},
     "the system message says /no_think but the row's mode is think"),
    ("{not json", "not valid JSON"),
]


def test_every_bad_row_shape_is_quarantined_with_its_reason(write_recipe, tok, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "<think>\nx\n</think>\n\nhello"}]}
    data = write_jsonl(tmp_path / "bad.jsonl", [r if isinstance(r, str) else json.dumps(r) for r, _ in BAD_SHAPES]
                       + [json.dumps(good)])
    quarantine = tmp_path / "q.jsonl"
    _, report = build_sft_mixture(sft(write_recipe, [{"path": str(data), "mode": "think"}]), tok,
                                  tmp_path / "cache", quarantine)
    bad = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert report["rows"] == 1 and [b["row"] for b in bad] == list(range(len(BAD_SHAPES)))
    for b, (_, reason) in zip(bad, BAD_SHAPES):
        assert reason in b["reason"], (b, reason)


@pytest.mark.parametrize("content", ["", '{"messages": []}\n{"conversations": "x"}\n'])
def test_a_source_with_no_usable_rows_is_one_clear_error(write_recipe, tok, tmp_path, content):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    quarantine = tmp_path / "run" / "q.jsonl"
    with pytest.raises(UserError, match=r"data.sources.0 \(.*empty.jsonl\): no usable rows") as e:
        build_sft_mixture(sft(write_recipe, [{"path": str(data), "mode": "no_think"}]), tok,
                          tmp_path / "cache", quarantine)
    assert "\n" not in str(e.value)
    if content:
        assert len(quarantine.read_text().splitlines()) == 2  # written before the error


def test_a_parquet_of_the_wrong_schema_is_quarantined_then_refused(write_recipe, tok, tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"question": "q", "answer": "a"}] * 3).to_parquet(str(tmp_path / "wrong.parquet"))
    with pytest.raises(UserError, match="wrong.parquet.*no usable rows"):
        build_sft_mixture(sft(write_recipe, [{"path": str(tmp_path / "wrong.parquet"), "mode": "no_think"}]), tok,
                          tmp_path / "cache", tmp_path / "q.jsonl")
    reasons = {json.loads(line)["reason"] for line in (tmp_path / "q.jsonl").read_text().splitlines()}
    assert reasons == {"no `messages`, `conversations` or `prompt`/`completion` column"}


def test_invalid_utf8_names_the_file_and_line(write_recipe, tok, tmp_path):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"messages": []}\n{"messages": []}\n{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(UserError, match=r"latin1.jsonl:3: not valid UTF-8"):
        build_sft_mixture(sft(write_recipe, [{"path": str(data), "mode": "no_think"}]), tok,
                          tmp_path / "cache", tmp_path / "q.jsonl")


def test_sharegpt_and_prompt_completion_answers_do_not_train_the_header(write_recipe, tok, tmp_path):
    data = write_jsonl(tmp_path / "layouts.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "\n\nHello there."}]},
        {"prompt": "Hi", "completion": "\n  Hello again."}])
    dataset, _ = build_sft_mixture(sft(write_recipe, [{"path": str(data), "mode": "no_think"}]), tok,
                                   tmp_path / "cache", tmp_path / "q.jsonl")
    trained = tok.decode([t for labels in dataset["labels"] for t in labels if t != -100])
    assert "assistant" not in trained
    assert "<think>\n\n</think>\nHello there.<|im_end|>" in trained and "</think>\nHello again.<|im_end|>" in trained


def test_sharded_preparation_equals_one_pass(write_recipe, tok, tmp_path):
    sources = [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"},
               {"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think", "fraction": 1.5}]
    whole, report = build_sft_mixture(sft(write_recipe, sources), tok, tmp_path / "a", tmp_path / "q.jsonl")
    recipe = sft(write_recipe, sources)
    for i in range(3):
        assert build_sft_mixture(recipe, tok, tmp_path / "b", tmp_path / "q.jsonl", shard=(i, 3)) == (None, None)
    assert len(list((tmp_path / "b").glob("*.parts/source-*/share-*-of-3"))) == 6
    sharded, sharded_report = build_sft_mixture(recipe, tok, tmp_path / "b", tmp_path / "q.jsonl")
    assert sharded.to_list() == whole.to_list() and sharded_report == report


@pytest.mark.parametrize("training", [{}, {"packing": False}, {"packing_strategy": "wrapped"}])
def test_the_mixture_is_memory_mapped_from_the_cache_and_its_stats_count_its_rows(write_recipe, tok, tmp_path,
                                                                                   training):
    """Two workers (several Arrow files); what training ranks open is the cache's own files, and the
    statistics read from those files equal the rows' own counts."""
    sources = [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think", "fraction": 6.0},
               {"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think", "fraction": 6.0}]
    recipe = sft(write_recipe, sources, **training)
    recipe.data.num_proc = 2
    dataset, report = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    [cache] = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    files = [Path(f["filename"]) for f in dataset.cache_files]
    assert files and all(f.parent == cache / "dataset" for f in files)
    assert not list((tmp_path / "cache").glob("*.parts")) and not list((tmp_path / "cache").glob("*.tmp"))
    if training.get("packing", True):
        assert len(files) == 2  # one per worker, kept as written
        rows = dataset.to_list()
        tokens = sum(len(r["input_ids"]) for r in rows)
        assert report["packing"]["tokens"] == tokens and report["packing"]["packed_rows"] == len(rows)
        assert report["packing"]["documents"] == sum(len(r["seq_lengths"]) for r in rows)
        trained = sum(t != -100 for r in rows for t in r["labels"])
        assert report["packing"]["trained_token_share"] == round(trained / tokens, 4)
    again, _ = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    assert again.to_list() == dataset.to_list()


def _ends(lengths):
    total, out = 0, []
    for n in lengths:
        total += n
        out.append(total)
    return out


def test_bfd_packs_as_tightly_as_trl(tiny_model):
    """Our length-only best-fit decreasing against TRL's `pack_dataset(..., "bfd")` on log-normal lengths."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    from pipeline.data.packing import pack, packing_stats

    rng = random.Random(0)
    lengths = [min(2048, max(8, int(rng.lognormvariate(5.5, 0.9)))) for _ in range(2000)]
    docs = Dataset.from_list([{"input_ids": [rng.randrange(5, 900) for _ in range(n)],
                               "labels": [1] * n} for n in lengths])
    ours = pack(docs, 2048, "bfd")
    theirs = pack_dataset(docs, 2048, "bfd", {"batch_size": len(docs)})
    assert len(ours) <= len(theirs)
    assert packing_stats(ours, 2048)["tokens"] == sum(lengths)
    # every document appears exactly once, whole
    starts = []
    for row in ours.to_list():
        offset = 0
        for n in row["seq_lengths"]:
            starts.append(tuple(row["input_ids"][offset:offset + n]))
            offset += n
    assert sorted(starts) == sorted(tuple(d) for d in docs["input_ids"])


def test_bfd_rows_equal_trls_row_for_row_on_5000_log_normal_documents():
    """Our best-fit decreasing against TRL 1.16's own `pack_dataset(..., "bfd")` (one map batch, so TRL plans
    the whole set at once, as we do): the same rows, holding the same documents in the same order. Every
    document's tokens are its own number, so a row names the documents it holds. Log-normal lengths at 4,096
    give many rows with equal free space: which of them takes the next document is the tie TRL breaks."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    from pipeline.data.packing import pack

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.3, 1.0, size=5000).astype(np.int64), 8, 4096)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = pa.array(np.repeat(np.arange(len(lengths), dtype=np.int32), lengths))
    column = pa.ListArray.from_arrays(pa.array(offsets), tokens)
    docs = Dataset(pa.table({"input_ids": column, "labels": column}))

    theirs = pack_dataset(docs, 4096, "bfd", {"batch_size": len(docs)})
    ours = pack(docs, 4096, "bfd")

    def rows(packed):
        return [(row["input_ids"], row["seq_lengths"]) for row in packed.select_columns(
            ["input_ids", "seq_lengths"]).to_list()]

    mine, trl = rows(ours), rows(theirs)
    differ = sum(a != b for a, b in zip(mine, trl))
    assert len(mine) == len(trl) and differ == 0, f"{differ} of {len(trl)} rows hold other documents"


def test_allow_empty_lets_a_stage_output_with_no_rows_through(write_recipe, tok, tmp_path):
    empty = tmp_path / "rows.jsonl"
    empty.write_text("")
    recipe = sft(write_recipe, [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"},
                                {"path": str(empty), "mode": "from_row", "allow_empty": True}])
    _, report = build_sft_mixture(recipe, tok, tmp_path / "cache", tmp_path / "q.jsonl")
    assert [s["rows"] for s in report["sources"]] == [32, 0]


def test_released_mapped_pages_leave_the_process_and_read_back_the_same(tmp_path):
    """What keeps a map worker's memory flat: pages read through a memory map of an Arrow file are
    dropped from the process (its RssFile falls) and the file still reads the same afterwards."""
    import numpy as np
    import pyarrow as pa

    from pipeline.data.mapped import release_mapped_pages

    def rss_file_mb():
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024

    path = tmp_path / "big.arrow"
    data = np.random.default_rng(0).integers(0, 2**31, size=16 * 2**20, dtype=np.int32)  # 64 MB
    path.write_bytes(data.tobytes())
    mapped = pa.memory_map(str(path))
    view = np.frombuffer(mapped.read_buffer(), dtype=np.int32)
    checksum = int(view.sum(dtype=np.int64))  # reads every page
    before = rss_file_mb()
    assert release_mapped_pages() >= 64 * 2**20
    assert before - rss_file_mb() > 48
    assert int(view.sum(dtype=np.int64)) == checksum == int(data.sum(dtype=np.int64))
    mapped.close()


def test_prepare_builds_the_mixture_of_stages_that_have_one_and_refuses_the_others(capsys):
    """`smolalign prepare` asks the stage module for its `prepare` (midtrain and sft share SFT's); APO reads
    its pairs directly, so an APO recipe is one clear error naming the stages prepare serves, exit 2."""
    from pipeline.cli import main
    from pipeline.training import apo, midtrain, sft

    assert midtrain.prepare is sft.prepare and not hasattr(apo, "prepare")
    assert main(["prepare", "--recipe", str(REPO / "recipes" / "demo" / "apo.yaml")]) == 2
    err = capsys.readouterr().err
    assert "stage" in err and "`prepare` builds the mixtures of midtrain and sft; this recipe is `apo`" in err
