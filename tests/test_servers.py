"""Against real servers on loopback, started here: ``mlflow server`` (SQLite backend) and
``prefect server start``: a work-pool deployment with the cron schedule from params.yaml, a model
trained and registered on the server, and ``mlflow models serve`` answering a scoring request (and
refusing, with a 400, pixels on another scale than the training data's).
Served deployments and whole flow runs against real servers are in tests/test_postgres.py.

Ports are chosen at run time, every wait is bounded, and every process is stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from components.config import validate_params
from components.data.prepared import load_prepared
from components.evaluation.evaluate import evaluate
from components.registry.register import raw_pixels, register
from components.training.train import train
from tests.conftest import tiny_params
from tests.dvcproject import clone_project
from tests.servers import (
    BIN,
    free_port,
    http_ok,
    mlflow_server_command,
    post_json,
    prefect_server_command,
    service_env,
    started,
    wait_for,
)

# A hang guard, not a speed goal: three servers and two CLI registrations take about 1.5 min alone and
# over 5 min when the other workers of `make test` share the machine's two cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL_NAME = "digits-classifier"


def test_real_servers_take_a_work_pool_deployment_record_a_registration_and_serve_it(
    tmp_path: Path, digits_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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

        # Training and registration logged to the MLflow server (the flow run against real servers,
        # scheduled and by hand, is tests/test_postgres.py).
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        settings = validate_params(params)
        prepared_dir = digits_project / "data" / "prepared"
        lineage = {"prefect.flow_run_id": "by-hand"}
        model_dir, root = tmp_path / "mlp", digits_project
        work = tmp_path / "work"
        train(settings, "mlp", prepared_dir, model_dir, work_root=work, project_root=root, tags=lineage)
        evaluate(settings, "mlp", prepared_dir, model_dir, tmp_path / "reports", project_root=root)
        register(settings, "mlp", model_dir, prepared_dir, project_root=root, tags=lineage)

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
        prepared = load_prepared(prepared_dir)
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
            # Pixels on another scale (16x the digits' 0..16) are a 400 naming the rule and the
            # range, not class 0 at probability 1.0.
            scaled = urllib.request.Request(
                f"http://127.0.0.1:{model_port}/invocations",
                data=json.dumps({"inputs": (pixels * 16).tolist()}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(scaled, timeout=60)
            error = json.loads(refused.value.read())
        assert refused.value.code == 400, error
        assert error["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "pixel values must lie within the training data's range 0..16" in error["message"]
        served = [row["class_id"] for row in answer["predictions"]]
        import mlflow

        from components.tracking import fluent_tracking

        # Not mlflow.set_tracking_uri alone: the global would outlive this test and point the
        # worker's later tests at this (stopped) server.
        with fluent_tracking(mlflow_uri):
            local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(pixels)
        assert served == local["class_id"].tolist()
        names = prepared.stats.class_names
        assert [row["class_name"] for row in answer["predictions"]] == [names[i] for i in served]
        assert np.allclose(
            [row["probability"] for row in answer["predictions"]], local["probability"], atol=1e-6
        )
