"""smolalign merging: MergeKit soups of APO checkpoints and the final linear merge."""
