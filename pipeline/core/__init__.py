"""The foundation of smolalign's pipeline."""
