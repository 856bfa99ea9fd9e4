"""Lets diffusers 0.31's `training_utils` import beside the WebUI's pinned transformers 4.30.2.

diffusers 0.31 reads `transformers.integrations.deepspeed.is_deepspeed_zero3_enabled`, a submodule that
transformers only grew later (4.30 has the same function in `transformers.deepspeed`). Imported by
step_clock.py (`--before`) ahead of a reference script; the script itself is not changed.
"""

import types

import transformers.deepspeed
import transformers.integrations

if not hasattr(transformers.integrations, "deepspeed"):
    transformers.integrations.deepspeed = types.SimpleNamespace(
        is_deepspeed_zero3_enabled=transformers.deepspeed.is_deepspeed_zero3_enabled)

# transformers 4.34 gave its models `add_adapter` (PEFT's `inject_adapter_in_model` plus a `peft_config`
# dict), which the example calls on the text encoder; 4.30 has none. The same two things, and nothing more:
from transformers import PreTrainedModel

if not hasattr(PreTrainedModel, "add_adapter"):
    def _add_adapter(self, adapter_config, adapter_name: str = "default") -> None:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(adapter_config, self, adapter_name)
        self.peft_config = {**getattr(self, "peft_config", {}), adapter_name: adapter_config}
        self._hf_peft_config_loaded = True

    PreTrainedModel.add_adapter = _add_adapter
