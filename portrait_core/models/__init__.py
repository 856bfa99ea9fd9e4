"""What is loaded from disk: checkpoints, LoRA files, the model registry, the tokenizer, the tiny test models."""
