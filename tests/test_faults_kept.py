"""Faults the pipeline already survives, kept under test (issue 22): a training killed outright and
resumed in the same MLflow run; a preprocess, evaluate or register killed in the middle of its work,
which leaves the previous output as it was; a tracking server that goes away mid-training and comes
back. Real stage processes, real SIGKILLs, a real ``mlflow server`` on loopback, tiny sizes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from components.config import PreprocessParams, validate_params
from components.hashing import sha256_file
from components.registry.decisions import WEIGHTS_TAG, write_report
from components.registry.lease import lock_name
from components.registry.register import CHAMPION, champion_version, register, registered_model_name
from components.training.train import RUN_FILE, train
from tests.conftest import REPO, empty_mlflow_store, tiny_params
from tests.servers import free_port, http_ok, mlflow_server_command, started, wait_for

pytestmark = pytest.mark.usefixtures("tracking_uri")

DEADLINE_S = 240.0  # for a stage process to import torch, Lightning and MLflow on a busy machine
EPOCH_LINE = re.compile(r"mlp: epoch (\d+)/")

# Runs a stage CLI as `python -m pipelines.<stage>` would, except that it stops just before its
# output folder is swapped in (the new version complete, the parent folder locked), says so in the
# marker file and waits there to be killed: a deterministic point inside atomic_directory.
PAUSED_STAGE = """
import runpy, sys, time
from pathlib import Path

import components.atomic as atomic

marker, module, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
keep_files = atomic._keep_files


def pause_before_the_swap(target, tmp):
    keep_files(target, tmp)
    marker.write_text(str(tmp))
    while True:
        time.sleep(1)


atomic._keep_files = pause_before_the_swap
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300", **extra}


def _stage(stage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"pipelines.{stage}", *args]


def _kill(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGKILL the process group, as the kernel's OOM killer or a lost node would end it."""
    assert process.poll() is None, f"exited {process.returncode} before the kill:\n{log.read_text()[-3000:]}"
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def _poll(
    check: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path, every: float = 0.05
) -> None:
    """Poll ``check`` until true; fail if ``process`` exits first or after :data:`DEADLINE_S`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with contextlib.suppress(Exception):  # a file half-written, a store being created
            if check():
                return
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited {process.returncode} first:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE_S:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(every)


def _epochs_done(log: Path) -> int:
    """The last epoch number the training printed (one line per epoch when not on a terminal)."""
    numbers = [int(n) for n in EPOCH_LINE.findall(log.read_text(errors="replace"))]
    return max(numbers, default=0)


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(target: Path) -> list[str]:
    """Temporary or set-aside versions of ``target`` beside it (atomic_directory's)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _write_params(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def _val_loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, "val_loss"))


# A training killed outright resumes in the same run ------------------------------------------------


def test_a_training_killed_outright_resumes_from_its_checkpoint_in_the_same_mlflow_run(
    digits_project: Path, tmp_path: Path
) -> None:
    """SIGKILL (out of memory, a lost node) mid-training: the model folder is untouched, and the
    same command resumes from the last checkpoint into the MLflow run the killed process opened,
    which ends FINISHED with every epoch's val_loss: those the killed process had queued but not
    sent are logged from the checkpoint's history (before, MLflow's curve lacked them)."""
    epochs = 30  # 40 steps each: the kill after 3 epochs leaves 27 to resume
    settings = tiny_params(
        max_epochs=epochs,
        early_stopping_patience=0,
        batch_size=32,
        steps_per_call=1,
        checkpoint_every_n_steps=15,  # mid-epoch ones too: the resume starts mid-epoch
    )
    params_file = _write_params(tmp_path / "params.yaml", settings)
    out, work = tmp_path / "models" / "mlp", tmp_path / ".work"
    out.mkdir(parents=True)
    (out / "weights.safetensors").write_bytes(b"the previous model")
    before = _tree(out)
    command = _stage(
        "train", "--arch", "mlp", "--params", str(params_file),
        "--prepared", str(digits_project / "data" / "prepared"), "--out", str(out), "--work", str(work),
    )  # fmt: skip
    log = tmp_path / "killed.log"
    # Metrics go to MLflow asynchronously: a kill loses what was queued but not sent yet. Holding
    # them 2 s in MLflow's queue makes that sure: the killed process sends no epoch at all.
    held = _env(MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS="2")
    with started(command, log, digits_project, held) as killed:

        def resumable() -> bool:  # past a few epochs, and a checkpoint
            return _epochs_done(log) >= 3 and any(work.glob("train/mlp-*/checkpoints/last.ckpt"))

        _poll(resumable, "a checkpoint after 3 epochs", killed, log)
        _kill(killed, log)
    assert _tree(out) == before
    (work_dir,) = work.glob("train/mlp-*")
    run_id = json.loads((work_dir / RUN_FILE).read_text())["run_id"]
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it

    again = subprocess.run(
        command, cwd=digits_project, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    info = json.loads((out / "train_info.json").read_text())
    assert info["resumed_from_step"] > 0
    assert info["mlflow"]["run_id"] == run_id
    assert (info["epochs"], len(info["history"])) == (epochs, epochs)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert set(_val_loss_steps(client, run_id)) == set(range(epochs))
    assert not work_dir.exists()


# A kill in the middle of preprocess, evaluate or register leaves the previous outputs --------------


@pytest.fixture(scope="module")
def two_models(digits_project: Path) -> tuple[Path, Path]:
    """Two tiny mlps with different weights (1 and 3 epochs), trained on the digits project."""
    models = []
    for epochs in (1, 3):
        out = digits_project / "models" / f"kept-mlp-{epochs}"
        params = validate_params(tiny_params(max_epochs=epochs))
        train(params, "mlp", digits_project / "data" / "prepared", out, work_root=digits_project / ".work")
        models.append(out)
    return models[0], models[1]


def _kill_paused(stage_args: list[str], target: Path, tmp_path: Path, cwd: Path) -> None:
    """Run the stage until its new output is complete and about to replace ``target``; kill it."""
    marker, log = tmp_path / "paused", tmp_path / "paused.log"
    script = tmp_path / "paused_stage.py"
    script.write_text(textwrap.dedent(PAUSED_STAGE))
    command = [sys.executable, str(script), str(marker), *stage_args]
    with started(command, log, cwd, _env()) as paused:
        _poll(marker.exists, "the stage about to swap its output in", paused, log, every=0.2)
        assert Path(marker.read_text()).parent == target.parent
        _kill(paused, log)


def test_a_preprocess_killed_before_its_swap_leaves_the_previous_prepared_data(
    digits_project: Path, tmp_path: Path
) -> None:
    from components.data.preprocess import preprocess

    raw, prepared = digits_project / "data" / "raw", tmp_path / "prepared"
    preprocess(PreprocessParams(), raw, prepared)
    before = _tree(prepared)
    changed = {**tiny_params(), "preprocess": {"val_fraction": 0.2}}  # a different output if written
    params_file = _write_params(tmp_path / "params.yaml", changed)
    args = ["pipelines.preprocess", "--params", str(params_file), "--raw", str(raw), "--out", str(prepared)]
    _kill_paused(args, prepared, tmp_path, tmp_path)
    assert _tree(prepared) == before
    assert _siblings(prepared), "the killed writer left no temporary folder: nothing was recovered"

    # The next run clears the dead writer's folder and replaces the output.
    preprocess(validate_params(changed).preprocess, raw, prepared)
    assert _tree(prepared) != before
    assert _siblings(prepared) == []


def test_an_evaluate_killed_before_its_swap_leaves_the_previous_reports(
    digits_project: Path, two_models: tuple[Path, Path], tmp_path: Path
) -> None:
    from components.evaluation.evaluate import evaluate

    params = validate_params(tiny_params())
    first, second = two_models
    prepared, reports = digits_project / "data" / "prepared", tmp_path / "reports" / "mlp"
    evaluate(params, "mlp", prepared, first, reports, project_root=digits_project)
    (reports / ".gitignore").write_text("/metrics.json\n")  # what DVC keeps there
    before = _tree(reports)
    params_file = _write_params(tmp_path / "params.yaml", tiny_params())
    args = [
        "pipelines.evaluate", "--params", str(params_file), "--arch", "mlp",
        "--prepared", str(prepared), "--model", str(second), "--out", str(reports),
    ]  # fmt: skip
    _kill_paused(args, reports, digits_project, tmp_path)
    assert _tree(reports) == before
    assert _siblings(reports)

    evaluate(params, "mlp", prepared, second, reports, project_root=digits_project)
    after = _tree(reports)
    assert after != before
    assert after[".gitignore"] == before[".gitignore"]
    assert _siblings(reports) == []


def test_a_register_killed_holding_the_lease_leaves_the_report_and_the_next_one_takes_over(
    digits_project: Path, two_models: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL while the registry lease is held: registration.json stays as it was, and the next
    register takes the dead process's lease at once and leaves a consistent registry: one version
    per weights, champion on an existing version, the report saying where champion is."""
    settings = tiny_params()
    settings["train"]["architectures"] = ["mlp"]
    params = validate_params(settings)
    name = registered_model_name(params)
    first, second = two_models
    prepared, models = digits_project / "data" / "prepared", tmp_path / "models"
    report = tmp_path / "reports" / "registration.json"
    decision = register(params, "mlp", first, prepared, project_root=digits_project)
    write_report([decision], champion_version(params, digits_project), report)
    before = report.read_bytes()

    shutil.copytree(second, models / "mlp")
    params_file = _write_params(tmp_path / "params.yaml", settings)
    command = _stage(
        "register", "--params", str(params_file), "--prepared", str(prepared),
        "--models", str(models), "--out", str(report),
    )  # fmt: skip
    client = MlflowClient()
    lock = f"name = '{lock_name(name)}'"
    log = tmp_path / "killed.log"
    with started(command, log, digits_project, _env()) as killed:
        holding = lambda: bool(client.search_registered_models(lock))  # noqa: E731
        _poll(holding, "the register holding the lease", killed, log)
        _kill(killed, log)
    assert report.read_bytes() == before
    assert client.search_registered_models(lock), "the killed register's lease is gone: not killed holding it"

    capfd.readouterr()
    began = time.monotonic()
    again = register(params, "mlp", models / "mlp", prepared, project_root=digits_project)
    took = time.monotonic() - began
    write_report([again], champion_version(params, digits_project), report)
    assert "took over the registry lease of" in capfd.readouterr().err
    assert took < 120, f"{took:.0f} s to register after the holder was killed"
    weights = {sha256_file(model / "weights.safetensors") for model in two_models}
    _assert_consistent_registry(client, name, report, weights)
    trained_run = json.loads((second / "train_info.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(trained_run).info.status == "FINISHED"


def _assert_consistent_registry(client: MlflowClient, name: str, report: Path, weights: set[str]) -> None:
    versions = client.search_model_versions(f"name = '{name}'")
    shas = [version.tags.get(WEIGHTS_TAG) for version in versions]
    assert sorted(shas) == sorted(weights), "a version missing, or two for the same weights"
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert str(champion.version) in {str(v.version) for v in versions}
    written = json.loads(report.read_text())
    assert written["champion"]["version"] == str(champion.version)
    assert written["decisions"][0]["weights_sha256"] in weights
    assert not client.search_registered_models(f"name = '{lock_name(name)}'")


# A tracking server that goes away mid-training and comes back -------------------------------------


def test_training_outlives_a_tracking_server_killed_mid_training_and_restarted(
    digits_project: Path, tmp_path: Path
) -> None:
    """The server is SIGKILLed once the first epoch reached it and restarted on the same port and
    store while training goes on (well within the bounded HTTP retries): training exits 0 and its
    run ends FINISHED with val_loss for every epoch, those sent while the server was away included.

    Two epochs pass with the server down; then the training is paused (SIGSTOP) while the server
    restarts, so that a short training still outlasts a slow restart on a busy machine."""
    epochs = 12  # 40 steps each; the pause below keeps the server's restart within the training
    settings = tiny_params(max_epochs=epochs, early_stopping_patience=0, batch_size=32, steps_per_call=1)
    params_file = _write_params(tmp_path / "params.yaml", settings)
    port, store = free_port(), empty_mlflow_store(tmp_path / "server.db")
    uri = f"http://127.0.0.1:{port}"
    server_command = mlflow_server_command(port, store, tmp_path / "artifacts")
    server_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out, work, log = tmp_path / "models" / "mlp", tmp_path / ".work", tmp_path / "train.log"
    command = _stage(
        "train", "--arch", "mlp", "--params", str(params_file),
        "--prepared", str(digits_project / "data" / "prepared"), "--out", str(out), "--work", str(work),
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(started(server_command, tmp_path / "server-1.log", tmp_path, server_env))
        wait_for(lambda: http_ok(f"{uri}/health"), DEADLINE_S, "mlflow server", server)
        training = stack.enter_context(started(command, log, digits_project, _env(MLFLOW_TRACKING_URI=uri)))
        store_client = MlflowClient(store)  # the server's store, read directly: also while it is down
        run_id = ""

        def first_epoch_logged() -> bool:
            nonlocal run_id
            (run_file,) = work.glob(f"train/mlp-*/{RUN_FILE}")
            run_id = json.loads(run_file.read_text())["run_id"]
            return bool(store_client.get_metric_history(run_id, "val_loss"))

        _poll(first_epoch_logged, "the first epoch's val_loss on the server", training, log, every=0.2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
        at_kill = _epochs_done(log)
        _poll(lambda: _epochs_done(log) >= at_kill + 2, "two epochs with the server down", training, log)
        os.killpg(training.pid, signal.SIGSTOP)
        assert _epochs_done(log) < epochs, "training ended before the server came back"
        again = stack.enter_context(started(server_command, tmp_path / "server-2.log", tmp_path, server_env))
        wait_for(lambda: http_ok(f"{uri}/health"), DEADLINE_S, "mlflow server again", again)
        os.killpg(training.pid, signal.SIGCONT)
        training.wait(timeout=DEADLINE_S)
    assert training.returncode == 0, log.read_text()[-3000:]
    info = json.loads((out / "train_info.json").read_text())
    assert info["mlflow"]["run_id"] == run_id
    assert info["epochs"] == epochs
    assert store_client.get_run(run_id).info.status == "FINISHED"
    assert _val_loss_steps(store_client, run_id) == list(range(epochs))
