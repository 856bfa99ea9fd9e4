"""Double of modules/sd_samplers.py: sampler names and the real name resolution.

A subset of the real samplers (the ones the double's diffusers backend can run), with their real
names, aliases and default schedulers. An unknown name is not an error in the real WebUI:
`fix_p_invalid_sampler_and_scheduler` swaps in the default sampler and only logs a warning.
"""

from __future__ import annotations

import functools
import logging
from collections import namedtuple

from modules import sd_schedulers

SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])

all_samplers = [
    SamplerData("DPM++ 2M", None, ["k_dpmpp_2m"], {"scheduler": "karras"}),
    SamplerData("Euler a", None, ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    SamplerData("Euler", None, ["k_euler"], {}),
    SamplerData("LMS", None, ["k_lms"], {}),
    SamplerData("Heun", None, ["k_heun"], {"second_order": True}),
    SamplerData("DDIM", None, ["ddim"], {}),
    SamplerData("UniPC", None, ["unipc"], {}),
]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_map = {alias.lower(): x.name for x in all_samplers for alias in (x.name, *x.aliases)}


def visible_sampler_names():
    return [x.name for x in samplers]


@functools.cache
def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    """As the real one: a trailing schedule type ("DPM++ 2M Karras") is split off; an unknown
    sampler becomes the default one."""
    default_sampler = samplers[0]
    found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
    name = sampler_name or default_sampler.name
    for scheduler in sd_schedulers.schedulers:
        for name_option in (scheduler.label, scheduler.name, *(scheduler.aliases or [])):
            if name.endswith(" " + name_option):
                found_scheduler = scheduler
                name = name[0:-(len(name_option) + 1)]
                break
    sampler = all_samplers_map.get(name, default_sampler)
    if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
        found_scheduler = sd_schedulers.schedulers[0]
    return sampler.name, found_scheduler.label


def fix_p_invalid_sampler_and_scheduler(p):
    i_sampler_name, i_scheduler = p.sampler_name, p.scheduler
    p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)
    if p.sampler_name != i_sampler_name or i_scheduler != p.scheduler:
        logging.warning(f'Sampler Scheduler autocorrection: "{i_sampler_name}" -> "{p.sampler_name}", '
                        f'"{i_scheduler}" -> "{p.scheduler}"')
