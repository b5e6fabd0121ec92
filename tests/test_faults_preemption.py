"""Faults: a training stopped by SIGTERM (preemption) or Ctrl-C, and a resume checkpoint gone bad.

Real processes and real signals: the train stage CLI, ``dvc repro``, the flow CLI and a two-rank
``torchrun`` launch are each sent SIGTERM once their first resume checkpoint exists. Each must exit
143 (preempted, run again to resume) with the checkpoint kept, nothing recorded as done and the
MLflow run KILLED; before, the stage exited 0 and DVC recorded a training that never finished.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from components.config import validate_params
from components.errors import EXIT_PREEMPTED
from components.training.trainer import PREVIOUS_LAST
from tests.conftest import REPO, empty_mlflow_store, prepare_digits, tiny_params
from tests.dvcproject import clone_project, dvc

ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}


def _wait(
    check: Callable[[], Any], timeout: float, what: str, process: subprocess.Popen[str] | None = None
) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` s or if ``process`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"{what}: the process exited {process.returncode} first\n{output[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"{what}: not after {timeout:.0f} s")


def _checkpoint(root: Path, arch: str = "mlp") -> Path | None:
    return next(iter((root / ".work" / "train").glob(f"{arch}-*/checkpoints/last.ckpt")), None)


def _finish(process: subprocess.Popen[str], timeout: float) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"still running {timeout:.0f} s after the signal:\n{output[-3000:]}")
    return output


def _training_runs(uri: str) -> list[Any]:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments) if "architecture" in r.data.tags]


def _long_params(path: Path, **train: Any) -> dict[str, Any]:
    """Minutes of training unless stopped (no early stopping), a checkpoint after every step."""
    params = tiny_params(max_epochs=400, early_stopping_patience=0, checkpoint_every_n_steps=1, **train)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_to_the_train_stage_exits_143_keeping_a_checkpoint_and_the_run_killed(
    tmp_path: Path, signum: int
) -> None:
    """Before: SIGTERM exited 0 (Lightning's SystemExit without a code), Ctrl-C exited 1."""
    prepare_digits(tmp_path)
    uri = empty_mlflow_store(tmp_path / "mlflow.db")
    _long_params(tmp_path / "params.yaml")
    command = [sys.executable, "-m", "pipelines.train", "--arch", "mlp", "--params", "params.yaml"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**ENV, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = _wait(lambda: _checkpoint(tmp_path), 180, "first checkpoint", process)
    process.send_signal(signum)
    output = _finish(process, 60)
    assert process.returncode == EXIT_PREEMPTED, output
    assert f"stopped by {signal.Signals(signum).name} at step" in output
    assert str(checkpoint.relative_to(tmp_path)) in output
    assert not (tmp_path / "models").exists()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert 0 < saved["global_step"] < 400 * 10
    (run,) = _training_runs(uri)
    assert run.info.status == "KILLED"
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "val_loss")) < 400


@pytest.mark.slow
@pytest.mark.timeout(600)  # three dvc repro runs
def test_sigterm_under_dvc_repro_records_nothing_and_the_next_repro_resumes_the_same_run(
    tmp_path: Path,
) -> None:
    """Before: the stage exited 0, dvc repro exited 0 and rewrote dvc.lock for a training that never
    finished (with an earlier model in models/, it kept that one)."""
    # Long enough that the SIGTERM after the first checkpoint (step 5) lands mid-training.
    params = tiny_params(max_epochs=30, early_stopping_patience=0, checkpoint_every_n_steps=5)
    project = clone_project(tmp_path, params)
    dvc(project, "repro", "preprocess")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    lock = (project / "dvc.lock").read_bytes()

    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH")
    env.pop("MLFLOW_TRACKING_URI", None)
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train@mlp"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def stage_process() -> psutil.Process | None:
        for child in psutil.Process(repro.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "pipelines.train" in cmdline and "-c" not in cmdline:
                return child
        return None

    stage = _wait(stage_process, 180, "the pipelines.train process", repro)
    _wait(lambda: _checkpoint(project), 180, "first checkpoint", repro)
    stage.send_signal(signal.SIGTERM)
    output = _finish(repro, 120)
    assert repro.returncode != 0, output
    assert "143" in output
    assert (project / "dvc.lock").read_bytes() == lock
    assert not (project / "models" / "mlp").exists()
    killed = [r for r in _training_runs(uri) if r.info.status == "KILLED"]
    assert len(killed) == 1, [r.info.status for r in _training_runs(uri)]

    second = dvc(project, "repro", "train@mlp")
    info = json.loads((project / "models" / "mlp" / "train_info.json").read_text())
    assert info["resumed_from_step"] > 0, second.stdout
    assert info["epochs"] == 30
    assert info["mlflow"]["run_id"] == killed[0].info.run_id
    assert MlflowClient(uri).get_run(killed[0].info.run_id).info.status == "FINISHED"
    assert json.loads(dvc(project, "status", "--json", "train@mlp").stdout) == {}


@pytest.mark.slow
@pytest.mark.timeout(600)  # the flow CLI starts its own Prefect server
def test_sigterm_to_the_flow_cli_stops_its_training_with_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    """The flow trains in a worker thread that signals do not reach; Prefect turned SIGTERM into a
    crash and killed the process with it, leaving the training run RUNNING."""
    project = clone_project(tmp_path / "project", tiny_params(max_epochs=400, early_stopping_patience=0))
    (project / "models").mkdir(exist_ok=True)
    models_before = sorted(p.name for p in (project / "models").iterdir())
    uri = f"sqlite:///{project / 'mlflow.db'}"
    env = {**ENV, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "flows.pipeline", "--project-root", str(project), "--arch", "mlp"]
    flow = subprocess.Popen(
        [*command, "--no-summary"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait(lambda: _checkpoint(project), 300, "first checkpoint", flow)
    flow.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    output = _finish(flow, 120)
    assert flow.returncode == EXIT_PREEMPTED, output[-3000:]
    assert time.monotonic() - signalled < 60
    assert sorted(p.name for p in (project / "models").iterdir()) == models_before
    assert _checkpoint(project) is not None
    statuses = {r.info.status for r in _training_runs(uri)}
    assert statuses == {"KILLED"}, output[-3000:]


DDP_STAGE = """
import sys
from pathlib import Path

from components.config import load_params
from components.training.launch import launch_training
from pipelines._cli import run_stage

params = load_params(Path("params.yaml"))
run_stage("train@mlp", lambda: launch_training(params, "mlp", "data/prepared", "models/mlp"))
"""


@pytest.mark.slow
def test_sigterm_to_a_torchrun_launchers_caller_checkpoints_every_rank_and_exits_143(tmp_path: Path) -> None:
    """Before: the caller died at once (SIGTERM's default) and torchrun, in a session of its own,
    trained on; a rank stopped by SIGTERM exited 0."""
    prepare_digits(tmp_path)
    uri = empty_mlflow_store(tmp_path / "mlflow.db")
    _long_params(tmp_path / "params.yaml", accelerator="cpu", devices=2, strategy="ddp")
    (tmp_path / "launch.py").write_text(DDP_STAGE)
    caller = subprocess.Popen(
        [sys.executable, "launch.py"],
        cwd=tmp_path,
        env={**ENV, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait(lambda: _checkpoint(tmp_path), 240, "first checkpoint", caller)
    caller.send_signal(signal.SIGTERM)
    output = _finish(caller, 90)
    assert caller.returncode == EXIT_PREEMPTED, output[-3000:]
    assert "rank 0 exited 143, rank 1 exited 143" in output, output[-3000:]
    assert not (tmp_path / "models").exists()
    checkpoint = _checkpoint(tmp_path)
    assert checkpoint is not None
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] > 0
    assert [r.info.status for r in _training_runs(uri)] == ["KILLED"]


class _Payload:
    """A pickle that would create ``marker`` when loaded by an unsafe ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("bad", ["random-bytes", "pickle-payload"])
def test_a_bad_resume_checkpoint_is_set_aside_said_and_training_recovers(
    digits_project: Path, tracking_uri: str, bad: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before: every run failed with a long traceback naming no file, until the folder was deleted.
    With random bytes the checkpoint before it (kept as last.prev.ckpt) resumes; a pickle with code
    leaves nothing usable: training starts over, and the code never runs."""
    from components.training.fitting import DISCARDED_TAG
    from components.training.train import train
    from tests.test_training import CrashAt

    # One step per call: checkpoints at steps 3 and 6 before the crash (last.prev.ckpt, last.ckpt).
    settings = tiny_params(
        max_epochs=2, early_stopping_patience=0, checkpoint_every_n_steps=3, steps_per_call=1
    )
    params = validate_params(settings)
    work, out = digits_project / f".work-{bad}", digits_project / f"models-{bad}"

    def run_train(**kwargs: Any) -> Any:
        return train(
            params, "mlp", digits_project / "data" / "prepared", out, work_root=work,
            project_root=digits_project, **kwargs,
        )  # fmt: skip

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(callbacks=[CrashAt(7)])
    checkpoint = next(work.glob("train/mlp-*/checkpoints/last.ckpt"))
    previous = checkpoint.with_name(PREVIOUS_LAST)
    marker = digits_project / f"payload-ran-{bad}"
    if bad == "random-bytes":
        previous_step = torch.load(previous, map_location="cpu", weights_only=True)["global_step"]
        checkpoint.write_bytes(os.urandom(4096))
    else:
        previous.unlink(missing_ok=True)
        checkpoint.write_bytes(pickle.dumps(_Payload(marker)))
    capfd.readouterr()

    result = run_train()
    err = capfd.readouterr().err
    assert not marker.exists()
    (aside,) = (work / "train" / "discarded").glob(f"{checkpoint.parent.parent.name}-last.ckpt.bad-*")
    assert (out / "train_info.json").is_file()
    assert result.info["resumed_from_step"] == (previous_step if bad == "random-bytes" else None)  # 3 or none
    (line,) = [line for line in err.splitlines() if "discarded resume checkpoint" in line]
    assert str(checkpoint) in line
    assert str(aside) in line
    tag = MlflowClient(tracking_uri).get_run(result.run_id).data.tags[DISCARDED_TAG]
    assert str(checkpoint) in tag
    assert "not a tensors-only checkpoint" in tag
