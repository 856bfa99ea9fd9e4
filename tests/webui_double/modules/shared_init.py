"""Double of modules/shared_init.py: creates shared.opts and loads config.json before any script runs."""

from __future__ import annotations

from modules import options, shared


def initialize():
    shared.restricted_opts = set()
    shared.opts = options.Options({}, shared.restricted_opts)
    shared.opts.load(shared.config_filename)
