"""Double of modules/shared_state.py: `shared.state`, what the progress bar and Interrupt button use."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class State:
    """Same fields and methods (the ones generation touches) as the real State."""

    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_image = None
    textinfo = None
    time_start = None

    def __init__(self):
        self.server_start = time.time()

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True
        log.info("Received interrupt request")

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        """After each image: the step counter starts again, so it reads 0 once an image is done."""
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job: str = "(unknown)"):
        """Starts a job: clears the interrupt flags, job_count = -1 (process_images then sets it)."""
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.job_no = 0
        self.current_image = None
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0

    def dict(self):
        return {"skipped": self.skipped, "interrupted": self.interrupted, "job": self.job,
                "job_count": self.job_count, "job_no": self.job_no, "sampling_step": self.sampling_step,
                "sampling_steps": self.sampling_steps}
