"""The job runner under faults: unexpected exceptions, an unwritable jobs folder, bad job files, a server
killed mid-training. Real threads, real subprocesses, real files (a real full tmpfs where we may mount one)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from portrait_core.errors import PortraitError
from portrait_core.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    Job,
    JobNotFoundError,
    JobRunner,
    JobStateError,
    JobStoreError,
    job_status,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SLEEP_60 = "import time; time.sleep(60)"


def wait_until(condition, timeout=30.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _result_task(path: Path):
    def task(context):
        context.progress("rendering", step=1, total=1)
        path.write_text("made")
        return str(path)
    return task


class RecordedLog(logging.Handler):
    """The `portrait.jobs` records of one test (the `portrait` logger does not propagate to pytest's)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def job_log():
    handler = RecordedLog()
    logger = logging.getLogger("portrait.jobs")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


# ---- 1. every exception ends its job, not the queue --------------------------------------------

LONG_NAME = "a" * 300
UNEXPECTED = [
    ("generate", OSError(errno.ENAMETOOLONG, "File name too long", f"/home/identities/{LONG_NAME}/render.png"),
     ["could not use a file", "File name too long", f"{'a' * 40}/render.png", "disk space"]),
    ("workflow", MemoryError(), ["ran out of memory", "smaller images"]),
    ("generate", KeyError("reference_face"), ["'reference_face'", "prepare it again"]),
    ("workflow", IndexError("list index out of range"), ["unexpected IndexError: list index out of range"]),
]


@pytest.mark.parametrize("kind, error, expected", UNEXPECTED, ids=lambda value: type(value).__name__)
def test_an_unexpected_exception_fails_its_job_with_a_sentence_and_the_next_job_runs(runner, tmp_path, kind, error,
                                                                                     expected):
    started, release = threading.Event(), threading.Event()

    def failing(context):
        started.set()
        release.wait(10)
        raise error

    failing_job = runner.submit_task(kind, "ana", failing, tmp_path / "first")
    assert started.wait(10)
    queued_behind = runner.submit_task(kind, "ana", _result_task(tmp_path / "made.txt"), tmp_path / "second")
    assert runner.get(queued_behind.id).state == QUEUED
    release.set()
    failed = runner.wait(failing_job.id, timeout=20)
    assert failed.state == FAILED
    assert "\n" not in failed.error and len(failed.error) <= 400
    assert failed.error.startswith(f"the {kind} job for ana ")
    assert all(part in failed.error for part in expected), failed.error
    assert "Traceback" in failed.log_tail and type(error).__name__ in failed.log_tail
    assert runner.wait(queued_behind.id, timeout=20).state == DONE
    assert (tmp_path / "made.txt").read_text() == "made"
    assert runner.active_jobs("ana") == [], "the identity is still blocked"
    assert runner.cancel(failing_job.id).state == FAILED  # cancelling a finished job changes nothing
    saved = json.loads((runner.jobs_dir / f"{failing_job.id}.json").read_text())
    assert saved["state"] == FAILED and saved["error"] == failed.error and "Traceback" in saved["log_tail"]
    status = job_status(failed)
    assert status["error"] == failed.error and "log_tail" not in status, "tracebacks (server paths) stay inside"


def test_an_output_folder_that_cannot_be_made_fails_the_job_naming_it(runner, tmp_path):
    # The 300-character identity name of the issue: the OS refuses the folder before the task even starts.
    task_job = runner.submit_task("generate", LONG_NAME, _result_task(tmp_path / "never.txt"), tmp_path / LONG_NAME)
    train_job = runner.submit("train", LONG_NAME, ["timeit", "pass"], tmp_path / LONG_NAME / "run")
    for job in (runner.wait(task_job.id, timeout=20), runner.wait(train_job.id, timeout=20)):
        assert job.state == FAILED
        assert "File name too long" in job.error and "a" * 40 in job.error, job.error
    after = runner.submit_task("generate", "ana", _result_task(tmp_path / "made.txt"), tmp_path / "ok")
    assert runner.wait(after.id, timeout=20).state == DONE
    assert runner.active_jobs(LONG_NAME) == []


def test_cancelling_a_task_that_raises_on_its_way_out_ends_cancelled(runner, tmp_path):
    running = threading.Event()

    def task(context):
        running.set()
        while not context.cancelled():
            time.sleep(0.02)
        raise RuntimeError("interrupted in the middle of a buffer")

    job = runner.submit_task("generate", "ana", task, tmp_path / "out")
    assert running.wait(10)
    runner.cancel(job.id)
    assert runner.wait(job.id, timeout=20).state == CANCELLED
    assert runner.active_jobs("ana") == []


@pytest.fixture
def accelerate_runner(tmp_path):
    """Trainer runs through accelerate's launcher, as real trainings are (its traceback follows the trainer's)."""
    jobs = JobRunner(tmp_path / "jobs")
    yield jobs
    jobs.close()


def test_a_trainer_that_crashes_unexpectedly_gets_one_sentence_and_its_log_tail(accelerate_runner, tmp_path):
    out_of_memory = "import numpy; numpy.ones(2 ** 40)"
    job = accelerate_runner.submit("train", "ana", ["timeit", "-n", "1", "-r", "1", out_of_memory], tmp_path / "run")
    job = accelerate_runner.wait(job.id, timeout=120)
    assert job.state == FAILED and job.returncode != 0
    assert "\n" not in job.error and len(job.error) <= 400
    assert "_ArrayMemoryError" in job.error and "out of memory" in job.error and "resume" in job.error, job.error
    assert "CalledProcessError" not in job.error, "the launcher's own traceback is not the cause"
    assert "Traceback" in job.log_tail and "numpy.ones" in job.log_tail and "CalledProcessError" in job.log_tail
    assert "were not passed to `accelerate launch`" not in job.log_tail
    assert accelerate_runner.active_jobs("ana") == []


def test_a_trainer_killed_by_a_signal_says_so(accelerate_runner, tmp_path):
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    job = accelerate_runner.submit("train", "ana", ["timeit", "-n", "1", "-r", "1", killed], tmp_path / "run")
    job = accelerate_runner.wait(job.id, timeout=120)
    assert job.state == FAILED
    assert "killed by SIGKILL" in job.error and "\n" not in job.error, job.error


# ---- 2. a job exists only once its file is written ---------------------------------------------

@pytest.fixture(params=["full disk", "read-only folder"])
def unwritable(request, tmp_path):
    """`(jobs_dir, break_it, repair)`: a jobs folder on a tmpfs we fill up, or one made read-only (for root,
    which ignores permissions: immutable). Skipped where this machine does not allow it."""
    if request.param == "full disk":
        yield from _full_disk(tmp_path / "disk")
    else:
        yield from _read_only_folder(tmp_path / "jobs")


def _full_disk(mount_point: Path):
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    filler = mount_point / "filler"

    def fill():
        with filler.open("wb", buffering=0) as handle, pytest.raises(OSError) as raised:
            while True:
                handle.write(b"\0" * 4096)
        assert raised.value.errno == errno.ENOSPC

    try:
        yield mount_point / "jobs", fill, filler.unlink
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _read_only_folder(jobs_dir: Path):
    jobs_dir.mkdir()
    if os.geteuid() == 0:  # root writes through permissions; an immutable folder stops it too
        if subprocess.run(["chattr", "-i", str(jobs_dir)], capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot make a folder immutable here")

        def make():
            subprocess.run(["chattr", "+i", str(jobs_dir)], check=True)

        def undo():
            subprocess.run(["chattr", "-i", str(jobs_dir)], check=True)
    else:
        def make():
            jobs_dir.chmod(0o555)

        def undo():
            jobs_dir.chmod(0o755)
    try:
        yield jobs_dir, make, undo
    finally:
        undo()


def test_a_job_that_cannot_be_saved_is_never_queued(unwritable, tmp_path):
    jobs_dir, break_it, repair = unwritable
    runner = JobRunner(jobs_dir, use_accelerate=False)
    try:
        break_it()
        for submit in (lambda: runner.submit("train", "ana", ["timeit", SLEEP_60], tmp_path / "run"),
                       lambda: runner.submit_task("generate", "ana", _result_task(tmp_path / "x"), tmp_path / "g")):
            with pytest.raises(JobStoreError, match=re.escape(str(jobs_dir))) as refused:
                submit()
            assert "nothing was queued" in str(refused.value) and "disk space" in str(refused.value)
            ghost = re.search(r"([0-9a-f]{12})\.json", str(refused.value)).group(1)
            with pytest.raises(JobNotFoundError):
                runner.cancel(ghost)
            with pytest.raises(JobNotFoundError):
                runner.get(ghost)
        assert runner.jobs() == [] and runner.active_jobs("ana") == []
        repair()
        assert [path.name for path in jobs_dir.iterdir()] == [], "a temporary file was left behind"
        job = runner.submit_task("generate", "ana", _result_task(tmp_path / "made.txt"), tmp_path / "g")
        assert runner.wait(job.id, timeout=20).state == DONE
    finally:
        runner.close()


def test_a_retry_that_cannot_be_saved_leaves_the_job_failed(tmp_path):
    jobs_dir = tmp_path / "jobs"
    runner = JobRunner(jobs_dir, use_accelerate=False)
    try:
        job = runner.wait(runner.submit("train", "ana", ["portrait_core.no_such_module"], tmp_path / "run").id, 30)
        assert job.state == FAILED
        job_file = jobs_dir / f"{job.id}.json"
        job_file.unlink()
        job_file.mkdir()  # the path the job must be written to is taken: the write fails as on a broken disk
        with pytest.raises(JobStoreError, match="not queued again"):
            runner.retry(job.id)
        assert runner.get(job.id).state == FAILED and runner.active_jobs("ana") == []
    finally:
        runner.close()


def test_only_failed_or_cancelled_trainings_can_be_retried(runner, tmp_path):
    task_job = runner.submit_task("generate", "ana", _result_task(tmp_path / "x.txt"), tmp_path / "g")
    assert runner.wait(task_job.id, timeout=20).state == DONE
    with pytest.raises(JobStateError, match="only failed or cancelled"):
        runner.retry(task_job.id)
    with pytest.raises(JobNotFoundError):
        runner.retry("nosuchjob")

    def failing(context):
        raise PortraitError("no template face")

    failed = runner.wait(runner.submit_task("generate", "ana", failing, tmp_path / "f").id, timeout=20)
    assert failed.state == FAILED and failed.error == "no template face"
    with pytest.raises(JobStateError, match="submit it again"):
        runner.retry(failed.id)


# ---- 3. start-up survives bad job files ---------------------------------------------------------

def _job_file(jobs_dir: Path, job_id: str, **changes) -> Path:
    record = Job(id=job_id, kind="train", identity="ana", command=["x"], output_dir=str(jobs_dir / job_id),
                 state=DONE).to_json() | changes
    path = jobs_dir / f"{job_id}.json"
    path.write_text(json.dumps(record))
    return path


def test_bad_job_files_are_moved_aside_and_named_and_the_rest_load(tmp_path, job_log):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    good = _job_file(jobs_dir, "good1")
    old = _job_file(jobs_dir, "old1")  # written before identities, log_tail and trainer existed
    record = json.loads(old.read_text())
    for new_field in ("identities", "log_tail", "trainer"):
        record.pop(new_field)
    old.write_text(json.dumps(record | {"a_field_from_a_newer_version": 1}))
    bad = {
        _job_file(jobs_dir, "yesterday", created="yesterday").name: "'created'",
        _job_file(jobs_dir, "wrongcmd", command="python -m trainer").name: "'command'",
        _job_file(jobs_dir, "paused", state="paused").name: "'state'",
        _job_file(jobs_dir, "boolean", attempts=True).name: "'attempts'",
        _job_file(jobs_dir, "renamed", id="another").name: "file name",
    }
    (jobs_dir / "truncated.json").write_text(good.read_text()[:40])
    (jobs_dir / "alist.json").write_text("[1, 2]")
    (jobs_dir / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (jobs_dir / "folder.json").mkdir()
    bad |= {"truncated.json": "", "alist.json": "list", "binary.json": "", "folder.json": ""}
    runner = JobRunner(jobs_dir, use_accelerate=False)
    try:
        assert sorted(job.id for job in runner.jobs()) == ["good1", "old1"]
        assert runner.get("old1").identities == ["ana"] and runner.get("old1").log_tail is None
        assert sorted(runner.quarantined) == sorted(bad)
        assert sorted(path.name for path in (jobs_dir / "quarantine").iterdir()) == sorted(bad)
        for name, reason in bad.items():
            [line] = [line for line in job_log.lines if name in line]
            assert "quarantine" in line and reason in line, line
        job = runner.submit_task("generate", "ana", _result_task(tmp_path / "x.txt"), tmp_path / "g")
        assert runner.wait(job.id, timeout=20).state == DONE
    finally:
        runner.close()
    again = JobRunner(jobs_dir, use_accelerate=False)  # a second start finds nothing more to move
    try:
        assert again.quarantined == [] and len(again.jobs()) == 3
    finally:
        again.close()


# ---- 4. a server killed mid-training leaves no orphan trainer -----------------------------------

SERVER = """
import sys, time
from pathlib import Path
from portrait_core.jobs import JobRunner
jobs_dir, output_dir, pid_file = sys.argv[1:4]
setup = f"import os; f = open({pid_file!r}, 'a'); f.write(str(os.getpid()) + chr(10)); f.close()"
runner = JobRunner(Path(jobs_dir), use_accelerate=False)
job = runner.submit("train", "ana", ["timeit", "-n", "1", "-r", "1", "-s", setup, "import time; time.sleep(120)"],
                    Path(output_dir))
print(job.id, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _trainer_pids(pid_file: Path) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file.is_file() else []


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_a_trainer_left_by_a_killed_server_is_stopped_before_its_job_runs_again(tmp_path):
    jobs_dir, output_dir, pid_file = tmp_path / "jobs", tmp_path / "run", tmp_path / "trainer-pids"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(jobs_dir), str(output_dir), str(pid_file)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        job_id = server.stdout.readline().strip()
        wait_until(lambda: len(_trainer_pids(pid_file)) == 1, 60, "the first trainer")
        [orphan] = _trainer_pids(pid_file)
        pids.append(orphan)
        recorded = json.loads((jobs_dir / f"{job_id}.json").read_text())
        assert recorded["state"] == RUNNING and recorded["trainer"]["pid"] == orphan
        assert recorded["trainer"]["pgid"] == orphan and recorded["trainer"]["token"]
        server.send_signal(signal.SIGKILL)  # the server dies; its trainer (own session) keeps running
        server.wait(10)
        time.sleep(0.5)
        assert _alive(orphan), "the trainer should outlive a killed server: that is the danger"
        runner = JobRunner(jobs_dir, use_accelerate=False)  # the server starts again
        try:
            wait_until(lambda: len(_trainer_pids(pid_file)) == 2, 60, "the resumed trainer")
            pids[:] = _trainer_pids(pid_file)
            assert not _alive(orphan), "the orphan trainer still runs beside the new one"
            assert _alive(pids[1]) and runner.get(job_id).state == RUNNING
            assert runner.get(job_id).attempts == 2
            assert runner.cancel(job_id).id == job_id
            assert runner.wait(job_id, timeout=30).state == CANCELLED
            assert not _alive(pids[1])
        finally:
            runner.close()
    finally:
        server.kill()
        server.wait(10)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_folder_whose_trainer_lock_is_held_gets_no_second_trainer(tmp_path):
    from portrait_core.jobs import take_folder_lock

    output_dir = tmp_path / "run"
    output_dir.mkdir()
    holder = take_folder_lock(output_dir)  # a trainer this runner knows nothing about (no token recorded)
    assert holder is not None
    runner = JobRunner(tmp_path / "jobs", use_accelerate=False)
    try:
        job = runner.wait(runner.submit("train", "ana", ["timeit", SLEEP_60], output_dir).id, timeout=30)
        assert job.state == FAILED and "trainer.lock" in job.error and "stop it" in job.error, job.error
        os.close(holder)
        runner.retry(job.id)
        wait_until(lambda: (runner.get(job.id).trainer or {}).get("pid"), 30, "the retried trainer")
        assert take_folder_lock(output_dir) is None, "the running trainer does not hold its folder's lock"
        runner.cancel(job.id)
        assert runner.wait(job.id, timeout=30).state == CANCELLED
    finally:
        runner.close()


def test_a_training_is_not_retried_while_its_identity_has_another_training(tmp_path):
    runner = JobRunner(tmp_path / "jobs", use_accelerate=False)
    try:
        first = runner.submit("train", "ana", ["timeit", SLEEP_60], tmp_path / "first")
        runner.cancel(first.id)
        assert runner.wait(first.id, timeout=30).state == CANCELLED
        second = runner.submit("train", "ana", ["timeit", SLEEP_60], tmp_path / "second")
        wait_until(lambda: runner.get(second.id).state == RUNNING, 30, "the second training")
        with pytest.raises(JobStateError, match=f"'ana' already has a running train job \\({second.id}\\)"):
            runner.retry(first.id)
        runner.cancel(second.id)
        assert runner.wait(second.id, timeout=30).state == CANCELLED
        assert runner.retry(first.id).state in (QUEUED, RUNNING)
        runner.cancel(first.id)
        assert runner.wait(first.id, timeout=30).state == CANCELLED
    finally:
        runner.close()
