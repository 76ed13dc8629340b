"""Writes the demo data shipped in data/demo/ (run from the repo root; the output is committed).

    python data/demo/make_demo_data.py

Small but real: every answer is correct, every think trace is a real derivation. Files:
- reasoning.jsonl      think-mode arithmetic/word problems with step-by-step <think> traces
- chat_no_think.jsonl  direct answers to factual questions, some multi-turn, some with a system prompt
- tools.jsonl          tool-calling conversations (assistant tool_calls, tool results, final answer)
- dual_think.jsonl     everyday questions answered with a short <think> derivation, then the answer
- dual_no_think.jsonl  the same questions answered directly (the mode flag, not the question, decides)
- prompts.jsonl        prompts of a "non-reasoning" dataset (open-ended requests)
- questions.jsonl      short everyday questions, none in the SFT rows: the demo synth stages' prompts (with
                       `answer` where it is a number, for the `verify: math` filter)
- preferences.jsonl    chosen vs rejected (wrong mode's format, or a wrong answer), both modes, for APO
- preferences_heldout.jsonl  pairs of the same kind on questions APO never sees: the demo's preference check
- bad_rows.jsonl       rows that must be quarantined, one per reason (used by tests)
- rl_prompts.jsonl     the demo RL stage's prompts: open-ended requests with a word limit (IFEval's
                       length_constraints:number_words), as Task.training_rows writes them (task, reference)
- rl_heldout.jsonl     the same instruction on requests RL never trains on: its held-out check
"""

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent
rng = random.Random(0)


def write(name, rows):
    (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def reasoning_rows():
    rows = []
    for _ in range(24):
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        tens, ones = b // 10 * 10, b % 10
        think = (f"I need {a} × {b}. Split {b} into {tens} + {ones}. {a} × {tens} = {a * tens}. "
                 f"{a} × {ones} = {a * ones}. Sum: {a * tens} + {a * ones} = {a * b}.")
        rows.append((f"What is {a} × {b}?", think, f"{a} × {b} = \\boxed{{{a * b}}}."))
    for _ in range(16):
        price, qty, paid = rng.randint(2, 19), rng.randint(2, 9), 200
        total = price * qty
        think = (f"Each costs {price} dollars and there are {qty}, so the total is {price} × {qty} = {total}. "
                 f"Paying {paid}, the change is {paid} - {total} = {paid - total}.")
        rows.append((f"A notebook costs ${price}. Sam buys {qty} notebooks and pays with ${paid}. "
                     f"How much change does Sam get?", think, f"Sam gets \\boxed{{{paid - total}}} dollars back."))
    for _ in range(8):
        speed, hours = rng.randint(40, 120), rng.randint(2, 6)
        think = f"Distance = speed × time = {speed} km/h × {hours} h = {speed * hours} km."
        rows.append((f"A train travels at {speed} km/h for {hours} hours. How far does it go?", think,
                     f"It travels \\boxed{{{speed * hours}}} km."))
    return [{"messages": [{"role": "user", "content": q},
                          {"role": "assistant", "content": f"<think>\n{t}\n</think>\n\n{a}"}]} for q, t, a in rows]


CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Mexico", "Mexico City"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Spain", "Madrid"),
            ("Australia", "Canberra"), ("Brazil", "Brasília"), ("India", "New Delhi"), ("Germany", "Berlin"),
            ("Portugal", "Lisbon"), ("Chile", "Santiago"), ("Greece", "Athens")]
DEFINITIONS = [("photosynthesis", "the process by which plants use light, water and carbon dioxide to make sugar "
                "and release oxygen"),
               ("an atom", "the smallest unit of a chemical element"),
               ("gravity", "the force by which masses attract each other"),
               ("a prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
               ("evaporation", "the change of a liquid into a gas below its boiling point"),
               ("a verb", "a word that describes an action, state or occurrence"),
               ("inflation", "a general rise in prices that reduces what money can buy"),
               ("a glacier", "a slowly moving mass of ice formed from compacted snow")]


def chat_rows():
    rows = []
    for country, capital in CAPITALS:
        rows.append({"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                                  {"role": "assistant", "content": f"The capital of {country} is {capital}."}]})
    for term, meaning in DEFINITIONS:
        rows.append({"messages": [
            {"role": "system", "content": "You are a concise tutor. Answer in one sentence."},
            {"role": "user", "content": f"What is {term}?"},
            {"role": "assistant", "content": f"{term[0].upper() + term[1:]} is {meaning}."}]})
    for (c1, k1), (c2, k2) in zip(CAPITALS[::2], CAPITALS[1::2]):
        rows.append({"messages": [
            {"role": "user", "content": f"Capital of {c1}?"},
            {"role": "assistant", "content": f"{k1}."},
            {"role": "user", "content": f"And of {c2}?"},
            {"role": "assistant", "content": f"The capital of {c2} is {k2}."}]})
    return rows


WEATHER_TOOL = {"name": "get_weather", "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                                "unit": {"type": "string",
                                                                         "enum": ["celsius", "fahrenheit"]}},
                               "required": ["city"]}}
CONVERT_TOOL = {"name": "convert_currency", "description": "Convert an amount between currencies.",
                "parameters": {"type": "object", "properties": {"amount": {"type": "number"},
                                                                "from": {"type": "string"}, "to": {"type": "string"}},
                               "required": ["amount", "from", "to"]}}


def tool_rows():
    rows = []
    for city, temp in [("Paris", 18), ("Tokyo", 24), ("Oslo", 3), ("Lima", 21), ("Cairo", 33), ("Madrid", 27)]:
        arguments = {"city": city, "unit": "celsius"}
        call = {"type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        rows.append({"tools": [WEATHER_TOOL, CONVERT_TOOL], "messages": [
            {"role": "user", "content": f"What's the weather in {city} right now, in Celsius?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": json.dumps({"city": city, "temperature": temp, "unit": "celsius"})},
            {"role": "assistant", "content": f"It is {temp} °C in {city} right now."}]})
    for amount, src, dst, rate in [(100, "USD", "EUR", 0.92), (50, "GBP", "USD", 1.27), (2000, "JPY", "USD", 0.0067),
                                   (80, "EUR", "CHF", 0.95)]:
        call = {"type": "function", "function": {"name": "convert_currency",
                                                 "arguments": {"amount": amount, "from": src, "to": dst}}}
        result = round(amount * rate, 2)
        rows.append({"tools": [WEATHER_TOOL, CONVERT_TOOL], "messages": [
            {"role": "user", "content": f"How much is {amount} {src} in {dst}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": json.dumps({"amount": result, "currency": dst})},
            {"role": "assistant", "content": f"{amount} {src} is about {result} {dst}."}]})
    return rows


PROMPTS = ["Suggest a name for a small bakery.", "How do I politely decline a meeting invitation?",
           "Give me three tips for keeping houseplants alive.", "Write a two-line poem about autumn.",
           "What should I pack for a weekend hiking trip?", "Explain what a budget is to a ten-year-old.",
           "How can I fall asleep faster?", "Recommend a way to start learning to cook.",
           "Write a short thank-you note to a neighbour who watered my plants.",
           "What are good questions to ask at the end of a job interview?",
           "How do I make a simple vegetable soup?", "Give me an idea for a rainy-day activity with kids.",
           "How do I remove a coffee stain from a shirt?", "Describe the sea to someone who has never seen it.",
           "What is a polite way to ask a colleague to speak more quietly?", "Plan a 20-minute morning routine."]


# Dual-mode rows: everyday questions, each answered in both modes (think: a 1-3 sentence derivation
# in <think>, then a 1-2 sentence answer; no-think: the answer alone), so that the mode flag, not the
# question, decides whether to reason. Short on purpose: a CPU demo generates 64-96 new tokens.
# Each item is (question, reasoning, answer, wrong answer); the wrong answer feeds the rejected side
# of preference pairs. The mode-adherence eval's prompts (eval/tasks/mode.py) are held out: checked below.
COUNTRIES = CAPITALS + [("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Argentina", "Buenos Aires"),
                        ("Thailand", "Bangkok"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
                        ("Turkey", "Ankara"), ("Morocco", "Rabat"), ("Vietnam", "Hanoi"), ("Finland", "Helsinki"),
                        ("Cuba", "Havana"), ("Nigeria", "Abuja"), ("Hungary", "Budapest"), ("Denmark", "Copenhagen")]
SHAPES = [("triangle", 3, "tri-"), ("square", 4, "quadri-, as in quadrilateral,"), ("pentagon", 5, "penta-"),
          ("heptagon", 7, "hepta-"), ("octagon", 8, "octa-"), ("nonagon", 9, "nona-"), ("decagon", 10, "deca-"),
          ("dodecagon", 12, "dodeca-")]
SYNONYMS = [("big", "large", "of great size"), ("fast", "quick", "moving at high speed"),
            ("tired", "exhausted", "in need of rest"), ("smart", "clever", "quick to learn and understand"),
            ("angry", "furious", "feeling strong displeasure"), ("begin", "start", "to set something going"),
            ("small", "tiny", "of little size"), ("sad", "unhappy", "feeling sorrow"),
            ("brave", "courageous", "ready to face danger"), ("easy", "simple", "not hard to do"),
            ("old", "ancient", "having existed for a long time"), ("rich", "wealthy", "having a lot of money")]
TRANSLATIONS = [("hello", "French", "bonjour"), ("good night", "French", "bonne nuit"), ("water", "French", "eau"),
                ("thank you", "Spanish", "gracias"), ("friend", "Spanish", "amigo"), ("cheese", "Spanish", "queso"),
                ("good morning", "German", "guten Morgen"), ("dog", "German", "Hund"), ("house", "German", "Haus"),
                ("please", "Italian", "per favore"), ("goodbye", "Italian", "arrivederci"),
                ("cat", "Italian", "gatto")]
ACRONYMS = [("GPU", "Graphics Processing Unit"), ("RAM", "Random Access Memory"), ("USB", "Universal Serial Bus"),
            ("HTML", "HyperText Markup Language"), ("NASA", "National Aeronautics and Space Administration"),
            ("DNA", "deoxyribonucleic acid"), ("URL", "Uniform Resource Locator"), ("PDF", "Portable Document Format"),
            ("ATM", "Automated Teller Machine"), ("FAQ", "Frequently Asked Questions"),
            ("SMS", "Short Message Service"), ("Wi-Fi", "Wireless Fidelity")]
FACTS = [("Which planet is the largest in the Solar System?", "The gas giants are the biggest planets, and Jupiter is "
          "bigger than Saturn.", "Jupiter is the largest planet in the Solar System.", "Saturn"),
         ("Which planet is known as the Red Planet?", "The planet whose iron-rich dust looks red is Mars.",
          "Mars is known as the Red Planet.", "Venus"),
         ("Which planet is farthest from the Sun?", "Pluto is no longer counted as a planet, so the outermost planet "
          "is Neptune.", "Neptune is the planet farthest from the Sun.", "Uranus"),
         ("What is the freezing point of water in Celsius?", "The Celsius scale is defined so that water freezes at 0 "
          "degrees at normal pressure.", "Water freezes at 0 °C.", "32"),
         ("What gas do plants absorb from the air?", "Plants take in carbon dioxide for photosynthesis and release "
          "oxygen.", "Plants absorb carbon dioxide.", "oxygen"),
         ("How many continents are there?", "The usual count is Africa, Antarctica, Asia, Australia, Europe, North "
          "America and South America, which makes 7.", "There are 7 continents.", "6"),
         ("What is the largest ocean on Earth?", "The Pacific covers more area than the Atlantic and the Indian "
          "Ocean.", "The Pacific Ocean is the largest ocean.", "Atlantic"),
         ("How many legs does a spider have?", "Spiders are arachnids, and arachnids have 8 legs, unlike insects "
          "with 6.", "A spider has 8 legs.", "6"),
         ("What is the chemical symbol for gold?", "Gold's symbol comes from its Latin name, aurum.",
          "The chemical symbol for gold is Au.", "Ag"),
         ("Who wrote Romeo and Juliet?", "Romeo and Juliet is a tragedy from the 1590s by William Shakespeare.",
          "William Shakespeare wrote Romeo and Juliet.", "Charles Dickens"),
         ("What is the tallest mountain on Earth?", "Measured from sea level, Mount Everest is the highest peak.",
          "Mount Everest is the tallest mountain on Earth.", "K2"),
         ("How many strings does a standard guitar have?", "A standard guitar is tuned E A D G B E, one note per "
          "string, so it has 6.", "A standard guitar has 6 strings.", "4")]
NAMES = [("dog", "Biscuit", "it is friendly and easy to shout across a park"),
         ("goldfish", "Bubbles", "it matches how a fish moves"), ("parrot", "Kiwi", "it is short and bright"),
         ("hamster", "Peanut", "it suits a small, round pet"), ("rabbit", "Clover", "rabbits love clover"),
         ("turtle", "Sheldon", "it is a pun on shell"), ("horse", "Thunder", "it sounds strong and fast"),
         ("sailing boat", "Sea Breeze", "it evokes the wind that moves it"),
         ("coffee shop", "The Daily Grind", "it is a pun on grinding coffee"),
         ("robot", "Bolt", "it is short and sounds mechanical")]
CATEGORIES = [("fruits", ["apple", "banana", "mango"]), ("mammals", ["dog", "whale", "elephant"]),
              ("musical instruments", ["piano", "violin", "drum"]), ("vegetables", ["carrot", "spinach", "onion"]),
              ("birds", ["sparrow", "eagle", "penguin"]), ("European countries", ["Spain", "Poland", "Greece"]),
              ("programming languages", ["Python", "Java", "Rust"]), ("metals", ["iron", "copper", "silver"])]


def capital_items():
    capitals = [k for _, k in COUNTRIES]
    return [(f"What is the capital of {c}?",
             f"The question asks for the capital city of {c}. The capital of {c} is {k}.",
             f"The capital of {c} is {k}.", capitals[(i + 5) % len(capitals)]) for i, (c, k) in enumerate(COUNTRIES)]


def arithmetic_items(rng):
    items = []
    for _ in range(60):
        a, b = rng.randint(12, 89), rng.randint(11, 89)
        tens, ones = b // 10 * 10, b % 10
        items.append((f"What is {a} + {b}?", f"{a} + {tens} = {a + tens}, and {a + tens} + {ones} = {a + b}.",
                      f"{a} + {b} = {a + b}.", str(a + b + 10)))
        big, small = max(a, b), min(a, b)
        items.append((f"What is {big} - {small}?", f"Subtracting {small} from {big} leaves {big - small}.",
                      f"{big} - {small} = {big - small}.", str(big - small + 1)))
    for _ in range(40):
        p, n = rng.choice([5, 10, 20, 25, 30, 40, 50, 75]), rng.randint(2, 30) * 20
        r = n * p // 100
        items.append((f"What is {p}% of {n}?", f"{p}% means {p} per hundred, so {n} × {p} / 100 = {r}.",
                      f"{p}% of {n} is {r}.", str(r + n // 10)))
    for _ in range(30):
        h = rng.randint(2, 12)
        items.append((f"How many minutes are in {h} hours?", f"An hour has 60 minutes, so {h} × 60 = {h * 60}.",
                      f"There are {h * 60} minutes in {h} hours.", str(h * 100)))
        w = rng.randint(2, 9)
        items.append((f"How many days are in {w} weeks?", f"A week has 7 days, so {w} × 7 = {w * 7}.",
                      f"There are {w * 7} days in {w} weeks.", str(w * 5)))
    return items


def prime_items():
    items = []
    for n in range(21, 120, 2):
        divisor = next((d for d in (3, 5, 7) if n % d == 0), None)
        if divisor:
            items.append((f"Is {n} a prime number?", f"{n} = {divisor} × {n // divisor}, so it has a divisor other "
                          "than 1 and itself.", f"No, {n} is not prime: it equals {divisor} × {n // divisor}.", "Yes"))
        else:
            items.append((f"Is {n} a prime number?", f"{n} is odd and not divisible by 3, 5 or 7, and 11 × 11 = 121 "
                          f"is larger than {n}, so no smaller factor is possible.", f"Yes, {n} is a prime number.",
                          "No"))
    return items


def word_items():
    items = []
    for shape, n, prefix in SHAPES:
        items.append((f"How many sides does a {shape} have?", f"The prefix {prefix} means {n}, and a {shape} is a "
                      f"polygon with that many sides.", f"A {shape} has {n} sides.", str(n + 1)))
    for word, syn, gloss in SYNONYMS:
        items.append((f"Give me a synonym for '{word}'.", f"'{word}' means {gloss}. A word with the same meaning is "
                      f"'{syn}'.", f"A synonym for '{word}' is '{syn}'.", "'" + word[::-1] + "'"))
    for english, lang, said in TRANSLATIONS:
        items.append((f"Translate '{english}' into {lang}.", f"In {lang}, '{english}' is said '{said}'.",
                      f"'{english}' in {lang} is '{said}'.", "'" + english + "o'"))
    for acronym, expansion in ACRONYMS:
        items.append((f"What does {acronym} stand for?", f"{acronym} is an abbreviation, one letter per word: "
                      f"{expansion}.", f"{acronym} stands for {expansion}.", "a brand name"))
    for thing, name, why in NAMES:
        items.append((f"Suggest a name for a {thing}.", f"A good name for a {thing} is short and memorable. '{name}' "
                      f"works because {why}.", f"How about '{name}'? It is short and easy to remember.", "'X'"))
    for category, (a, b, c) in CATEGORIES:
        items.append((f"Name three {category}.", f"I need three well-known {category}: {a}, {b} and {c} are "
                      "clear examples.", f"Three {category}: {a}, {b} and {c}.", "none"))
    items.extend(FACTS)
    return items


def held_out_prompts():
    """The mode-adherence eval's prompts: never in the training data (run from the repo root)."""
    import sys
    sys.path.insert(0, str(OUT.parent.parent))
    from eval.tasks.mode import PROMPTS as MODE_PROMPTS
    return set(MODE_PROMPTS)


def dual_mode_items():
    """Every question once, shuffled with a fixed seed, none of them a held-out eval prompt."""
    items = capital_items() + arithmetic_items(random.Random(1)) + prime_items() + word_items()
    held_out, seen, unique = held_out_prompts(), set(), []
    for item in items:
        if item[0] not in held_out and item[0] not in seen:
            seen.add(item[0])
            unique.append(item)
    random.Random(2).shuffle(unique)
    return unique


def think_content(reasoning, answer):
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def dual_rows(items, think):
    return [{"messages": [{"role": "user", "content": q},
                          {"role": "assistant", "content": think_content(r, a) if think else a}]}
            for q, r, a, _ in items]


def wrong_answer(answer, wrong):
    """The same sentence with a wrong value: replace the last number or quoted/capitalised answer word."""
    numbers = re.findall(r"\d+", answer)
    if numbers and wrong.isdigit():
        head, _, tail = answer.rpartition(numbers[-1])
        return head + wrong + tail
    return f"I believe it is {wrong}."


def numeric_answer(question, answer, wrong):
    """The number a numeric item's answer ends with (the synth filter `verify: math` checks traces against
    it), or None: for non-numeric items, or when that number is in the question too (then it is not the
    result, as in "There are 120 minutes in 2 hours.")."""
    numbers = re.findall(r"\d+", answer)
    if wrong.isdigit() and numbers and numbers[-1] not in re.findall(r"\d+", question):
        return numbers[-1]
    return None


def preference_pair(item, think, kind):
    """chosen: correct and in the row's mode. rejected (by `kind`): the wrong mode's format, or a wrong answer."""
    q, reasoning, answer, wrong = item
    if think:
        chosen = think_content(reasoning, answer)
        rejected = answer if kind == 0 else think_content(f"I recall the answer directly: {wrong}.",
                                                          wrong_answer(answer, wrong))
    else:
        chosen = answer
        rejected = (f"Okay, let me think step by step. {reasoning} So, {answer[0].lower() + answer[1:]}" if kind == 0
                    else wrong_answer(answer, wrong))
    return {"prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "chat_template_kwargs": {"enable_thinking": think}}


def preference_rows(items):
    return [preference_pair(item, think=i % 2 == 0, kind=i // 2 % 2) for i, item in enumerate(items)]


# Open-ended requests, none in the other demo files or the eval's mode prompts: a 135M model answers them at
# any length, so a word limit is a verifiable reward that some of its sampled answers earn and others miss.
RL_REQUESTS = [
    "Describe your favourite season.", "Explain why people keep pets.", "Give advice to a new runner.",
    "Describe a busy train station.", "Explain how to make a cup of tea.", "Say why reading is useful.",
    "Describe a quiet library.", "Give a tip for saving money.", "Explain why exercise matters.",
    "Describe the smell of rain.", "Suggest a weekend activity for a family.", "Explain what a map is for.",
    "Describe a sunny beach.", "Give advice for a first job interview.", "Explain why sleep is important.",
    "Describe a snowy morning.", "Suggest a gift for a teacher.", "Explain what a calendar is for.",
    "Describe a farmers' market.", "Give a tip for learning a language.", "Explain why we recycle.",
    "Describe a thunderstorm.", "Suggest a name for a goldfish.", "Explain how a bicycle moves.",
    "Describe a city park in spring.", "Give advice for studying for an exam.", "Explain what a recipe is.",
    "Describe a mountain view.", "Suggest a hobby for someone who likes music.", "Explain why plants need water.",
    "Describe a birthday party.", "Give a tip for staying focused.", "Explain what a library card does.",
    "Describe an old bookshop.", "Suggest a breakfast for a busy morning.", "Explain why the sky gets dark.",
    "Describe a forest at night.", "Give advice for a long car trip.", "Explain what a museum is.",
    "Describe a crowded market.", "Suggest a way to relax after work.", "Explain why we brush our teeth.",
    "Describe a walk by a river.", "Give a tip for writing a letter.", "Explain what a garden needs.",
    "Describe a rainy afternoon.", "Suggest a game to play with friends.", "Explain why maps use symbols.",
]
RL_LIMITS = (8, 10, 12, 15)


def rl_rows(requests, rng, first_key):
    """IFEval training rows (eval/tasks/ifeval.py IFEvalTask.training_rows, think mode: the stage renders each
    prompt in both modes) of `requests`, each with a word limit drawn from RL_LIMITS."""
    import sys
    import tempfile
    sys.path.insert(0, str(OUT.parent.parent))
    from eval.tasks import IFEvalTask
    columns = []
    for key, request in enumerate(requests, start=first_key):
        limit = rng.choice(RL_LIMITS)
        columns.append({"key": key, "prompt": f"{request} Answer in fewer than {limit} words.",
                        "instruction_id_list": ["length_constraints:number_words"],
                        "kwargs": [{"num_words": limit, "relation": "less than"}]})
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "ifeval.jsonl"
        source.write_text("".join(json.dumps(c) + "\n" for c in columns))
        rows = IFEvalTask(source=str(source)).training_rows(mode="think")
    return sorted(rows, key=lambda r: int(r["id"].rsplit("-", 1)[1]))


def bad_rows():
    ok_user = {"role": "user", "content": "Hi"}
    return [
        {"messages": [ok_user, {"role": "assistant", "content": "   "}]},                        # empty assistant
        {"messages": [ok_user, {"role": "robot", "content": "beep"}]},                           # unknown role
        {"messages": [ok_user]},                                                                 # no assistant turn
        {"messages": [ok_user, {"role": "assistant", "content": "<think>\nhmm\n\nHello"}]},       # unclosed think
        {"messages": [ok_user, {"role": "assistant", "content": "Hello"},
                      {"role": "system", "content": "late"}]},                                   # system not first
        {"text": "no messages at all"},                                                          # wrong layout
    ]


if __name__ == "__main__":
    items = dual_mode_items()
    # disjoint splits: SFT rows, synth prompts (the demo teacher answers them), APO pairs, held-out pairs
    sft_items, synth_items = items[:-112], items[-112:-96]
    pair_items, heldout_items = items[-96:-32], items[-32:]
    write("reasoning.jsonl", reasoning_rows())
    write("chat_no_think.jsonl", chat_rows())
    write("tools.jsonl", tool_rows())
    write("dual_think.jsonl", dual_rows(sft_items, think=True))
    write("dual_no_think.jsonl", dual_rows(sft_items, think=False))
    write("prompts.jsonl", [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS])
    write("questions.jsonl", [{"messages": [{"role": "user", "content": q}], "answer": numeric_answer(q, a, w)}
                              for q, _, a, w in synth_items])
    write("preferences.jsonl", preference_rows(pair_items))
    write("preferences_heldout.jsonl", preference_rows(heldout_items))
    write("bad_rows.jsonl", bad_rows())
    rl_rng = random.Random(3)
    write("rl_prompts.jsonl", rl_rows(RL_REQUESTS[:36], rl_rng, first_key=0))
    write("rl_heldout.jsonl", rl_rows(RL_REQUESTS[36:], rl_rng, first_key=36))
