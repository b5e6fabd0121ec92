"""Against real servers on loopback, started here: ``mlflow server``, ``prefect server start``, a
deployment served with a short interval, and ``mlflow models serve`` answering a scoring request.

Ports are chosen at run time, every wait is bounded, and every process is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from components.data.prepared import load_prepared
from components.registry.register import raw_pixels
from tests.conftest import tiny_params
from tests.dvcproject import clone_project

pytestmark = pytest.mark.slow

MODEL_NAME = "digits-classifier"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited with code {process.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(1)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


@contextlib.contextmanager
def started(
    command: list[str], log: Path, cwd: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in its own process group; stop the whole group on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_scheduled_flow_logs_and_registers_on_real_servers_and_the_model_serves(tmp_path: Path) -> None:
    params = tiny_params(max_epochs=1)
    params["train"]["architectures"] = ["mlp"]
    project = clone_project(tmp_path / "project", params)
    mlflow_port, prefect_port, model_port = free_port(), free_port(), free_port()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "DO_NOT_TRACK": "1",
    }
    env.pop("PYTHONPATH", None)
    mlflow_server = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts",
    ]  # fmt: skip
    prefect_server = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(prefect_port),
    ]
    with (
        started(mlflow_server, tmp_path / "mlflow.log", tmp_path, env) as mlflow_process,
        started(prefect_server, tmp_path / "prefect.log", tmp_path, env) as prefect_process,
    ):
        wait_for(lambda: http_ok(f"{mlflow_uri}/health"), 120, "mlflow server", mlflow_process)
        wait_for(lambda: http_ok(f"{prefect_api}/health"), 120, "prefect server", prefect_process)

        # A cluster deployment: registered for a work pool with the cron schedule from params.yaml.
        for command in (
            [str(BIN / "prefect"), "work-pool", "create", "trial-pool", "--type", "process"],
            [
                sys.executable,
                "-m",
                "flows.deploy",
                "work-pool",
                "--pool",
                "trial-pool",
                "--source",
                str(project),
            ],
        ):
            created = subprocess.run(
                command, cwd=project, env=env, capture_output=True, text=True, timeout=120
            )
            assert created.returncode == 0, created.stdout + created.stderr
        (deployment,) = _post(f"{prefect_api}/deployments/filter", {})
        assert deployment["work_pool_name"] == "trial-pool"
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [params["schedule"]["cron"]]

        # One machine: the deployment served from a process, every 5 s instead of the cron schedule.
        serve = [
            sys.executable,
            "-m",
            "flows.deploy",
            "serve",
            "--project-root",
            str(project),
            "--interval",
            "5",
        ]
        with started(serve, tmp_path / "serve.log", project, env) as serve_process:
            wait_for(
                lambda: _completed_scheduled_runs(prefect_api) > 0,
                300,
                f"a completed scheduled flow run (log: {tmp_path / 'serve.log'})",
                serve_process,
            )

        # The flow logged and registered on the MLflow server.
        client = MlflowClient(mlflow_uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "digits"]
        runs = client.search_runs([experiment.experiment_id])
        assert any(
            r.data.tags.get("architecture") == "mlp" and "test_accuracy" in r.data.metrics for r in runs
        )
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert champion.tags["architecture"] == "mlp"
        assert champion.tags["prefect.flow_run_id"]

        # The champion serves over REST and answers what the registered model predicts here.
        prepared = load_prepared(project / "data" / "prepared")
        pixels = raw_pixels(prepared.splits["test"], prepared.stats)[:16]
        model_server = [
            str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
            "--host", "127.0.0.1", "--port", str(model_port), "--env-manager", "local", "--workers", "1",
        ]  # fmt: skip
        with started(model_server, tmp_path / "model-serve.log", tmp_path, env) as model_process:
            wait_for(
                lambda: http_ok(f"http://127.0.0.1:{model_port}/ping"),
                180,
                "mlflow models serve",
                model_process,
            )
            request = urllib.request.Request(
                f"http://127.0.0.1:{model_port}/invocations",
                data=json.dumps({"inputs": pixels.tolist()}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        served = [row["class_id"] for row in answer["predictions"]]
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri)
        local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(pixels)
        assert served == local["class_id"].tolist()
        assert np.allclose(
            [row["probability"] for row in answer["predictions"]], local["probability"], atol=1e-6
        )


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _completed_scheduled_runs(api: str) -> int:
    """Completed runs of a deployment that the scheduler created."""
    runs = _post(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    return sum(1 for run in runs if run.get("deployment_id") and run.get("auto_scheduled"))
