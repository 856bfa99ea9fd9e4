"""Portrait generation: the two-pass template pipeline (and, later, the pose / image-prompt workflows)."""
