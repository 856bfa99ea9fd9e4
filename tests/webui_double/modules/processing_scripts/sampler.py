"""Double of modules/processing_scripts/sampler.py: the Sampler row, a built-in always-on script
whose setup() (UI calls only) copies the UI's steps / sampler / schedule type onto p."""

from __future__ import annotations

from modules import scripts


class ScriptSampler(scripts.ScriptBuiltinUI):
    section = "sampler"

    def title(self):
        return "Sampler"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [scripts.UiValue(20, "Sampling steps"), scripts.UiValue("DPM++ 2M", "Sampling method"),
                scripts.UiValue("Automatic", "Schedule type")]

    def setup(self, p, steps, sampler_name, scheduler):
        p.steps = steps
        p.sampler_name = sampler_name
        p.scheduler = scheduler
