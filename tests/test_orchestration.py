"""The flow's wiring rules that need no server: which failures retry, overrides, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from prefect.states import Completed, Failed

from components.config import effective_params
from components.errors import DataValidationError, ParamsError, is_transient
from components.tracking_server import TrackingError, TrackingUnavailable, tracking_error
from components.training.supervise import TrainingLaunchError, TrainingUnavailable, run_streaming
from flows.tasks import only_transient
from tests.conftest import REPO


def test_only_a_service_that_did_not_answer_is_retried() -> None:
    down = MlflowException("API request to http://127.0.0.1:5000/api failed: Max retries exceeded")
    assert is_transient(down)
    assert isinstance(tracking_error("http://127.0.0.1:5000", down), TrackingUnavailable)
    refused = MlflowException("RESOURCE_DOES_NOT_EXIST: experiment 7 does not exist")
    assert not is_transient(refused)
    assert type(tracking_error("http://127.0.0.1:5000", refused)) is TrackingError

    def state(error: BaseException) -> Failed:  # type: ignore[type-arg]
        return Failed(data=error)

    assert only_transient(None, None, state(TrackingUnavailable("down")))  # type: ignore[arg-type]
    assert only_transient(None, None, state(ConnectionError("reset")))  # type: ignore[arg-type]
    assert not only_transient(None, None, state(ParamsError("train.max_epochs: bad")))  # type: ignore[arg-type]
    assert not only_transient(None, None, state(DataValidationError("x.npz", "bad")))  # type: ignore[arg-type]
    assert not only_transient(None, None, state(ValueError("a bug")))  # type: ignore[arg-type]
    assert not only_transient(None, None, Completed(data=1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "error", "retried"), [(75, TrainingUnavailable, True), (2, TrainingLaunchError, False)]
)
def test_stage_process_exit_codes_map_to_retry_or_not(
    code: int, error: type[Exception], retried: bool
) -> None:
    command = [sys.executable, "-c", f"print('stage says why'); raise SystemExit({code})"]
    lines: list[str] = []
    with pytest.raises(error) as raised:
        run_streaming(command, cwd=Path.cwd(), env={}, on_line=lines.append)
    assert is_transient(raised.value) is retried
    assert "stage says why" in str(raised.value)
    assert lines == ["stage says why"]


# A stage process per rank: rank 1 fails the way a stage does, rank 0 is still busy when torchrun stops it.
RANK_ONE_FAILS = """
import os
import time

from components.errors import ParamsError, TransientError
from pipelines._cli import run_stage


def body() -> None:
    if os.environ["RANK"] == "1":
        raise {error}("rank 1 says why")
    time.sleep(120)


run_stage("train@mlp", body)
"""


@pytest.mark.parametrize(
    ("error", "code", "raised", "retried"),
    [("TransientError", 75, TrainingUnavailable, True), ("ParamsError", 2, TrainingLaunchError, False)],
)
def test_a_ranks_exit_code_gets_through_torchrun(
    tmp_path: Path, error: str, code: int, raised: type[Exception], retried: bool
) -> None:
    """torchrun exits 1 whatever its workers exit with; the code rank 1 recorded decides the retry."""
    script = tmp_path / "stage.py"
    script.write_text(RANK_ONE_FAILS.format(error=error), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += ["--nproc-per-node=2", str(script)]
    lines: list[str] = []
    with pytest.raises(TrainingLaunchError) as info:
        run_streaming(command, cwd=REPO, env=dict(os.environ), on_line=lines.append, timeout_s=120)
    assert type(info.value) is raised
    assert info.value.returncode == code
    assert is_transient(info.value) is retried
    assert f"rank 1 exited {code}; the launcher exited 1" in str(info.value)
    assert any("train@mlp failed: rank 1 says why" in line for line in lines)


def test_flow_parameters_override_params_yaml_through_the_same_schema() -> None:
    settings = effective_params(REPO / "params.yaml", ["cnn"], 3, None, {"train.batch_size": 32})
    assert settings.train.architectures == ["cnn"]
    assert (settings.train.max_epochs, settings.train.batch_size) == (3, 32)
    with pytest.raises(ParamsError, match=r"train\.max_epochs"):
        effective_params(REPO / "params.yaml", None, 0, None, None)
    with pytest.raises(ParamsError, match="architectures"):
        effective_params(REPO / "params.yaml", ["resnet"], None, None, None)
    # Several nodes need processes started on every node: the flow refuses before running anything.
    two_nodes = {"train.num_nodes": 2, "train.devices": 4}
    with pytest.raises(ParamsError, match=r"train\.num_nodes: 2: the flow trains on its own machine only"):
        effective_params(REPO / "params.yaml", None, None, None, two_nodes)


def test_loading_the_flow_module_does_not_import_torch_lightning_or_mlflow() -> None:
    # What `flows.deploy` and a worker registering a deployment pay: Prefect, not the ML stack.
    probe = "import sys, flows.deploy; print(sorted({'torch', 'lightning', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_work_pool_deployment_runs_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``serve`` (limit=1): runs of a folder source would otherwise share one project folder."""
    from components.config import load_params
    from flows.deploy import work_pool_deployment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_params(REPO / "params.yaml")
    arguments = work_pool_deployment(
        settings,
        source=str(REPO),
        pool="p",
        project_root=".",
        params_file="params.yaml",
        image=None,
        interval=None,
    )
    assert arguments["concurrency_limit"] == 1
    assert (arguments["work_pool_name"], arguments["name"]) == ("p", settings.schedule.deployment_name)


def test_a_git_source_without_a_tracking_server_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker runs a git source in a temporary clone: without MLFLOW_TRACKING_URI each run's SQLite
    store, models and registry would vanish with it. Refused before anything is cloned or registered."""
    from typer.testing import CliRunner

    from flows.deploy import app, copied_per_run

    git = "https://git.example.com/ml/classifier-pipeline.git"
    assert copied_per_run(git)
    assert copied_per_run("git@git.example.com:ml/classifier-pipeline.git")
    assert not copied_per_run(str(REPO))
    assert not copied_per_run(".")
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    result = CliRunner().invoke(app, ["work-pool", "--pool", "p", "--source", git])
    assert result.exit_code == 2, result.output
    assert "deploy failed: --source" in result.output
    assert "set MLFLOW_TRACKING_URI" in result.output
    assert "Traceback" not in result.output


def test_a_dvc_project_outside_git_stops_the_flow_with_what_to_do(tmp_path: Path) -> None:
    """A copy without ``.git`` (the training image) made DVC raise ``SCMError: ... is not a git
    repository`` as a traceback from the first task; the flow now stops at start with a
    :class:`PipelineError` naming both ways out, and ``core.no_scm`` (the image's) opens it."""
    import shutil

    from components.config import load_params
    from components.dvc_sync import DvcStages
    from components.errors import PipelineError

    for name in ("dvc.yaml", "params.yaml", ".dvc/config"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    settings = load_params(tmp_path / "params.yaml")
    with pytest.raises(PipelineError, match=r"not a git repository.*git checkout.*core\.no_scm true"):
        DvcStages.open(tmp_path, settings)
    (tmp_path / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    stages = DvcStages.open(tmp_path, settings)
    assert stages is not None
    assert stages.up_to_date("ingest") is False  # DVC answers: nothing was ever run here


def test_the_flow_pickles_by_value_as_a_served_deployment_needs() -> None:
    """``flow.serve`` starts each run by cloudpickling the flow with its module's globals by value:
    a lock (or any unpicklable object) at module level makes every scheduled run crash at start."""
    import cloudpickle

    import flows.pipeline

    cloudpickle.register_pickle_by_value(flows.pipeline)
    try:
        payload = cloudpickle.dumps(flows.pipeline.training_pipeline)
    finally:
        cloudpickle.unregister_pickle_by_value(flows.pipeline)
    assert len(payload) > 0


def test_the_flow_cli_waits_longer_than_prefects_20_s_for_its_ephemeral_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make run` on a freshly booted 2-core machine failed: the ephemeral server's first start took
    more than Prefect's 20 s. Inside the CLI's context the wait is longer; a user's own value wins."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout

    from flows.ephemeral import EPHEMERAL_SERVER_STARTUP_TIMEOUT_S, patient_ephemeral_server

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    before = timeout.value()
    with patient_ephemeral_server():
        assert timeout.value() == EPHEMERAL_SERVER_STARTUP_TIMEOUT_S > 20
    assert timeout.value() == before  # only for the flow run, not for the rest of the process

    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")
    with patient_ephemeral_server():
        assert timeout.value() == before  # the user's setting (read by Prefect at import) stands


@pytest.mark.parametrize(
    "module",
    [
        "pipelines.ingest",
        "pipelines.preprocess",
        "pipelines.train",
        "pipelines.evaluate",
        "pipelines.register",
        "pipelines.predict",
        "pipelines.summary",
        "flows.pipeline",
        "flows.deploy",
    ],
)
def test_every_cli_option_help_survives_rich_markup(module: str) -> None:
    """Typer renders help through rich, which swallows ``[...]`` as a markup tag: "Registered model
    [default: from params]." printed as "Registered model ." in ``--help``."""
    import importlib

    import typer.main

    command = typer.main.get_command(importlib.import_module(module).app)
    commands = list(getattr(command, "commands", {}).values()) or [command]
    helps = [param.help for cmd in commands for param in cmd.params if getattr(param, "help", None)]
    assert helps, module
    assert not [text for text in helps if "[" in str(text)]


def test_the_cli_ephemeral_server_outlives_a_ctrl_c_to_the_process_group() -> None:
    """A terminal's Ctrl-C reaches every process of the foreground group. Prefect's ephemeral server
    stopped at once; the interrupted flow then printed connection tracebacks and hung at exit
    sending its events. The server the CLI starts blocks SIGINT and still answers after one."""
    import signal
    import time

    import httpx
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ephemeral import ephemeral_server_apart_from_ctrl_c

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not PREFECT_API_URL.value()
        with ephemeral_server_apart_from_ctrl_c():
            server = SubprocessASGIServer()
            try:
                assert server.server_process is not None
                pid = server.server_process.pid
                blocked = int(Path(f"/proc/{pid}/status").read_text().split("SigBlk:")[1].split()[0], 16)
                assert blocked & (1 << (signal.SIGINT - 1))
                assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGINT}  # not here
                os.kill(pid, signal.SIGINT)
                time.sleep(1)
                assert server.server_process.poll() is None
                assert httpx.get(f"{server.api_url}/health", timeout=10).status_code == 200
            finally:
                server.stop()
        assert server.server_process is None
