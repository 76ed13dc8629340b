"""The training stages: `smolalign midtrain`, `smolalign sft`, `smolalign apo`.

It owns each training stage's module with its recipe class (midtrain.py, sft.py, apo.py), its part of
`smolalign plan` (sft_plan.py, apo_plan.py), what they share (train.py: tokenizer, model, TRL arguments,
resume, finish; sections.py: their summary sections) and the preference measures of APO (preference.py).

It may import the foundation (pipeline/core/) and the data path (pipeline/data/); no other room
imports it except planning/ (which loads a tokenizer as training does) and, through the registry's
module paths, the CLI.
"""
