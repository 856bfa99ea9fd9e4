"""LoRA training of one identity: the trainer CLI, kohya export, validation and checkpoint merging."""
