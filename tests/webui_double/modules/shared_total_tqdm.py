"""Double of modules/shared_total_tqdm.py: the console's "Total progress" bar across a whole job."""

from __future__ import annotations

import tqdm

from modules import shared


class TotalTQDM:
    """As the real one: created on first use with job_count × sampling_steps as its total, silent when
    the multiple_tqdm setting is off or --disable-console-progressbars is given."""

    def __init__(self):
        self._tqdm = None

    def _enabled(self):
        return shared.opts.multiple_tqdm and not shared.cmd_opts.disable_console_progressbars

    def reset(self):
        self._tqdm = tqdm.tqdm(desc="Total progress", total=shared.state.job_count * shared.state.sampling_steps,
                               position=1, file=shared.progress_print_out)

    def update(self):
        if not self._enabled():
            return
        if self._tqdm is None:
            self.reset()
        self._tqdm.update()

    def updateTotal(self, new_total):
        if not self._enabled():
            return
        if self._tqdm is None:
            self.reset()
        self._tqdm.total = new_total

    def clear(self):
        if self._tqdm is not None:
            self._tqdm.refresh()
            self._tqdm.close()
            self._tqdm = None
