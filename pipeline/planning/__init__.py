"""Planning: `smolalign plan`, what a recipe will do and cost before any GPU is booked.

It owns the plan (plan.py: differences from the published configuration and another variant, the
data a recipe trains on, problems), the cost model (costs.py: steps, tokens, GPU-hours, memory) and
the published SmolLM3 configuration as data (published/).

It may import the foundation (pipeline/core/), the data path (pipeline/data/) and the training
stages (pipeline/training/); only the CLI imports it.
"""
