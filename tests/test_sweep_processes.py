"""Sweep processes for real: one killed mid-trial and run again, and two sharing one study. Either
way the study ends with exactly n_trials finished or pruned trials and no trial trained twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from components.sweep.runs import TRIAL_TAG
from components.sweep.study import COUNTED, PROCESS_ATTR, claim, fail_dead_trials
from tests.conftest import REPO, tiny_params

DEADLINE_S = 180.0  # generous: the machine may be busy; the polls end as soon as the state is seen


def _params_file(folder: Path, study: str, n_trials: int, max_epochs: int) -> Path:
    raw = tiny_params(max_epochs=max_epochs, early_stopping_patience=0)
    raw["sweep"] = {
        "architecture": "mlp",
        "n_trials": n_trials,
        "pruning": False,
        "study_name": study,
        "space": {"train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}},
    }
    path = folder / f"{study}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _start(project: Path, params_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.sweep",
            "--no-prefect",
            "--project-root",
            str(project),
            "--params",
            str(params_file),
        ],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _storage(tracking_uri: str) -> str:
    return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"


def _poll(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        found = optuna.load_study(study_name=study, storage=url)
    except KeyError:  # not created yet
        return []
    return found.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _claimed(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if PROCESS_ATTR in t.user_attrs]


def _trained_trials(tracking_uri: str, study: str) -> Counter[int]:
    """How many MLflow runs of ``study`` ended FINISHED per trial number."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`sweep.study` = '{study}' and attributes.status = 'FINISHED'",
    )
    return Counter(int(r.data.tags[TRIAL_TAG]) for r in runs if TRIAL_TAG in r.data.tags)


def _failed_outputs(processes: list[subprocess.Popen[str]], outputs: list[str]) -> str:
    """The whole output of each process that did not exit 0 (pytest would truncate a list's repr)."""
    return "\n".join(
        f"--- process {i} exited {p.returncode}; its output:\n{out}"
        for i, (p, out) in enumerate(zip(processes, outputs, strict=True))
        if p.returncode != 0
    )


def test_a_sweep_killed_mid_trial_is_finished_by_two_processes_sharing_its_study(
    digits_project: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """SIGKILL once a trial runs; then two processes continue the same study at once: it ends with
    exactly n_trials counted trials, the killed one failed and never trained, none trained twice."""
    study, url = "killed", _storage(tracking_uri)
    params_file = _params_file(tmp_path, study, n_trials=4, max_epochs=2)
    first = _start(digits_project, params_file)
    # Claimed: the trial names its process (a kill between ask and claim is the next test's case).
    _poll(lambda: _claimed(_running(url, study)) or first.poll() is not None, "a claimed RUNNING trial")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = [t.number for t in _running(url, study)]
    assert len(killed) == 1, first.stdout.read() if first.stdout else ""

    processes = [_start(digits_project, params_file) for _ in range(2)]
    outputs = [p.communicate(timeout=DEADLINE_S)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], _failed_outputs(processes, outputs)

    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    counted = sorted(t.number for t in trials if t.state in COUNTED)
    assert len(counted) == 4
    assert [t.state for t in trials if t.number == killed[0]] == [TrialState.FAIL]
    refused = [t for t in trials if t.state == TrialState.FAIL and t.number != killed[0]]
    assert all(t.user_attrs.get("sweep.failed") == "not run: the study was full" for t in refused)
    trained = _trained_trials(tracking_uri, study)
    assert killed[0] not in trained  # the killed trial was not trained again
    assert sorted(trained) == counted
    assert set(trained.values()) == {1}  # each counted trial trained once


def test_a_trial_its_process_never_claimed_is_failed_once_the_grace_is_over(tmp_path: Path) -> None:
    """Killed between Optuna's ask and the claim, a trial names no process: nothing would ever end it,
    and it would hold a place of n_trials forever."""
    study = optuna.create_study(study_name="unclaimed", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()  # RUNNING, no process recorded
    assert fail_dead_trials(study) == []  # within the grace: it may still be claimed
    assert fail_dead_trials(study, unclaimed_after_s=0.0) == [trial.number]
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["sweep.failed"].startswith("no process claimed it")


def test_a_trial_claimed_by_a_process_that_is_gone_is_failed_at_once(tmp_path: Path) -> None:
    """The claim is one attribute (host, pid, start time), written in one go: a process killed while
    claiming leaves either a whole record, which this test fakes for a finished process, or none."""
    study = optuna.create_study(study_name="gone", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()
    claim(trial)
    mine = study.get_trials()[0].user_attrs[PROCESS_ATTR]
    assert fail_dead_trials(study) == []  # this process runs: its trial stays
    dead = {**mine, "pid": str(_free_pid())}
    study._storage.set_trial_user_attr(trial._trial_id, PROCESS_ATTR, dead)
    assert fail_dead_trials(study) == [trial.number]
    (frozen,) = study.get_trials()
    assert frozen.user_attrs["sweep.failed"] == "its process was killed"


def _free_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
