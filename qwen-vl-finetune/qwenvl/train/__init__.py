"""Training: arguments, Trainer subclass, LoRA, entry point train_qwen.py, merge_lora."""
