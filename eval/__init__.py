"""smolalign evaluation: long context, instruction following, math, tool calling, mode adherence."""
