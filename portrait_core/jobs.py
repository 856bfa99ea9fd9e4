"""Job runner: one training at a time in a subprocess, a queue for the rest, progress, cancel, resume.

Each job is a JSON file under `<jobs dir>/`, rewritten atomically on every state change, so a crash
of the process that runs the queue loses nothing: on the next start, jobs that were queued or
running are queued again and the trainer resumes from its last checkpoint. The trainer writes
`progress.jsonl` into its output folder; `JobRunner.get()` folds its last line into the job.

What keeps the queue alive whatever happens:
- a job exists only once its file is written (a full disk refuses the submit and leaves nothing behind);
- the worker catches every exception of a job: the job fails with a one-line `error` a user can act on
  and the raw traceback or trainer log in `log_tail`, and the next job runs;
- a job file that cannot be read at start-up is moved to `<jobs dir>/quarantine/`, the rest load;
- a trainer is owned: the job file records its process group and a token in its environment, and the
  trainer holds a lock on `<output dir>/trainer.lock`. A trainer left running by a server that died is
  stopped (SIGTERM, then SIGKILL of its group) before its job resumes, so one folder never has two.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Protocol, Sequence

from portrait_core.errors import PortraitError
from portrait_core.log import get_logger
from portrait_core.store import atomic_write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the recorded process group still identifies a trainer
    fcntl = None

log = get_logger("jobs")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED_STATES = (DONE, FAILED, CANCELLED)
PROGRESS_FIELDS = ("phase", "step", "total", "loss", "eta_s", "identity_score")
SETUP_PHASES = ("loading", "encoding")  # before the first training step; their own step/total
CANCEL_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 15
LOG_TAIL_CHARS = 4000
ERROR_MAX_CHARS = 400
TRAINER_TOKEN_VARIABLE = "PORTRAIT_TRAINER_TOKEN"  # noqa: S105 - a marker, not a secret
TRAINER_LOCK_FILE = "trainer.lock"
QUARANTINE_DIR = "quarantine"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class JobNotFoundError(PortraitError):
    """No job has this id."""


class JobStateError(PortraitError):
    """The job is in a state that does not allow this (e.g. retrying a running job)."""


class JobStoreError(PortraitError):
    """A job file could not be written (full disk, read-only folder); the change was not made."""


@dataclass
class Job:
    """A unit of GPU work. `command` is the trainer's argument list (after the launcher). A job is active
    (queued or running) for every identity in `identities`; `identity` is their names for display.
    `error` is one sentence for the user; `log_tail` the raw end of the trainer's log or the traceback.
    `trainer` identifies the trainer process while one runs (pid, pgid, token, started)."""

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
    log_tail: str | None = None
    trainer: dict | None = None

    def __post_init__(self) -> None:
        if not self.identities and self.identity:  # a job file written before `identities` existed
            self.identities = [self.identity]

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Job:
        """A job as read from its file; ValueError names the first field that is missing or of the wrong type.
        Fields this version does not know (a newer version wrote them) are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        known = {name: value for name, value in data.items() if name in _FIELD_TYPES}
        missing = [name for name in _REQUIRED_FIELDS if name not in known]
        if missing:
            raise ValueError(f"field {missing[0]!r} is missing")
        for name, value in known.items():
            _check_field(name, value)
        return cls(**known)


_NONE = type(None)
_NUMBER = (int, float)
_FIELD_TYPES = {
    "id": (str,), "kind": (str,), "identity": (str,), "command": (list,), "output_dir": (str,),
    "result_path": (str, _NONE), "state": (str,), "created": _NUMBER, "started": (*_NUMBER, _NONE),
    "finished": (*_NUMBER, _NONE), "error": (str, _NONE), "returncode": (int, _NONE), "progress": (dict,),
    "attempts": (int,), "in_process": (bool,), "identities": (list,), "log_tail": (str, _NONE),
    "trainer": (dict, _NONE),
}
_REQUIRED_FIELDS = ("id", "kind", "identity", "command", "output_dir")


def _check_field(name: str, value: object) -> None:
    allowed = _FIELD_TYPES[name]
    wrong_bool = isinstance(value, bool) and bool not in allowed  # True is an int to isinstance
    if wrong_bool or not isinstance(value, allowed):
        expected = " or ".join("null" if kind is _NONE else kind.__name__ for kind in allowed)
        raise ValueError(f"field {name!r} is {json.dumps(value)[:60]}, expected {expected}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"field {name!r} is {value}, expected a finite number")
    if name == "state" and value not in STATES:
        raise ValueError(f"field 'state' is {value!r}, expected one of {', '.join(STATES)}")
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise ValueError(f"field {name!r} must be a list of strings")


def _identity_list(identities: Sequence[str] | str) -> list[str]:
    return [identities] if isinstance(identities, str) else list(identities)


class TrainerTurn(Protocol):
    """A training's turn on the host's GPU, while its trainer runs (see JobRunner's `trainer_turn`)."""

    def progress(self, step: int, total: int, text: str) -> None:
        """The trainer's last reported step, `total` steps planned (0: not known yet)."""

    def interrupted(self) -> bool:
        """The host's own Interrupt was pressed: the training stops as a cancel does."""


class JobRunner:
    """Runs queued jobs one at a time on a worker thread. Thread-safe; poll with `get()`.

    `trainer_turn(job)`, when given, is a context manager held around each trainer process (inside the
    WebUI: the WebUI's queue and progress, so its top bar, console and Interrupt follow the training); it
    yields a TrainerTurn (or None) that the runner keeps up to date from the trainer's progress file.
    `quarantined` lists the job files that could not be read at start-up (moved to `quarantine/`)."""

    def __init__(self, jobs_dir: Path, *, python: str = sys.executable, use_accelerate: bool = True,
                 trainer_turn: Callable[[Job], ContextManager[TrainerTurn | None]] | None = None):
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._python = python
        self._use_accelerate = use_accelerate
        self._trainer_turn = trainer_turn
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._process: subprocess.Popen | None = None
        self._cancel_requested: set[str] = set()
        self._tasks: dict[str, Callable] = {}
        self._closed = False
        self.quarantined: list[str] = []
        self._recover()
        self._worker = threading.Thread(target=self._work, name="portrait-jobs", daemon=True)
        self._worker.start()

    # ---- public API ------------------------------------------------------------------------
    def submit(self, kind: str, identities: Sequence[str] | str, command: list[str], output_dir: Path,
               result_path: Path | None = None) -> Job:
        """Queue a trainer run. Raises JobStoreError (and queues nothing) when the job file cannot be written."""
        names = _identity_list(identities)
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, identity=", ".join(names), command=[str(c) for c in command],
                  output_dir=str(output_dir), result_path=str(result_path) if result_path else None,
                  identities=names)
        self._register(job)
        log.info("queued %s job %s for %s", kind, job.id, job.identity)
        return self.get(job.id)

    def submit_task(self, kind: str, identities: Sequence[str] | str, task: Callable[[TaskContext], str | None],
                    output_dir: Path) -> Job:
        """Queue in-process work (e.g. generation on the host's loaded models) behind the other jobs.

        `task(context)` runs on the worker thread; it reports through `context.progress(...)`, should
        stop when `context.cancelled()` turns true, and returns its result path (or None). A PortraitError
        fails the job with its message, any other exception with a sentence naming it (traceback in
        `log_tail`). In-process jobs do not survive a restart of the app.
        """
        names = _identity_list(identities)
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, identity=", ".join(names), command=[],
                  output_dir=str(output_dir), in_process=True, identities=names)
        self._register(job, task)
        return self.get(job.id)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._find(job_id)
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
            job = self._find(job_id)
            if job.state == QUEUED:
                self._queue.remove(job_id)
                self._tasks.pop(job_id, None)
                self._finish(job, CANCELLED, None)
            elif job.state == RUNNING:
                self._cancel_requested.add(job_id)
                if self._process is not None:
                    _signal_group(self._process.pid, signal.SIGTERM)
        return self.get(job_id)

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled training again with the same output folder: the trainer resumes from
        its last checkpoint (a crash loses at most `validate_every` steps). JobStateError when the job is
        not failed or cancelled, ran inside the app, or another job of its kind holds one of its identities."""
        with self._lock:
            job = self._find(job_id)
            self._check_retry(job)
            retried = Job(**job.to_json())
            retried.state, retried.error, retried.log_tail, retried.returncode, retried.finished = \
                QUEUED, None, None, None, None
            self._save_or_raise(retried, "the job was not queued again")
            job.state, job.error, job.log_tail, job.returncode, job.finished = QUEUED, None, None, None, None
            self._queue.append(job_id)
            self._wake.notify_all()
        log.info("job %s queued again (attempt %d)", job_id, job.attempts + 1)
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._find(job_id).state not in FINISHED_STATES:
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
                _signal_group(self._process.pid, signal.SIGTERM)
            self._wake.notify_all()
        self._worker.join(timeout=CANCEL_GRACE_SECONDS + 5)

    # ---- registration ----------------------------------------------------------------------
    def _find(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return job

    def _register(self, job: Job, task: Callable | None = None) -> None:
        """Write the job's file, then make it visible: a job that cannot be saved was never queued."""
        self._save_or_raise(job, "nothing was queued")  # outside the lock: nobody can see this job yet
        with self._lock:
            self._jobs[job.id] = job
            if task is not None:
                self._tasks[job.id] = task
            self._queue.append(job.id)
            self._wake.notify_all()

    def _check_retry(self, job: Job) -> None:
        if job.state not in (FAILED, CANCELLED):
            raise JobStateError(f"job {job.id} is {job.state}; only failed or cancelled jobs can be retried")
        if job.in_process:
            raise JobStateError(f"job {job.id} was a {job.kind} run inside the app and cannot be resumed; "
                                "submit it again")
        for other in self._jobs.values():
            shared = sorted(set(other.identities) & set(job.identities))
            if other.active and other.kind == job.kind and shared:
                raise JobStateError(f"identity {shared[0]!r} already has a {other.state} {other.kind} job "
                                    f"({other.id}); wait for it or cancel it before retrying job {job.id}")

    # ---- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                if job.in_process:
                    self._run_task(job)
                else:
                    self._run(job)
            except Exception as error:  # noqa: BLE001 - whatever one job does, the queue goes on
                self._fail(job, error)

    def _next_job(self) -> Job | None:
        with self._lock:
            while not self._queue and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            job = self._jobs[self._queue.popleft()]
            job.state, job.started, job.attempts = RUNNING, time.time(), job.attempts + 1
            self._save_or_log(job)
            return job

    def _run_task(self, job: Job) -> None:
        output_dir = Path(job.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        context = TaskContext(ProgressFile(output_dir / "progress.jsonl"),
                              lambda: job.id in self._cancel_requested or self._closed)
        task = self._tasks.pop(job.id)
        try:
            result = task(context)
        except PortraitError as error:
            with self._lock:
                job.error = str(error)
                self._cancel_requested.discard(job.id)
                self._finish(job, CANCELLED if context.cancelled() else FAILED, None)
            return
        with self._lock:
            job.result_path = str(result) if result else None
            self._cancel_requested.discard(job.id)
            self._finish(job, CANCELLED if context.cancelled() else DONE, 0)

    def _fail(self, job: Job, error: Exception) -> None:
        """An exception escaped the job: it fails with a sentence a user can act on (an unplanned one is
        named and explained), the traceback goes to `log_tail` and to the log, and nothing of the job stays
        in the way of the next one."""
        tail = "".join(traceback.format_exception(error))[-LOG_TAIL_CHARS:]
        if isinstance(error, PortraitError):
            message = str(error)
        else:
            who = job.identity if len(job.identity) <= 60 else job.identity[:59] + "…"
            message = unexpected_error_message(f"the {job.kind} job for {who}", error)
        log.error("job %s failed: %s\n%s", job.id, message, tail)
        with self._lock:
            self._process = None
            self._tasks.pop(job.id, None)
            cancelled = job.id in self._cancel_requested
            self._cancel_requested.discard(job.id)
            job.error, job.log_tail = message, tail
            self._finish(job, CANCELLED if cancelled else FAILED, None)

    def _run(self, job: Job) -> None:
        output_dir = Path(job.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if job.trainer:  # started by a server that died: that trainer may still be running
            stop_leftover_trainer(job.trainer, output_dir)
            if self._finished_by_leftover(job):
                return
        if self._closed or job.id in self._cancel_requested:  # asked while the leftover was being stopped
            with self._lock:
                self._settle(job, None, "")
            return
        lock_fd = take_folder_lock(output_dir)
        if lock_fd is None:
            raise TrainerFolderBusyError(output_dir / TRAINER_LOCK_FILE)
        stderr_path = output_dir / "trainer.log"
        log_start = stderr_path.stat().st_size if stderr_path.is_file() else 0
        returncode = None
        try:
            with self._trainer_turn(job) if self._trainer_turn else contextlib.nullcontext() as turn:
                if not (self._closed or job.id in self._cancel_requested):  # asked while waiting for the turn
                    returncode = self._spawn_and_wait(job, stderr_path, lock_fd, turn)
        finally:
            os.close(lock_fd)  # the trainer holds its own copy for as long as it lives
        with self._lock:
            self._process = None
            job.trainer = None
            self._settle(job, returncode, read_log_from(stderr_path, log_start))

    def _spawn_and_wait(self, job: Job, stderr_path: Path, lock_fd: int, turn: TrainerTurn | None) -> int:
        token = f"{job.id}-{uuid.uuid4().hex[:8]}"
        job.trainer = {"token": token, "started": time.time(), "pid": None, "pgid": None}
        self._save_or_log(job)  # before the start: a crash right after it still leaves the token to find
        with stderr_path.open("ab") as stderr:
            process = subprocess.Popen(self._launch_command(job), stdout=subprocess.DEVNULL, stderr=stderr,
                                       env=_child_environment(token), start_new_session=True,
                                       pass_fds=(lock_fd,) if fcntl else ())
            try:
                with self._lock:
                    self._process = process
                    job.trainer.update(pid=process.pid, pgid=process.pid)
                    self._save_or_log(job)
                _write_lock_owner(lock_fd, process.pid)
                follow = _TurnFollower(job, turn) if turn is not None else None

                def should_stop() -> bool:
                    if follow is not None and follow() and job.id not in self._cancel_requested:
                        log.info("job %s: interrupted by the host", job.id)
                        with self._lock:
                            self._cancel_requested.add(job.id)
                    return job.id in self._cancel_requested or self._closed

                return _wait_with_grace(process, should_stop)
            except BaseException:
                _signal_group(process.pid, signal.SIGKILL)  # never leave a trainer nobody follows
                process.wait()
                raise

    def _finished_by_leftover(self, job: Job) -> bool:
        """The leftover trainer may have completed the job before the restart: then it is done, not run again."""
        latest = read_last_progress(Path(job.output_dir) / "progress.jsonl")
        if latest.get("phase") != "done" or not job.result_path or not Path(job.result_path).is_file():
            return False
        with self._lock:
            job.trainer = None
            self._finish(job, DONE, 0)
        log.info("job %s was completed by the trainer of the previous run", job.id)
        return True

    def _settle(self, job: Job, returncode: int | None, trainer_log: str) -> None:
        remove_temp_files(Path(job.output_dir))
        if job.result_path:
            remove_temp_files(Path(job.result_path).parent)
        if job.id in self._cancel_requested:
            self._cancel_requested.discard(job.id)
            self._finish(job, CANCELLED, returncode)
        elif self._closed:
            job.state = QUEUED  # the app is shutting down: run it again (and resume) next start
            self._save_or_log(job)
        elif returncode == 0:
            self._finish(job, DONE, returncode)
        else:
            job.error = trainer_failure_message(trainer_log, returncode or 0)
            job.log_tail = log_tail(trainer_log)
            self._finish(job, FAILED, returncode)

    def _launch_command(self, job: Job) -> list[str]:
        if self._use_accelerate:
            return [self._python, "-m", "accelerate.commands.launch", "-m", *job.command]
        return [self._python, "-m", *job.command]

    def _finish(self, job: Job, state: str, returncode: int | None) -> None:
        job.state, job.finished, job.returncode = state, time.time(), returncode
        self._save_or_log(job)
        self._wake.notify_all()
        log.info("job %s %s%s", job.id, state, f": {job.error}" if state == FAILED and job.error else "")

    # ---- files -----------------------------------------------------------------------------
    def _job_file(self, job: Job) -> Path:
        return self.jobs_dir / f"{job.id}.json"

    def _save(self, job: Job) -> None:
        atomic_write_json(self._job_file(job), job.to_json())

    def _save_or_raise(self, job: Job, consequence: str) -> None:
        try:
            self._save(job)
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise JobStoreError(f"could not write the job file {self._job_file(job)}: {reason}; {consequence}. "
                                f"Free some disk space or make {self.jobs_dir} writable, then try again") from error

    def _save_or_log(self, job: Job) -> None:
        """For the worker: a job file that cannot be written is logged; the job goes on in memory (after a
        restart it is found in its last saved state)."""
        try:
            self._save(job)
        except (OSError, ValueError) as error:
            log.error("could not write the job file %s (%s); job %s is %s in memory only",
                      self._job_file(job), error, job.id, job.state)

    def _recover(self) -> None:
        """Load saved jobs; those cut off by a crash go back in the queue, oldest first. A file that cannot be
        read is moved to `quarantine/`, never a reason not to start."""
        remove_temp_files(self.jobs_dir)
        saved = []
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                job = Job.from_json(json.loads(path.read_text(encoding="utf-8")))
                if job.id != path.stem:
                    raise ValueError(f"its id {job.id!r} is not its file name")
            except (OSError, ValueError, RecursionError) as error:
                self._quarantine(path, error)
                continue
            saved.append(job)
        for job in sorted(saved, key=lambda j: j.created):
            self._jobs[job.id] = job
            if job.in_process and job.state in (QUEUED, RUNNING):
                job.state, job.error = FAILED, "the app stopped before this job finished; submit it again"
                self._save_or_log(job)
            elif job.state in (QUEUED, RUNNING):
                job.state = QUEUED
                self._queue.append(job.id)
                self._save_or_log(job)

    def _quarantine(self, path: Path, error: Exception) -> None:
        reason = _one_line(str(error)) or type(error).__name__
        self.quarantined.append(path.name)
        try:
            folder = self.jobs_dir / QUARANTINE_DIR
            folder.mkdir(exist_ok=True)
            target = folder / path.name
            if target.exists():
                target = folder / f"{path.stem}.{int(time.time())}-{uuid.uuid4().hex[:4]}{path.suffix}"
            os.replace(path, target)
        except OSError as move_error:
            log.error("job file %s cannot be read (%s) nor moved aside (%s); it is ignored", path.name, reason,
                      move_error)
            return
        log.warning("job file %s cannot be read (%s); moved it to %s", path.name, reason, target)


class TrainerFolderBusyError(PortraitError):
    """Another process holds a training folder's lock: a second trainer must not start there."""

    def __init__(self, lock_path: Path):
        owner = _read_lock_owner(lock_path)
        super().__init__(f"another trainer{f' (pid {owner})' if owner else ''} still holds {lock_path}; stop it, "
                         "then retry this job")


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


# ---- trainer processes -------------------------------------------------------------------------

class _TurnFollower:
    """Passes a running trainer's progress file on to its TrainerTurn (at most once a second); each call
    answers whether the host asked the training to stop."""

    def __init__(self, job: Job, turn: TrainerTurn):
        self._path = Path(job.output_dir) / "progress.jsonl"
        self._title = f"Portrait Studio: training {job.identity}"
        self._turn = turn
        self._next = 0.0
        self._steps = (0, 0)  # the last training step and total seen: kept through phases that have none

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 1.0
            latest = read_last_progress(self._path)
            phase = latest.get("phase", "starting")
            if phase not in SETUP_PHASES and isinstance(latest.get("total"), int):
                self._steps = (int(latest.get("step") or 0), latest["total"])
            self._turn.progress(*self._steps, f"{self._title} ({phase})")
        return self._turn.interrupted()


def _wait_with_grace(process: subprocess.Popen, should_stop) -> int:
    """Wait for the process; once `should_stop()`, SIGTERM its group, then SIGKILL after the grace period."""
    terminated_at = None
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if should_stop() and terminated_at is None:
            _signal_group(process.pid, signal.SIGTERM)
            terminated_at = time.monotonic()
        if terminated_at is not None and time.monotonic() - terminated_at > CANCEL_GRACE_SECONDS:
            _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has already exited
        os.killpg(pgid, signum)


def _child_environment(token: str) -> dict[str, str]:
    """The trainer must import portrait_core even when the extension folder is not on sys.path; the token
    lets a later server recognise it (and nothing else) as this job's trainer."""
    env = dict(os.environ)
    parts = [str(PACKAGE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[TRAINER_TOKEN_VARIABLE] = token
    return env


def take_folder_lock(folder: Path) -> int | None:
    """Open and lock `<folder>/trainer.lock`; the descriptor is handed to the trainer, so the lock lasts as
    long as the trainer does, whatever happens to the server. None: another process holds it."""
    fd = os.open(folder / TRAINER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def folder_lock_held(folder: Path) -> bool:
    lock_path = folder / TRAINER_LOCK_FILE
    if not lock_path.is_file():
        return False
    fd = take_folder_lock(folder)
    if fd is None:
        return True
    os.close(fd)
    return False


def _write_lock_owner(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def _read_lock_owner(lock_path: Path) -> str:
    try:
        return lock_path.read_text(encoding="ascii", errors="replace").strip()[:12]
    except OSError:
        return ""


def stop_leftover_trainer(trainer: dict, folder: Path) -> bool:
    """Stop the trainer a dead server started for a job (`trainer` as recorded in the job file): SIGTERM to
    its process group (it keeps its last checkpoint), SIGKILL after the grace period. Only processes that
    carry the job's token are touched, so a recycled pid is never killed. True if one was running."""
    groups = _leftover_groups(trainer, folder)
    if not groups:
        return False
    log.warning("a trainer of a previous run is still running in %s (process groups %s); stopping it before "
                "the job resumes", folder, sorted(groups))
    for signum, grace in ((signal.SIGTERM, CANCEL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not any(_group_alive(group) for group in groups):
                return True
            time.sleep(0.1)
    log.error("the trainer of a previous run in %s did not stop (process groups %s)", folder, sorted(groups))
    return True


def _leftover_groups(trainer: dict, folder: Path) -> set[int]:
    token = trainer.get("token")
    if Path("/proc/self/environ").is_file() and token:
        return {_process_group(pid) for pid in _pids_with_token(token)} - {None, 0, os.getpgid(0)}
    pgid = trainer.get("pgid")  # no /proc: trust the recorded group only while it holds the folder's lock
    if isinstance(pgid, int) and pgid > 1 and _group_alive(pgid) and folder_lock_held(folder):
        return {pgid}
    return set()


def _pids_with_token(token: str) -> list[int]:
    needle = f"{TRAINER_TOKEN_VARIABLE}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's process
            continue
    return found


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies, which hold nothing, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _, group = stat.rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state not in ("Z", "X"):
                return True
    return False


# ---- what the user reads -----------------------------------------------------------------------

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault))(?::\s*(.*))?$")
_LAUNCHER_FAILURE = "subprocess.CalledProcessError"
_DIED_WITH_SIGNAL = re.compile(r"died with <Signals\.(SIG[A-Z0-9]+)")


def unexpected_error_message(what: str, error: BaseException) -> str:
    """One sentence for an exception nobody planned for: what failed, the file or entry at fault, what to do."""
    name = type(error).__name__
    if isinstance(error, MemoryError):
        return _one_line(f"{what} ran out of memory ({name}); ask for smaller images, fewer images or fewer steps, "
                         "or close other programs, then try again")
    if isinstance(error, OSError):
        file = getattr(error, "filename", None)
        where = f" on {_shorten(str(file))}" if file else ""
        reason = error.strerror or str(error) or name
        return _one_line(f"{what} could not use a file{where}: {reason} ({name}); check the free disk space, the "
                         "permissions and the length of the names there, then try again")
    if isinstance(error, KeyError):
        return _one_line(f"{what} missed the entry {_shorten(str(error))} ({name}) in data it read; a file of the "
                         "identity may be damaged or from another version: prepare it again, then retry "
                         "(the traceback is in the job's log_tail)")
    detail = _one_line(str(error)) or "no message"
    return _one_line(f"{what} stopped on an unexpected {name}: {detail}; try again, and if it happens again report "
                     "it with the job's log_tail")


def trainer_failure_message(trainer_log: str, returncode: int) -> str:
    """One sentence about why the trainer stopped, from this attempt's part of trainer.log."""
    lines = [line for line in trainer_log.splitlines() if line.strip()]
    own = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if own:  # the trainer's own message for an error it expected (a PortraitError)
        return _one_line(own[-1])
    raised = [match for line in lines if (match := _EXCEPTION_LINE.match(line.strip()))]
    real = [match for match in raised if match.group(1) != _LAUNCHER_FAILURE]
    resume = "retry to resume from the last checkpoint"
    if real:
        name, detail = real[-1].group(1).rsplit(".", 1)[-1], (real[-1].group(2) or "").rstrip(".")
        hint = ("; it ran out of memory: lower the resolution or rank" if "memory" in f"{name} {detail}".lower()
                else "")
        return _one_line(f"the trainer stopped on an unexpected {name}{f': {detail}' if detail else ''}{hint}; "
                         f"its log is in trainer.log of the run and in the job's log_tail; {resume}")
    signal_name = _DIED_WITH_SIGNAL.search(trainer_log)
    if returncode < 0 or signal_name:
        name = signal_name.group(1) if signal_name else _signal_name(-returncode)
        return f"the trainer was killed by {name} (often: the system ran out of memory); {resume}"
    return f"the trainer exited with code {returncode} without saying why; see the job's log_tail; {resume}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ERROR_MAX_CHARS else line[:ERROR_MAX_CHARS - 1] + "…"


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def read_log_from(path: Path, offset: int) -> str:
    """The part of a log file written after `offset` (one attempt's output in an appended trainer.log)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def log_tail(text: str, lines: int = STDERR_TAIL_LINES * 2) -> str:
    """The end of a trainer's log, minus the launcher's notice about defaults."""
    useful = [line for line in text.splitlines() if line.strip() and not _launcher_noise(line)]
    return "\n".join(useful[-lines:])[-LOG_TAIL_CHARS:]


def _launcher_noise(line: str) -> bool:
    return ("were not passed to `accelerate launch`" in line
            or line.startswith(("\t`--", "To avoid this warning pass in values")))


def read_last_progress(path: Path) -> dict:
    """The last complete JSON line of a progress file ({} when there is none yet). NaN and infinity (a
    diverged loss) read as None, so the job can still be saved and sent as JSON."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            record = json.loads(line, parse_constant=lambda _: None)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return {}


def remove_temp_files(folder: Path) -> int:
    """Delete `.<name>.tmp-<random>` files that a killed atomic writer left behind; returns how many."""
    removed = 0
    if folder.is_dir():
        for path in folder.glob(".*.tmp-*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def job_status(job: Job) -> dict:
    """What a client sees of a job: no command line, no server paths (so no `log_tail` either)."""
    progress = {key: job.progress[key] for key in PROGRESS_FIELDS if key in job.progress}
    step, total = progress.get("step"), progress.get("total")
    if job.state == DONE:
        fraction = 1.0
    elif progress.get("phase") in SETUP_PHASES and job.state == RUNNING:
        fraction = None  # their steps are not the job's: a resumed job's fraction must not drop back to 0
    elif isinstance(step, int | float) and isinstance(total, int | float) and total:
        fraction = round(min(step / total, 1.0), 4)
    else:
        fraction = 0.0 if job.state == QUEUED else None
    done_with_lora = job.kind == "train" and job.state == DONE and job.result_path
    return {"id": job.id, "kind": job.kind, "identity": job.identity, "state": job.state, "progress": progress,
            "fraction": fraction, "eta_s": None if job.state in FINISHED_STATES else progress.get("eta_s"),
            "error": job.error, "lora": Path(job.result_path).stem if done_with_lora else None,
            "created": job.created, "started": job.started, "finished": job.finished,
            "retryable": job.state in (FAILED, CANCELLED) and not job.in_process}
