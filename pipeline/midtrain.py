"""Mid-training stage: general-reasoning traces, ChatML, loss on every token, wrapped packing.

    smolalign midtrain --recipe recipes/smollm3/midtrain.yaml     # make midtrain RECIPE=...

The training loop is the SFT stage's (pipeline/sft.py); what makes it mid-training is the recipe,
and the recipe validator enforces it: no assistant-only loss (every token is trained) and
`packing_strategy: wrapped`. Our wrapped packer keeps document boundaries (`seq_lengths`), so each
packed row is trained padding-free with attention inside each document.
"""

from pipeline.sft import run

__all__ = ["run"]
