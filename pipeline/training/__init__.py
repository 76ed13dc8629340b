"""The training stages of smolalign's pipeline."""
