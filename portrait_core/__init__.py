"""Portrait Studio core: personal-LoRA portraits, usable with or without the WebUI."""

__version__ = "0.1.0"
