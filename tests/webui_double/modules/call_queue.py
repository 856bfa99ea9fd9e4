"""Double of modules/call_queue.py: the one queue_lock every GPU job in the WebUI takes.

`process_images` does not take it; the txt2img/img2img handlers and the API routes do, through
`wrap_gradio_gpu_call` / `with queue_lock:`.
"""

from __future__ import annotations

from functools import wraps

from modules import fifo_lock, shared

queue_lock = fifo_lock.FIFOLock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f


def wrap_gradio_gpu_call(func, extra_outputs=None):
    """As the real one: holds queue_lock and brackets the call with state.begin()/end(); afterwards
    the interrupt flags are cleared (the real wrap_gradio_call does that in its finally)."""

    @wraps(func)
    def f(*args, **kwargs):
        try:
            with queue_lock:
                shared.state.begin(job=None)
                try:
                    return func(*args, **kwargs)
                finally:
                    shared.state.end()
        finally:
            shared.state.skipped = False
            shared.state.interrupted = False
            shared.state.stopping_generation = False
            shared.state.job_count = 0
            shared.state.job = ""

    return f
