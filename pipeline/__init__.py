"""smolalign pipeline: recipes, run manifests, models, chat format, data, and the training stages."""
