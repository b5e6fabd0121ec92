"""Faults of concurrency and of what killed processes leave behind (issue 22, defects 5, 6, 10d).

Real processes on a real SQLite MLflow store: a process holding the registry lease, an MLflow run,
or a training is started, killed outright (SIGKILL) or kept alive, and the next process must take
over what the dead one left, wait for a live one (saying so), and never share or end its work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.config import validate_params
from components.data.prepared import data_version
from components.processes import this_process
from components.registry import lease
from components.registry.lease import HOLDER_TAG, lock_name, registry_lease
from components.tracking import PARENT_TAG, Tracker
from components.training.train import fingerprint
from components.training.work_lock import REUSED_TAG
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")

DEADLINE_S = 240.0  # for a process to start (torch, Lightning, MLflow imports) on a busy machine

HOLD_LEASE = """
import sys
from mlflow import MlflowClient
from components.registry.lease import registry_lease

with registry_lease(MlflowClient(sys.argv[1]), sys.argv[2]) as holder:
    print(holder, flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""

OPEN_RUN = """
import sys
from components.tracking import Tracker

tracker = Tracker.open(sys.argv[1])
parent = tracker.start_parent("flow", {})
with tracker.child_run(parent, "child", {}) as run:
    print(parent, run.run_id, flush=True)
    sys.stdin.read()  # until the test closes stdin, or kills this process
"""

TRAIN = """
import json, os, sys, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from components.config import validate_params
from components.training.train import train

root, settings, parent, gate = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]


class Gate(Callback):
    # Holds the end of the first epoch until the test creates the file `gate` + ".open".
    def on_train_epoch_end(self, trainer, module):
        Path(f"{gate}.started.{os.getpid()}").touch()
        while not Path(gate + ".open").exists():
            time.sleep(0.2)


result = train(
    validate_params(json.loads(settings.read_text())), "mlp", root / "data" / "prepared",
    root / "models" / "shared", work_root=root / ".work", project_root=root, parent_run_id=parent,
    progress_bar=False, callbacks=[Gate()] if gate else [],
)
print(json.dumps({"run_id": result.run_id}), flush=True)
"""


@contextmanager
def python(
    tmp_path: Path, name: str, code: str, *args: str, cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``code`` running in its own process (stdin a pipe, stdout a pipe, stderr to ``<name>.err``);
    killed at the end if still running."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (tmp_path / f"{name}.err").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=cwd or tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def first_line(process: subprocess.Popen[str], tmp_path: Path, name: str) -> str:
    """The first line ``process`` prints (it blocks on stdin after it); fail if it exits first."""
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # '' once the process has exited
    if not line:
        process.wait(timeout=60)
        pytest.fail(f"{name} exited {process.returncode}: {(tmp_path / f'{name}.err').read_text()[-3000:]}")
    return line


def poll(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def test_the_registry_lease_of_a_killed_holder_is_taken_over_at_once_and_said_so(
    tracking_uri: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before, the lease of a SIGKILLed register stayed for its whole ten-minute expiry, and the next
    register waited without a word although the lock named a dead pid of this host."""
    client = MlflowClient(tracking_uri)
    with python(tmp_path, "holder", HOLD_LEASE, tracking_uri, "killed") as holder:
        name = first_line(holder, tmp_path, "holder")
        assert client.get_registered_model(lock_name("killed")).tags[HOLDER_TAG] == name
        os.kill(holder.pid, signal.SIGKILL)  # not reaped yet: a zombie is gone too
        started = time.monotonic()
        with registry_lease(client, "killed", wait_s=90, poll_s=0.2) as mine:
            taken_after = time.monotonic() - started
            assert client.get_registered_model(lock_name("killed")).tags[HOLDER_TAG] == mine
    assert taken_after < 60, f"took {taken_after:.0f} s to take over a dead holder's lease"
    assert f"took over the registry lease of {name}, a process that is gone" in capfd.readouterr().err
    assert not client.search_registered_models(f"name = '{lock_name('killed')}'")


def test_the_registry_lease_of_a_live_holder_is_waited_for_saying_who_and_until_when(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A live holder (here another process of this host) keeps the lease; the waiter says on stderr
    whom it waits for and until when, when it starts waiting and again every NOTICE_EVERY_S, and
    gets the lease once the holder lets go. Before, it waited in silence."""
    monkeypatch.setattr(lease, "NOTICE_EVERY_S", 1.0, raising=False)
    client = MlflowClient(tracking_uri)
    got: list[str] = []
    said: list[str] = []

    def waiting_lines() -> list[str]:
        said.extend(capfd.readouterr().err.splitlines())
        return [line for line in said if "waiting for the registry lease" in line]

    with python(tmp_path, "holder", HOLD_LEASE, tracking_uri, "busy") as holder:
        name = first_line(holder, tmp_path, "holder")
        waiter = threading.Thread(target=lambda: got.append(_lease_once(client, "busy")), daemon=True)
        waiter.start()
        poll(lambda: len(waiting_lines()) >= 2, "two waiting messages on stderr", timeout=60)
        assert not got, "the lease was taken from a live holder"
        assert holder.poll() is None
        for line in waiting_lines():
            assert f"held by {name} until 20" in line, line
            assert "'busy.lock'" in line, line
        assert holder.stdin is not None
        holder.stdin.close()  # the holder ends its registration and lets go
        waiter.join(timeout=DEADLINE_S)
        assert holder.wait(timeout=60) == 0
    assert got
    assert got[0] != name
    assert not any("took over" in line for line in said), said


def _lease_once(client: MlflowClient, model: str) -> str:
    with registry_lease(client, model, wait_s=DEADLINE_S, poll_s=0.2) as holder:
        return holder


def test_runs_left_running_by_a_killed_process_of_this_host_end_killed_others_stay(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before, a run whose process was SIGKILLed and never resumed stayed RUNNING forever. Now the
    next Tracker marks it (and its parent) KILLED; runs of a live process or of another host stay
    RUNNING, and a training that resumes the run reopens it."""
    experiment = "killed-runs"
    with (
        python(tmp_path, "killed", OPEN_RUN, experiment) as killed,
        python(tmp_path, "alive", OPEN_RUN, experiment) as alive,
    ):
        killed_parent, killed_run = first_line(killed, tmp_path, "killed").split()
        alive_parent, alive_run = first_line(alive, tmp_path, "alive").split()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        client = MlflowClient()
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        elsewhere = {
            "process.host": "another-host",
            "process.pid": str(killed.pid),
            "process.started": "1.00",
        }
        other_host = client.create_run(experiment_id, tags=elsewhere).info.run_id
        capfd.readouterr()

        tracker = Tracker.open(experiment)
        status = {run: client.get_run(run).info.status for run in (killed_run, killed_parent)}
        assert status == {killed_run: "KILLED", killed_parent: "KILLED"}
        for run in (alive_run, alive_parent, other_host):
            assert client.get_run(run).info.status == "RUNNING", run
        err = capfd.readouterr().err
        assert "left RUNNING by processes of this host that are gone" in err
        assert killed_run in err

        assert alive.stdin is not None
        alive.stdin.close()
        assert alive.wait(timeout=DEADLINE_S) == 0
        assert client.get_run(alive_run).info.status == "FINISHED"

    # A resumed training reopens the KILLED run, now held by this process.
    with tracker.child_run(killed_parent, "child", {}, resume_run_id=killed_run) as run:
        assert run.run_id == killed_run
        assert run.resumed
        assert client.get_run(killed_run).info.status == "RUNNING"
        assert client.get_run(killed_run).data.tags["process.pid"] == str(os.getpid())
        assert Tracker.open(experiment).end_runs_of_gone_processes() == []  # this process lives
    assert client.get_run(killed_run).info.status == "FINISHED"
    assert client.get_run(killed_parent).info.status == "FINISHED"
    assert client.get_run(killed_run).data.tags["process.started"] == f"{this_process().started:.2f}"


def test_two_trainings_of_the_same_settings_at_once_train_once_in_one_run(
    digits_project: Path, tmp_path: Path
) -> None:
    """Before, a second training of the same settings started while the first ran reopened the
    first's MLflow run (from the shared work folder) and trained into it: val_loss logged twice
    per epoch, and the first pipeline run's parent lost its child. Now one waits for the other,
    saying for whom, then reuses its model; each parent run lists what its pipeline did."""
    settings = tiny_params(max_epochs=2)
    settings_file = tmp_path / "params.json"
    settings_file.write_text(json.dumps(settings))
    params = validate_params(settings)
    key = fingerprint(params, "mlp", data_version(digits_project / "data" / "prepared"))
    tracker = Tracker.open(params.data.source, digits_project)
    parents = [tracker.start_parent(f"flow-{name}", {}) for name in ("a", "b")]
    gate, root, names = str(tmp_path / "gate"), str(digits_project), ("a", "b")

    # Both start at once; whichever takes the lock first stops at the gate after its first epoch.
    with (
        python(tmp_path, "a", TRAIN, root, str(settings_file), parents[0], gate, cwd=digits_project) as a,
        python(tmp_path, "b", TRAIN, root, str(settings_file), parents[1], gate, cwd=digits_project) as b,
    ):
        both = (a, b)

        def waiting() -> int | None:  # which one says it waits for the other
            for me, other in ((0, 1), (1, 0)):
                said = (tmp_path / f"{names[me]}.err").read_text()
                if f"waiting for another training of the same settings (pid {both[other].pid} on " in said:
                    return me
            return None

        def training() -> int:
            return len(list(tmp_path.glob("gate.started.*")))

        poll(
            lambda: (
                (training() and waiting() is not None) or training() > 1 or None not in (a.poll(), b.poll())
            ),
            "one training under way and the other waiting for it",
        )
        assert training() == 1, "both trained at once"
        reuser = waiting()
        assert reuser is not None
        Path(gate + ".open").touch()
        runs = [json.loads(first_line(p, tmp_path, n))["run_id"] for p, n in zip(both, names, strict=True)]
        assert a.wait(timeout=DEADLINE_S) == 0
        assert b.wait(timeout=DEADLINE_S) == 0

    trainer = 1 - reuser
    assert runs[0] == runs[1], "the waiting one did not reuse the other's model"
    assert "reusing it (MLflow run" in (tmp_path / f"{names[reuser]}.err").read_text()
    client = tracker.client
    trained = client.search_runs([tracker.experiment_id], filter_string=f"tags.`train.fingerprint` = '{key}'")
    assert [run.info.run_id for run in trained] == [runs[0]]
    steps = [metric.step for metric in client.get_metric_history(runs[0], "val_loss")]
    assert steps, "no val_loss logged"
    assert sorted(steps) == sorted(set(steps)), steps  # each epoch once
    children = [
        {
            run.info.run_id
            for run in client.search_runs([tracker.experiment_id], f"tags.`{PARENT_TAG}` = '{p}'")
        }
        for p in parents
    ]
    assert children[trainer] == {runs[0]}
    assert children[reuser] == set()
    assert client.get_run(parents[reuser]).data.tags[f"{REUSED_TAG}mlp"] == runs[0]
    assert f"{REUSED_TAG}mlp" not in client.get_run(parents[trainer]).data.tags
