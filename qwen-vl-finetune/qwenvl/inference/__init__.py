"""Inference backends shared by MMMU evaluation and the demo."""
