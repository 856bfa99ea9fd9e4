"""A training inside the WebUI runs as one of the WebUI's own jobs (against the WebUI double, real trainer process).

What a WebUI user sees: the top progress bar and /sdapi/v1/progress follow the training's steps, the
console's "Total progress" counts them, Interrupt stops the training, the checkpoint waits in RAM while
the trainer runs, and a txt2img clicked meanwhile waits in the WebUI's queue until the training ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from webui_double import webui_started

from portrait_core.hosts.webui_host import WebUIHost
from portrait_core.jobs import CANCELLED, DONE, RUNNING, JobRunner
from portrait_core.services.runtime import PortraitServices, training_task_id
from portrait_core.services.workspace import Workspace
from tests.test_jobs import wait_until as job_wait_until

pytestmark = pytest.mark.usefixtures("webui_state_restored")

# A trainer that reports step N of 3 into its progress file, then waits until the test lets it go on.
TRAINER = """
import json, time
from pathlib import Path
out = Path(OUTPUT)
def report(**fields):
    with (out / "progress.jsonl").open("a") as handle:
        handle.write(json.dumps(fields) + chr(10))
report(phase="loading", step=0, total=4)
for step in (1, 2, 3):
    report(phase="training", step=step, total=3, loss=0.1)
    deadline = time.monotonic() + 300
    while not (out / f"go{step}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
report(phase="merging")  # a phase without steps
deadline = time.monotonic() + 300
while not (out / "go4").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
report(phase="done")
"""


class Checkpoint:
    """Stands in for the WebUI's loaded model: records where it was moved (the double loads none)."""

    lowvram = False

    def __init__(self):
        self.device = "cuda"
        self.moves = []

    def to(self, device):
        self.device = device
        self.moves.append(device)
        return self


@pytest.fixture
def webui(tmp_path):
    with webui_started(tmp_path / "webui"):
        from modules import sd_models, shared

        shared.device = "cuda"
        checkpoint = Checkpoint()
        sd_models.model_data.sd_model = checkpoint
        try:
            yield checkpoint
        finally:
            sd_models.model_data.sd_model = None
            shared.device = "cpu"


def trainer_command(tmp_path: Path, output: Path) -> list[str]:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER.replace("OUTPUT", repr(str(output))))
    return ["timeit", "-n", "1", "-r", "1", f"exec(open({str(script)!r}).read(), {{}})"]  # the runner adds `python -m`


def wait_until(condition, what):
    """The job tests' wait, with room for a busy machine."""
    job_wait_until(condition, 180.0, what)


@pytest.fixture
def turn_runner(webui, tmp_path):  # after the WebUI starts, closed before it stops
    """A job runner whose trainers take the WebUI's turn, as the extension's services set it up."""
    host = WebUIHost()
    runner = JobRunner(tmp_path / "jobs", use_accelerate=False,
                       trainer_turn=lambda job: host.training_turn(training_task_id(job.id)))
    yield runner
    runner.close()


def submit(runner: JobRunner, tmp_path: Path):
    output = tmp_path / "run"
    job = runner.submit("train", "ana", trainer_command(tmp_path, output), output)
    return job, output


def test_the_webuis_progress_console_and_queue_follow_a_training(webui, turn_runner, tmp_path):
    from modules import call_queue, progress, shared

    runner = turn_runner
    job, output = submit(runner, tmp_path)
    task = training_task_id(job.id)
    answers = []
    for step in (1, 2, 3):
        wait_until(lambda: shared.state.job_no == step, f"step {step} on the WebUI's progress")  # noqa: B023
        answers.append(progress.progressapi(task))
        assert shared.total_tqdm._tqdm.n == step and shared.total_tqdm._tqdm.total == 3
        assert webui.device == "cpu", "the checkpoint should wait in RAM while the trainer has the GPU"
        assert not call_queue.queue_lock.acquire(blocking=False), "a txt2img would run beside the training"
        (output / f"go{step}").touch()
    assert [answer["active"] for answer in answers] == [True, True, True]
    assert [round(answer["progress"], 2) for answer in answers] == [0.33, 0.67, 1.0]
    assert answers[0]["textinfo"] == "Portrait Studio: training ana (training)"
    wait_until(lambda: shared.state.textinfo.endswith("(merging)"), "the merge after the last step")
    assert (shared.state.job_no, shared.state.job_count) == (3, 3), "the bar fell back in a phase without steps"
    (output / "go4").touch()
    assert runner.wait(job.id, timeout=180).state == DONE
    assert progress.progressapi(task)["completed"]
    assert webui.moves == ["cpu", "cuda"], "the checkpoint should be back on the GPU after the training"
    assert shared.total_tqdm._tqdm is None, "the console's total bar should be closed"
    assert call_queue.queue_lock.acquire(blocking=False), "the WebUI's queue should be free again"
    call_queue.queue_lock.release()


def test_the_webuis_interrupt_stops_a_training_as_a_cancel_does(webui, turn_runner, tmp_path):
    from modules import shared

    runner = turn_runner
    job, output = submit(runner, tmp_path)
    wait_until(lambda: shared.state.job_no == 1, "the first step")
    shared.state.interrupt()  # the WebUI's Interrupt button
    finished = runner.wait(job.id, timeout=180)
    assert finished.state == CANCELLED
    assert not (output / "go1").exists()  # it never went on: the trainer process was stopped
    assert json.loads((output / "progress.jsonl").read_text().splitlines()[-1])["step"] == 1
    assert webui.moves == ["cpu", "cuda"]


@pytest.mark.parametrize("takes_turn", [True, False])
def test_the_setting_decides_whether_other_generations_wait_for_a_training(webui, tmp_path, takes_turn):
    from modules import call_queue

    services = PortraitServices.create(Workspace(tmp_path / "home"), WebUIHost, in_webui=True,
                                       trainings_take_turn=lambda: takes_turn)
    try:
        job, output = submit(services.runner, tmp_path)
        wait_until(lambda: services.runner.get(job.id).progress.get("step") == 1, "the first step")
        assert services.runner.get(job.id).state == RUNNING
        free = call_queue.queue_lock.acquire(blocking=False)
        if free:
            call_queue.queue_lock.release()
        assert free is not takes_turn
        assert webui.device == ("cpu" if takes_turn else "cuda")
        for step in (1, 2, 3, 4):
            (output / f"go{step}").touch()
        assert services.runner.wait(job.id, timeout=180).state == DONE
    finally:
        services.close()
