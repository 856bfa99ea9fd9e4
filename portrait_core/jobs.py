"""Job runner: one training at a time in a subprocess, a queue for the rest, progress, cancel, resume.

Each job is a JSON file under `<jobs dir>/`, rewritten atomically on every state change, so a crash
of the process that runs the queue loses nothing: on the next start, jobs that were queued or
running are queued again and the trainer resumes from its last checkpoint. The trainer writes
`progress.jsonl` into its output folder; `JobRunner.get()` folds its last line into the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from portrait_core.errors import PortraitError
from portrait_core.log import get_logger
from portrait_core.store import atomic_write_json

log = get_logger("jobs")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)
PROGRESS_FIELDS = ("phase", "step", "total", "loss", "eta_s", "identity_score")
CANCEL_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 15
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class JobNotFoundError(PortraitError):
    """No job has this id."""


@dataclass
class Job:
    """A unit of GPU work. `command` is the trainer's argument list (after the launcher). A job is active
    (queued or running) for every identity in `identities`; `identity` is their names for display."""

    id: str
    kind: str
    identity: str
    command: list[str]
    output_dir: str
    result_path: str | None = None
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    returncode: int | None = None
    progress: dict = field(default_factory=dict)
    attempts: int = 0
    in_process: bool = False
    identities: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.identities and self.identity:  # a job file written before `identities` existed
            self.identities = [self.identity]

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def to_json(self) -> dict:
        return asdict(self)


def _identity_list(identities: Sequence[str] | str) -> list[str]:
    return [identities] if isinstance(identities, str) else list(identities)


class JobRunner:
    """Runs queued jobs one at a time on a worker thread. Thread-safe; poll with `get()`."""

    def __init__(self, jobs_dir: Path, *, python: str = sys.executable, use_accelerate: bool = True):
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._python = python
        self._use_accelerate = use_accelerate
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._process: subprocess.Popen | None = None
        self._cancel_requested: set[str] = set()
        self._tasks: dict[str, Callable] = {}
        self._closed = False
        self._recover()
        self._worker = threading.Thread(target=self._work, name="portrait-jobs", daemon=True)
        self._worker.start()

    # ---- public API ------------------------------------------------------------------------
    def submit(self, kind: str, identities: Sequence[str] | str, command: list[str], output_dir: Path,
               result_path: Path | None = None) -> Job:
        names = _identity_list(identities)
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, identity=", ".join(names), command=[str(c) for c in command],
                  output_dir=str(output_dir), result_path=str(result_path) if result_path else None,
                  identities=names)
        with self._lock:
            self._jobs[job.id] = job
            self._save(job)
            self._queue.append(job.id)
            self._wake.notify_all()
        log.info("queued %s job %s for %s", kind, job.id, job.identity)
        return job

    def submit_task(self, kind: str, identities: Sequence[str] | str, task: Callable[[TaskContext], str | None],
                    output_dir: Path) -> Job:
        """Queue in-process work (e.g. generation on the host's loaded models) behind the other jobs.

        `task(context)` runs on the worker thread; it reports through `context.progress(...)`, should
        stop when `context.cancelled()` turns true, and returns its result path (or None). A PortraitError
        fails the job with its message. In-process jobs do not survive a restart of the app.
        """
        names = _identity_list(identities)
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, identity=", ".join(names), command=[],
                  output_dir=str(output_dir), in_process=True, identities=names)
        with self._lock:
            self._jobs[job.id] = job
            self._tasks[job.id] = task
            self._save(job)
            self._queue.append(job.id)
            self._wake.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            job = self._jobs[job_id]
            latest = read_last_progress(Path(job.output_dir) / "progress.jsonl")
            if latest and job.state in (RUNNING, DONE, FAILED, CANCELLED):
                job.progress = latest
            return Job(**job.to_json())

    def jobs(self) -> list[Job]:
        with self._lock:
            return [self.get(job_id) for job_id in self._jobs]

    def active_jobs(self, identity: str, kind: str | None = None) -> list[Job]:
        """The queued or running jobs that use `identity` (a multi-identity job counts for each of them)."""
        with self._lock:
            return [Job(**job.to_json()) for job in self._jobs.values()
                    if job.active and identity in job.identities and kind in (None, job.kind)]

    def cancel(self, job_id: str) -> Job:
        """Queued: dropped. Running: SIGTERM to its process group, SIGKILL after a grace period."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if job.state == QUEUED:
                self._queue.remove(job_id)
                self._tasks.pop(job_id, None)
                self._finish(job, CANCELLED, None)
            elif job.state == RUNNING:
                self._cancel_requested.add(job_id)
                if self._process is not None:
                    _signal_group(self._process, signal.SIGTERM)
        return self.get(job_id)

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again with the same output folder: the trainer resumes from
        its last checkpoint (a crash loses at most `validate_every` steps)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if job.state not in (FAILED, CANCELLED):
                raise PortraitError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
            job.state, job.error, job.returncode, job.finished = QUEUED, None, None, None
            self._save(job)
            self._queue.append(job_id)
            self._wake.notify_all()
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._jobs[job_id].state not in FINISHED_STATES:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._wake.wait(timeout=remaining if remaining is not None else 1.0)
        return self.get(job_id)

    def close(self) -> None:
        """Stop the worker; a running job is cancelled (it resumes from its checkpoint next time)."""
        with self._lock:
            self._closed = True
            if self._process is not None:
                _signal_group(self._process, signal.SIGTERM)
            self._wake.notify_all()
        self._worker.join(timeout=CANCEL_GRACE_SECONDS + 5)

    # ---- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._jobs[self._queue.popleft()]
                job.state, job.started, job.attempts = RUNNING, time.time(), job.attempts + 1
                self._save(job)
            if job.in_process:
                self._run_task(job)
            else:
                self._run(job)

    def _run_task(self, job: Job) -> None:
        output_dir = Path(job.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        context = TaskContext(ProgressFile(output_dir / "progress.jsonl"),
                              lambda: job.id in self._cancel_requested or self._closed)
        try:
            result = self._tasks.pop(job.id)(context)
        except PortraitError as error:
            with self._lock:
                job.error = str(error)
                self._finish(job, CANCELLED if context.cancelled() else FAILED, None)
            return
        with self._lock:
            job.result_path = str(result) if result else None
            self._cancel_requested.discard(job.id)
            self._finish(job, CANCELLED if context.cancelled() else DONE, 0)

    def _run(self, job: Job) -> None:
        output_dir = Path(job.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = output_dir / "trainer.log"
        with stderr_path.open("ab") as stderr:
            process = subprocess.Popen(self._launch_command(job), stdout=subprocess.DEVNULL, stderr=stderr,
                                       env=_child_environment(), start_new_session=True)
            with self._lock:
                self._process = process
            returncode = _wait_with_grace(process, lambda: job.id in self._cancel_requested or self._closed)
        with self._lock:
            self._process = None
            self._settle(job, returncode, stderr_path)

    def _settle(self, job: Job, returncode: int, stderr_path: Path) -> None:
        remove_temp_files(Path(job.output_dir))
        if job.result_path:
            remove_temp_files(Path(job.result_path).parent)
        if job.id in self._cancel_requested:
            self._cancel_requested.discard(job.id)
            self._finish(job, CANCELLED, returncode)
        elif self._closed:
            job.state = QUEUED  # the app is shutting down: run it again (and resume) next start
            self._save(job)
        elif returncode == 0:
            self._finish(job, DONE, returncode)
        else:
            job.error = stderr_tail(stderr_path) or f"the trainer exited with code {returncode}"
            self._finish(job, FAILED, returncode)

    def _launch_command(self, job: Job) -> list[str]:
        if self._use_accelerate:
            return [self._python, "-m", "accelerate.commands.launch", "-m", *job.command]
        return [self._python, "-m", *job.command]

    def _finish(self, job: Job, state: str, returncode: int | None) -> None:
        job.state, job.finished, job.returncode = state, time.time(), returncode
        self._save(job)
        self._wake.notify_all()
        log.info("job %s %s", job.id, state)

    def _save(self, job: Job) -> None:
        atomic_write_json(self.jobs_dir / f"{job.id}.json", job.to_json())

    def _recover(self) -> None:
        """Load saved jobs; those cut off by a crash go back in the queue, oldest first."""
        saved = []
        for path in self.jobs_dir.glob("*.json"):
            try:
                saved.append(Job(**json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError) as error:
                log.warning("ignoring unreadable job file %s: %s", path.name, error)
        for job in sorted(saved, key=lambda j: j.created):
            self._jobs[job.id] = job
            if job.in_process and job.state in (QUEUED, RUNNING):
                job.state, job.error = FAILED, "the app stopped before this job finished; submit it again"
                self._save(job)
            elif job.state in (QUEUED, RUNNING):
                job.state = QUEUED
                self._queue.append(job.id)
                self._save(job)


class ProgressFile:
    """Appends progress records (JSON lines) the way the trainer does, for in-process tasks."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, phase: str, **fields) -> None:
        record = {"phase": phase, "time": round(time.time(), 3), **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


@dataclass
class TaskContext:
    """What an in-process task gets: a progress log and a way to learn it was cancelled."""

    progress_file: ProgressFile
    cancelled: Callable[[], bool]

    def progress(self, phase: str, **fields) -> None:
        self.progress_file.write(phase, **fields)


def _wait_with_grace(process: subprocess.Popen, should_stop) -> int:
    """Wait for the process; once `should_stop()`, SIGTERM its group, then SIGKILL after the grace period."""
    terminated_at = None
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if should_stop() and terminated_at is None:
            _signal_group(process, signal.SIGTERM)
            terminated_at = time.monotonic()
        if terminated_at is not None and time.monotonic() - terminated_at > CANCEL_GRACE_SECONDS:
            _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has already exited
        os.killpg(process.pid, signum)


def _child_environment() -> dict[str, str]:
    """The trainer must import portrait_core even when the extension folder is not on sys.path."""
    env = dict(os.environ)
    parts = [str(PACKAGE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def read_last_progress(path: Path) -> dict:
    """The last complete JSON line of a progress file ({} when there is none yet)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def stderr_tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The trainer's own last words: the end of its stderr, minus launcher noise."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    launcher_noise = "were not passed to `accelerate launch`"
    useful = [line for line in text.splitlines() if line.strip() and launcher_noise not in line]
    errors = [line for line in useful if line.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else "\n".join(useful[-lines:])


def remove_temp_files(folder: Path) -> int:
    """Delete `.<name>.tmp-<random>` files that a killed atomic writer left behind; returns how many."""
    removed = 0
    if folder.is_dir():
        for path in folder.glob(".*.tmp-*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def job_status(job: Job) -> dict:
    """What a client sees of a job: no command line, no server paths."""
    progress = {key: job.progress[key] for key in PROGRESS_FIELDS if key in job.progress}
    step, total = progress.get("step"), progress.get("total")
    if job.state == DONE:
        fraction = 1.0
    elif step is not None and total:
        fraction = round(min(step / total, 1.0), 4)
    else:
        fraction = 0.0 if job.state == QUEUED else None
    done_with_lora = job.kind == "train" and job.state == DONE and job.result_path
    return {"id": job.id, "kind": job.kind, "identity": job.identity, "state": job.state, "progress": progress,
            "fraction": fraction, "eta_s": None if job.state in FINISHED_STATES else progress.get("eta_s"),
            "error": job.error, "lora": Path(job.result_path).stem if done_with_lora else None,
            "created": job.created, "started": job.started, "finished": job.finished}
