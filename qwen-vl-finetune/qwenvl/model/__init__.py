"""Model loading, the family table, tiny checkpoints, position ids and freezing."""
