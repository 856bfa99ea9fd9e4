"""Double of modules/sd_schedulers.py: the schedule types a sampler name can end with."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object = None
    aliases: list = None


schedulers = [
    Scheduler("automatic", "Automatic"),
    Scheduler("uniform", "Uniform"),
    Scheduler("karras", "Karras"),
    Scheduler("exponential", "Exponential"),
    Scheduler("sgm_uniform", "SGM Uniform", aliases=["SGMUniform"]),
]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
