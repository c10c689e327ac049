"""qwenvl: fine-tuning, evaluation and inference for the Qwen-VL family."""

__version__ = "0.1.0"
