"""Double of modules/extra_networks.py: `<name:args>` tags are cut out of the prompt and handed to the
network of that name (here only the built-in Lora extension's `lora`)."""

from __future__ import annotations

import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = [item for item in self.items if "=" not in item]
        self.named = dict(item.split("=", 1) for item in self.items if "=" in item)


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res
