"""Double of modules/processing_scripts/seed.py: the Seed row, a built-in always-on script.

Its setup() copies the UI's seed onto p; for API calls (p.is_api = True, set before p.scripts and
p.script_args) it does not run, which is why callers must set is_api first.
"""

from __future__ import annotations

from modules import scripts


class ScriptSeed(scripts.ScriptBuiltinUI):
    section = "seed"
    create_group = False

    def title(self):
        return "Seed"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [scripts.UiValue(-1, "Seed"), scripts.UiValue(False, "Extra"), scripts.UiValue(-1, "Variation seed"),
                scripts.UiValue(0, "Variation strength"), scripts.UiValue(0, "Resize seed from width"),
                scripts.UiValue(0, "Resize seed from height")]

    def setup(self, p, seed, seed_checkbox, subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h):
        p.seed = seed
        if seed_checkbox and subseed_strength > 0:
            p.subseed = subseed
            p.subseed_strength = subseed_strength
