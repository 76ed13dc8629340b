"""smolalign synthetic data: reasoning traces and preference pairs from teacher models (vLLM, HTTP, CPU)."""
