"""Double of modules/shared_init.py: creates shared.opts and loads config.json before any script runs."""

from __future__ import annotations

from modules import options, shared, shared_options, shared_state, shared_total_tqdm


def initialize():
    shared.restricted_opts = set()
    shared.opts = options.Options(dict(shared_options.options_templates), shared.restricted_opts)
    shared.opts.load(shared.config_filename)
    shared.state = shared_state.State()
    shared.total_tqdm = shared_total_tqdm.TotalTQDM()
