"""Training data: registry, annotation checks, tokenisation with label masks, datasets, packing, collators."""
