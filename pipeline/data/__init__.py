"""The data path of smolalign's pipeline."""
