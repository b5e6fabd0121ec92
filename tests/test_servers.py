"""Against real servers on loopback, started here: ``mlflow server``, ``prefect server start``, a
deployment served with a short interval, and ``mlflow models serve`` answering a scoring request.

Ports are chosen at run time, every wait is bounded, and every process is stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from components.data.prepared import load_prepared
from components.registry.register import raw_pixels
from tests.conftest import tiny_params
from tests.dvcproject import clone_project
from tests.servers import (
    BIN,
    completed_scheduled_runs,
    free_port,
    http_ok,
    mlflow_server_command,
    post_json,
    prefect_server_command,
    serve_command,
    service_env,
    started,
    wait_for,
)

pytestmark = pytest.mark.slow

MODEL_NAME = "digits-classifier"


def test_scheduled_flow_logs_and_registers_on_real_servers_and_the_model_serves(tmp_path: Path) -> None:
    params = tiny_params(max_epochs=1)
    params["train"]["architectures"] = ["mlp"]
    project = clone_project(tmp_path / "project", params)
    mlflow_port, prefect_port, model_port = free_port(), free_port(), free_port()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    env = service_env(tmp_path, mlflow_uri, prefect_api)
    mlflow_server = mlflow_server_command(
        mlflow_port, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"
    )
    prefect_server = prefect_server_command(prefect_port)
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
        (deployment,) = post_json(f"{prefect_api}/deployments/filter", {})
        assert deployment["work_pool_name"] == "trial-pool"
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [params["schedule"]["cron"]]

        # One machine: the deployment served from a process, every 5 s instead of the cron schedule.
        with started(serve_command(project, 5), tmp_path / "serve.log", project, env) as serve_process:
            wait_for(
                lambda: completed_scheduled_runs(prefect_api) > 0,
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
