"""Double of modules/progress.py: the task queue behind the WebUI's progress bar (real names and rules).

The page polls /internal/progress with its task id; a task is `queued` from add_task_to_queue until
start_task, `active` while it is current_task, `completed` once finish_task has run. The fraction is
the real formula: job_no / job_count plus the current job's sampling steps."""

from __future__ import annotations

import random
import string
import time
from collections import OrderedDict

from modules import shared

current_task = None
pending_tasks: OrderedDict = OrderedDict()
finished_tasks: list = []


def start_task(id_task):
    global current_task  # noqa: PLW0603 - the real module keeps it as a module global
    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task  # noqa: PLW0603 - the real module keeps it as a module global
    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
    if len(finished_tasks) > 16:
        finished_tasks.pop(0)


def create_task_id(task_type):
    return f"task({task_type}-{''.join(random.choices(string.ascii_uppercase + string.digits, k=7))})"


def add_task_to_queue(id_job):
    pending_tasks[id_job] = time.time()


def progressapi(id_task: str) -> dict:
    """What POST /internal/progress answers (without the live preview)."""
    active, queued, completed = id_task == current_task, id_task in pending_tasks, id_task in finished_tasks
    if not active:
        return {"active": False, "queued": queued, "completed": completed, "progress": None,
                "textinfo": "In queue" if queued else "Waiting..."}
    state = shared.state
    progress = 0.0
    if state.job_count > 0:
        progress += state.job_no / state.job_count
    if state.sampling_steps > 0 and state.job_count > 0:
        progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
    return {"active": True, "queued": queued, "completed": completed, "progress": min(progress, 1),
            "textinfo": state.textinfo}
