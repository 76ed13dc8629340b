"""Writes eval/data/ifeval_prompts.jsonl: IFEval-style prompts for offline runs (google/IFEval
needs the Hub). Instruction ids and kwargs follow IFEval; every id is one of if-verifiable's
checkers. Run from the repo root; the output is committed."""

import json
from pathlib import Path

P = [
    ("Write a short note inviting a friend to dinner. Your entire response should be in English, and in all "
     "lowercase letters. No capital letters are allowed.", [("change_case:english_lowercase", {})]),
    ("Describe a sunrise over the sea in fewer than 60 words.",
     [("length_constraints:number_words", {"num_words": 60, "relation": "less than"})]),
    ("Give me tips for studying. Your answer must contain exactly 3 bullet points. Use the markdown bullet "
     "points such as:\n* This is point 1.", [("detectable_format:number_bullet_lists", {"num_bullets": 3})]),
    ("Write a poem about rain. Your answer must contain a title, wrapped in double angular brackets, such as "
     "<<poem of joy>>.", [("detectable_format:title", {})]),
    ("Explain what a bicycle is without using any commas in your response.", [("punctuation:no_comma", {})]),
    ("Write a thank-you email to a teacher. At the end of your response, please explicitly add a postscript "
     "starting with P.S.", [("detectable_content:postscript", {"postscript_marker": "P.S."})]),
    ("Describe your ideal weekend. Include the keywords 'garden' and 'coffee' in the response.",
     [("keywords:existence", {"keywords": ["garden", "coffee"]})]),
    ("Write a product description for a lamp. Do not include the words 'bright' or 'light' in the response.",
     [("keywords:forbidden_words", {"forbidden_words": ["bright", "light"]})]),
    ("Write a story about a dog. The word 'bark' should appear at least 3 times.",
     [("keywords:frequency", {"keyword": "bark", "frequency": 3, "relation": "at least"})]),
    ("List the planets of the solar system. Your entire response should be in English, and in all capital "
     "letters.", [("change_case:english_capital", {})]),
    ("Wrap your entire response with double quotation marks. What is your favourite season and why?",
     [("startend:quotation", {})]),
    ("Write a short motivational message. Finish your response with this exact phrase 'Keep going.'. No other "
     "words should follow this phrase.", [("startend:end_checker", {"end_phrase": "Keep going."})]),
    ("Describe a city you would like to visit. There should be 2 paragraphs. Paragraphs are separated with the "
     "markdown divider: ***", [("length_constraints:number_paragraphs", {"num_paragraphs": 2})]),
    ("Write a template for a job application letter with at least 2 placeholders represented by square "
     "brackets, such as [address].", [("detectable_content:number_placeholders", {"num_placeholders": 2})]),
    ("Summarise the water cycle. Highlight at least 2 sections in your answer with markdown, i.e. "
     "*highlighted section*.", [("detectable_format:number_highlighted_sections", {"num_highlights": 2})]),
    ("Give the name and age of a fictional character. Entire output should be wrapped in JSON format.",
     [("detectable_format:json_format", {})]),
    ("Is the Earth round? Answer with one of the following options: ('My answer is yes.', 'My answer is no.', "
     "'My answer is maybe.')", [("detectable_format:constrained_response", {})]),
    ("Write a workout plan with 2 sections. Mark the beginning of each section with Section X, such as: "
     "Section 1", [("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2})]),
    ("Give two different names for a coffee shop. Separate the responses with 6 asterisk symbols: ******.",
     [("combination:two_responses", {})]),
    ("First repeat the request word for word without change, then give your answer (1. do not say any words or "
     "characters before repeating the request; 2. the request you need to repeat does not include this "
     "sentence) What is a good name for a goldfish?",
     [("combination:repeat_prompt", {"prompt_to_repeat": "What is a good name for a goldfish?"})]),
    ("Describe a zebra. In your response, the letter z should appear at least 4 times.",
     [("keywords:letter_frequency", {"letter": "z", "let_frequency": 4, "let_relation": "at least"})]),
    ("Tell me about the Eiffel Tower. Your ENTIRE response should be in French language, no other language is "
     "allowed.", [("language:response_language", {"language": "fr"})]),
    ("Explain gravity to a child in fewer than 4 sentences.",
     [("length_constraints:number_sentences", {"num_sentences": 4, "relation": "less than"})]),
    ("Write a slogan for a bakery in all lowercase letters, without commas.",
     [("change_case:english_lowercase", {}), ("punctuation:no_comma", {})]),
]

rows = [{"key": i, "prompt": p, "instruction_id_list": [i_ for i_, _ in ins], "kwargs": [k for _, k in ins]}
        for i, (p, ins) in enumerate(P)]
out = Path(__file__).resolve().parent / "ifeval_prompts.jsonl"
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
