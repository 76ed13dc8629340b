"""Writes the demo data shipped in data/demo/ (run from the repo root; the output is committed).

    python data/demo/make_demo_data.py

Small but real: every answer is correct, every think trace is a real derivation. Files:
- reasoning.jsonl      think-mode arithmetic/word problems with step-by-step <think> traces
- chat_no_think.jsonl  direct answers to factual questions, some multi-turn, some with a system prompt
- tools.jsonl          tool-calling conversations (assistant tool_calls, tool results, final answer)
- prompts.jsonl        prompts of a "non-reasoning" dataset, for synth-traces / synth-pairs
- preferences.jsonl    chosen (correct) vs rejected (wrong) answers, both modes, chat_template_kwargs set
- bad_rows.jsonl       rows that must be quarantined, one per reason (used by tests)
"""

import json
import random
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


CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Canada", "Ottawa"), ("Egypt", "Cairo"),
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


def preference_rows():
    rows = []
    for i, (country, capital) in enumerate(CAPITALS):
        wrong = CAPITALS[(i + 3) % len(CAPITALS)][1]
        think = i % 2 == 0
        prefix = (f"<think>\nThe question asks for the capital of {country}. It is {capital}.\n</think>\n\n"
                  if think else "")
        bad_prefix = f"<think>\nI think it is {wrong}.\n</think>\n\n" if think else ""
        rows.append({"prompt": [{"role": "user", "content": f"What is the capital of {country}?"}],
                     "chosen": [{"role": "assistant", "content": f"{prefix}The capital of {country} is {capital}."}],
                     "rejected": [{"role": "assistant",
                                   "content": f"{bad_prefix}The capital of {country} is {wrong}."}],
                     "chat_template_kwargs": {"enable_thinking": think}})
    return rows


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
    write("reasoning.jsonl", reasoning_rows())
    write("chat_no_think.jsonl", chat_rows())
    write("tools.jsonl", tool_rows())
    write("prompts.jsonl", [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS])
    write("preferences.jsonl", preference_rows())
    write("bad_rows.jsonl", bad_rows())
