"""smolalign online RL with verifiable rewards: `smolalign rl` (TRL's GRPOTrainer).

It owns the stage (stage.py), its recipe (schema.py), how its prompts are read and rendered (prompts.py),
the rewards TRL calls (rewards.py: each row's eval task and the format of each mode), the held-out check
before and after (held_out.py), its summary sections (sections.py) and its part of `smolalign plan`
(plan.py).

It stands where no other package does, on both sides: on pipeline's foundation (pipeline/core/), data path
(pipeline/data/), generation (pipeline/generation.py) and training (pipeline/training/: the trainer's
arguments, resume and finish it shares with sft and apo), and on eval's tasks and prompts (eval/tasks/,
eval/stage.py `request`), which give its rewards and the prompt eval sends. Nothing imports it: the
registry (pipeline/core/stages.py) names it as a module path.
"""
