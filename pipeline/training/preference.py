"""How strongly a model prefers the chosen answer of a preference pair over the rejected one.

    stats = preference_stats(model, tokenizer, pairs)   # {"accuracy", "mean_margin", "pairs"}

For each pair (prompt, chosen, rejected, chat_template_kwargs: the rows the APO stage trains on),
the summed log-probability of each answer given the prompt as inference sends it: the tokens the
model writes after the generation prompt, up to and including `<|im_end|>` (the trained span of the
template's `{% generation %}` block, minus the empty think block no-think prompts already hold).
`accuracy` is the share of pairs where the chosen answer is the more likely one, `mean_margin` the
mean of log p(chosen) - log p(rejected). The APO stage reports both for its starting point (the SFT model)
and its result on held-out pairs, and the implicit reward margin
beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))] between the two, as the `held_out` section of
its summary.json (HELD_OUT, below: {"pairs_file", "beta", "reward_margin", "start": {"model", "pairs",
"accuracy", "mean_margin"}, "end": {the same, no model}}), which the eval report shows.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.chat import EMPTY_THINK, END_OF_TURN
from pipeline.core.summary import Section


def answer_logprob(model, tokenizer, prompt: list[dict], answer: list[dict], template_kwargs: dict[str, Any]) -> float:
    """Summed log-probability of the answer given the prompt, as inference would produce it."""
    import torch

    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **template_kwargs)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    ids = tokenizer(prompt_text + continuation(tokenizer, prompt, answer, template_kwargs, prompt_text),
                    add_special_tokens=False).input_ids
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the prompt's tokens are not a prefix of prompt + answer; cannot score the answer")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, :-1].float()
    targets = torch.tensor(ids[1:], device=model.device)[:, None]
    logps = torch.log_softmax(logits, dim=-1).gather(1, targets)[:, 0]
    return float(logps[len(prompt_ids) - 1:].sum())


def continuation(tokenizer, prompt: list[dict], answer: list[dict], template_kwargs: dict[str, Any],
                 prompt_text: str) -> str:
    """The text a model writes after `prompt_text` to give `answer`: the assistant turn as the template
    renders it (think block, tool calls), up to and including <|im_end|>, less what the generation
    prompt already holds (the empty think block of no-think mode)."""
    before = tokenizer.apply_chat_template(prompt, tokenize=False, **template_kwargs)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False, **template_kwargs)
    header = "<|im_start|>assistant\n"
    if not full.startswith(before + header):
        raise ValueError("the template does not render the answer as an assistant turn after the prompt")
    turn = full[len(before + header):]
    turn = turn[: turn.index(END_OF_TURN) + len(END_OF_TURN)]
    if prompt_text.endswith(EMPTY_THINK) and turn.startswith(EMPTY_THINK):
        turn = turn[len(EMPTY_THINK):]
    return turn


def pair_logprobs(model, tokenizer, pairs: list[dict]) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) for every pair."""
    model.eval()
    return [(answer_logprob(model, tokenizer, p["prompt"], p["chosen"], p["chat_template_kwargs"]),
             answer_logprob(model, tokenizer, p["prompt"], p["rejected"], p["chat_template_kwargs"]))
            for p in pairs]


def preference_stats(logprobs: list[tuple[float, float]]) -> dict[str, float]:
    margins = [c - r for c, r in logprobs]
    n = len(margins)
    return {"pairs": n, "accuracy": round(sum(m > 0 for m in margins) / n, 4) if n else None,
            "mean_margin": round(sum(margins) / n, 4) if n else None}


def reward_margin(policy: list[tuple[float, float]], reference: list[tuple[float, float]],
                  beta: float) -> float | None:
    """Mean DPO implicit reward margin of the policy against the reference on the same pairs."""
    if not policy:
        return None
    margins = [beta * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, reference)]
    return round(sum(margins) / len(margins), 6)


# ----------------------------------------------------------------------------------------------
# The held-out check in summary.json, and in the eval report
# ----------------------------------------------------------------------------------------------
HELD_OUT_LABEL = "held-out pairs preferred"


def held_out_cell(p: dict[str, Any], view) -> str:
    return f"{p['start']['accuracy']:.2f} → {p['end']['accuracy']:.2f}"


def held_out_lines(p: dict[str, Any], view) -> list[str]:
    start, end = p["start"], p["end"]
    return ["", f"Held-out preference pairs (`{p['pairs_file']}`, {end['pairs']} pairs): how often the model "
            "gives the chosen answer a higher log-probability than the rejected one.", "",
            "| model | accuracy | mean log p(chosen) - log p(rejected) |", "|---|---|---|",
            f"| before: `{start['model']}` | {start['accuracy']:.3f} | {start['mean_margin']:.3f} |",
            f"| after: {view.label} | {end['accuracy']:.3f} | {end['mean_margin']:.3f} |", "",
            f"Mean implicit reward margin of the result against the start (beta {p['beta']}): "
            f"{p['reward_margin']:.4f}."]


def held_out_progress(p: dict[str, Any]) -> tuple[str, list[tuple[str | None, float]]]:
    """Where the check started (the starting model, when the report has it too) and where it ended (this
    run): what preference training moves does not show in generation scores on a few prompts."""
    return HELD_OUT_LABEL, [(p["start"]["model"], p["start"]["accuracy"]), (None, p["end"]["accuracy"])]


HELD_OUT = Section("held_out", required={"pairs_file": None, "beta": None, "reward_margin": None,
                                         "start": {"model": None, "accuracy": None, "mean_margin": None},
                                         "end": {"pairs": None, "accuracy": None, "mean_margin": None}},
                   glance=HELD_OUT_LABEL, cell=held_out_cell, lines=held_out_lines, progress=held_out_progress)
