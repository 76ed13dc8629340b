"""Planning a run of smolalign's pipeline."""
