"""The data path: from a recipe's sources to the rows a stage trains on.

It owns the one loader (sources.py: Hub datasets, local files, earlier runs' rows), the one row
normaliser with tokenizing, masking, budgets, the quarantine and preference pairs (rows.py), the
SFT / mid-training mixture in Arrow with its cache (mixture.py), packing (packing.py) and the release
of memory-mapped pages in map workers (mapped.py).

It may import the foundation (pipeline/core/) and nothing else of pipeline/; synth/, eval/ and the
training stages read their rows through it.
"""
