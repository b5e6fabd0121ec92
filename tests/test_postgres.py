"""Shared services on a real PostgreSQL: MLflow and Prefect servers on it, two pipelines at once,
a work-pool deployment, and the champion served over REST.

A PostgreSQL server (Debian's ``postgresql`` package; ``make test`` installs it when it can) is
started here on a free loopback port in a temporary data directory, and compose's own init script
(``infra/postgres/init-databases.sh``) creates the ``mlflow`` and ``prefect`` roles and databases.
On it run an ``mlflow server`` (proxied artifacts) and a ``prefect server``, each logging in with
its own role and password over TCP, exactly as ``infra/compose.yaml`` wires them. Two pipelines
then run at the same time against both servers: the deployment served with a short interval (a
scheduled run) in one copy of the project and a flow run started by hand in another. Everything
is read back through the servers' REST APIs. A cluster deployment is registered for a work pool,
and the champion the pipelines registered is served by ``mlflow models serve``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, tiny_params
from tests.dvcproject import clone_project
from tests.servers import (
    BIN,
    completed_flow_runs,
    completed_scheduled_runs,
    free_port,
    get_json,
    http_ok,
    mlflow_server_command,
    post_json,
    prefect_server_command,
    serve_command,
    service_env,
    started,
    wait_for,
)

# A hang guard, not a speed goal: PostgreSQL, two servers and two whole pipelines take about 1.5 min alone and
# over 5 min when the other workers of `make test` share the machine's two cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL_NAME = "digits-classifier"
MLP_FOLDERS = ("mlp", "mlp-compressed")  # a rejected compressed model leaves no weights
INIT_SCRIPT = REPO / "infra" / "postgres" / "init-databases.sh"


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


@dataclass(frozen=True)
class Postgres:
    port: int
    passwords: dict[str, str]

    def url(self, database: str, driver: str) -> str:
        """The URL a service logs in with: its own role (named like its database) and password."""
        return f"postgresql+{driver}://{database}:{self.passwords[database]}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on loopback with databases ``mlflow`` and ``prefect``."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; `make test` installs Debian's "
            "postgresql package when it runs as root with apt-get, or install it yourself"
        )
    # PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user, in a
    # folder that user owns (pytest's own temp folders are private to root).
    as_user: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None or _uid("postgres") is None:
            pytest.skip("running as root without a `postgres` user and runuser to start PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"

    # Password logins over TCP, as in production; the superuser only through the local socket.
    run(
        str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
        "--auth-local=trust", "--auth-host=scram-sha-256",
    )  # fmt: skip
    server_options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", server_options, "-l", str(home / "log"), "-w", "start")
    try:
        passwords = {name: secrets.token_urlsafe(16) for name in ("mlflow", "prefect")}
        env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "PGHOST": str(home),
            "PGPORT": str(port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "postgres",
            "MLFLOW_DB_PASSWORD": passwords["mlflow"],
            "PREFECT_DB_PASSWORD": passwords["prefect"],
        }
        created = subprocess.run(
            ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert created.returncode == 0, created.stdout + created.stderr
        yield Postgres(port, passwords)
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def _uid(user: str) -> int | None:
    import pwd

    with contextlib.suppress(KeyError):
        return pwd.getpwnam(user).pw_uid
    return None


@dataclass(frozen=True)
class Services:
    mlflow_uri: str
    prefect_api: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def services(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """``mlflow server`` and ``prefect server`` on the PostgreSQL above, as infra/compose.yaml runs them."""
    tmp = tmp_path_factory.mktemp("services")
    mlflow_port, prefect_port = free_port(), free_port()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    env = service_env(tmp, mlflow_uri, prefect_api)
    prefect_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url("prefect", "asyncpg")}
    mlflow_server = mlflow_server_command(mlflow_port, postgres.url("mlflow", "psycopg2"), tmp / "artifacts")
    with (
        started(mlflow_server, tmp / "mlflow.log", tmp, env) as mlflow_process,
        started(prefect_server_command(prefect_port), tmp / "prefect.log", tmp, prefect_env) as prefect,
    ):
        wait_for(lambda: http_ok(f"{mlflow_uri}/health"), 180, "mlflow server on PostgreSQL", mlflow_process)
        wait_for(lambda: http_ok(f"{prefect_api}/health"), 180, "prefect server on PostgreSQL", prefect)
        yield Services(mlflow_uri, prefect_api, env)


@pytest.fixture(scope="module")
def two_pipelines(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scheduled run of the served deployment and a hand-started flow run, at the same time."""
    tmp = tmp_path_factory.mktemp("two-pipelines")
    params = tiny_params(max_epochs=1)
    params["train"]["architectures"] = ["mlp"]
    scheduled, by_hand = clone_project(tmp / "scheduled", params), clone_project(tmp / "by-hand", params)
    direct = [sys.executable, "-m", "flows.pipeline", "--no-summary"]
    with (
        started(serve_command(scheduled, 30), tmp / "serve.log", scheduled, services.env) as serve,
        started(direct, tmp / "by-hand.log", by_hand, services.env) as flow,
    ):
        wait_for(lambda: flow.poll() is not None, 400, "the flow run started by hand", serve)
        assert flow.wait() == 0, (tmp / "by-hand.log").read_text()[-3000:]
        wait_for(
            lambda: completed_scheduled_runs(services.prefect_api) > 0,
            300,
            f"a completed scheduled flow run (log: {tmp / 'serve.log'})",
            serve,
        )
    return {"scheduled": scheduled, "by-hand": by_hand}


def _mlflow(services: Services, path: str, **query: str) -> Any:
    return get_json(f"{services.mlflow_uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}")


def test_a_served_deployment_runs_on_schedule_against_prefect_on_postgres(
    services: Services, two_pipelines: dict[str, Path]
) -> None:
    runs = completed_flow_runs(services.prefect_api)
    assert any(run["deployment_id"] and run["auto_scheduled"] for run in runs)
    assert any(not run["deployment_id"] for run in runs)  # the one started by hand
    found = post_json(f"{services.prefect_api}/deployments/filter", {})
    assert any(d["name"] == "scheduled" and d["work_pool_name"] is None for d in found), found


def _mlflow_runs_by_flow_run(services: Services) -> dict[str, list[dict[str, Any]]]:
    """The experiment's MLflow runs, grouped by the Prefect flow run that made them."""
    experiment = _mlflow(services, "experiments/get-by-name", experiment_name="digits")["experiment"]
    found = post_json(
        f"{services.mlflow_uri}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000},
    )["runs"]
    by_flow_run: dict[str, list[dict[str, Any]]] = {}
    for run in found:
        flow_run_id = _tags(run["data"].get("tags", [])).get("prefect.flow_run_id", "")
        by_flow_run.setdefault(flow_run_id, []).append(run)
    return by_flow_run


def _tags(entries: list[dict[str, str]]) -> dict[str, str]:
    """MLflow's REST ``[{"key": ..., "value": ...}]`` tag list (of a run or a model version) as a dict."""
    return {t["key"]: t["value"] for t in entries}


def _trained(runs: list[dict[str, Any]]) -> bool:
    """The flow run's MLflow runs are its parent and an mlp child holding the test metrics."""
    metrics = [{m["key"] for m in run["data"].get("metrics", [])} for run in runs]
    return len(runs) == 2 and any("test_accuracy" in keys for keys in metrics)


def _found_up_to_date(runs: list[dict[str, Any]]) -> bool:
    """Only the flow's parent run, which says training and evaluation were up to date."""
    if len(runs) != 1:
        return False
    skipped = set(_tags(runs[0]["data"].get("tags", [])).get("pipeline.skipped_stages", "").split(","))
    return {"train@mlp", "evaluate@mlp"} <= skipped


def test_both_pipelines_are_recorded_in_mlflow_on_postgres(
    services: Services, two_pipelines: dict[str, Path]
) -> None:
    by_flow_run = _mlflow_runs_by_flow_run(services)
    runs = completed_flow_runs(services.prefect_api)
    (by_hand,) = [r for r in runs if not r["deployment_id"]]
    scheduled = sorted((r for r in runs if r["deployment_id"]), key=lambda r: r["start_time"])
    timeline = [(r["id"], r["start_time"], r["end_time"]) for r in scheduled]
    for path in two_pipelines.values():
        assert (path / "models/mlp/weights.safetensors").is_file()
    # The hand-started run trained, evaluated and recorded both in its two runs.
    assert _trained(by_flow_run.get(by_hand["id"], [])), by_flow_run.get(by_hand["id"])
    # The served deployment keeps scheduling runs every 30 s in one project folder: one of them
    # trained; every other found everything up to date and recorded only its parent run.
    outcomes = {r["id"]: by_flow_run.get(r["id"], []) for r in scheduled}
    assert sum(_trained(found) for found in outcomes.values()) == 1, (timeline, outcomes)
    assert all(_trained(found) or _found_up_to_date(found) for found in outcomes.values()), (
        timeline,
        outcomes,
    )
    assert {run["info"]["status"] for found in by_flow_run.values() for run in found} == {"FINISHED"}


def test_the_registry_stays_consistent_when_two_pipelines_register_at_once(
    services: Services, two_pipelines: dict[str, Path]
) -> None:
    from components.hashing import sha256_file

    # Each pipeline registers its mlp and, when compress@mlp accepted it, the compressed mlp.
    files = [p / "models" / f / "weights.safetensors" for p in two_pipelines.values() for f in MLP_FOLDERS]
    weights = {sha256_file(file) for file in files if file.is_file()}
    found = _mlflow(services, "model-versions/search", filter=f"name = '{MODEL_NAME}'", max_results="100")
    versions = found["model_versions"]
    tags = [_tags(v.get("tags", [])) for v in versions]
    # One version per distinct set of weights, however the two registrations interleaved.
    assert sorted(t["weights.sha256"] for t in tags) == sorted(weights)
    assert all(t.get("registry.decision") in {"promoted", "kept"} for t in tags)
    champion = _mlflow(services, "registered-models/alias", name=MODEL_NAME, alias="champion")
    best = max(float(t["registry.value"]) for t in tags)
    champion_tags = _tags(champion["model_version"].get("tags", []))
    assert float(champion_tags["registry.value"]) == best
    # The lease was let go: no lock model is left behind.
    models = _mlflow(services, "registered-models/search")
    assert [m["name"] for m in models.get("registered_models", [])] == [MODEL_NAME]


def test_a_work_pool_deployment_is_registered_with_the_cron_schedule_from_params(
    services: Services, two_pipelines: dict[str, Path]
) -> None:
    project = two_pipelines["by-hand"]
    for command in (
        [str(BIN / "prefect"), "work-pool", "create", "trial-pool", "--type", "process"],
        [sys.executable, "-m", "flows.deploy", "work-pool", "--pool", "trial-pool", "--source", str(project)],
    ):
        created = subprocess.run(
            command, cwd=project, env=services.env, capture_output=True, text=True, timeout=180
        )
        assert created.returncode == 0, created.stdout + created.stderr
    found = post_json(f"{services.prefect_api}/deployments/filter", {})
    (deployment,) = [d for d in found if d["work_pool_name"] == "trial-pool"]
    cron = yaml.safe_load((project / "params.yaml").read_text())["schedule"]["cron"]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [cron]


def test_the_champion_serves_over_rest_as_it_predicts_here_and_refuses_pixels_on_another_scale(
    services: Services, two_pipelines: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow

    from components.data.prepared import load_prepared
    from components.registry.judge import raw_pixels
    from components.tracking import fluent_tracking

    prepared = load_prepared(two_pipelines["by-hand"] / "data" / "prepared")
    pixels = raw_pixels(prepared.splits["test"], prepared.stats)[:16]
    port = free_port()
    model_server = [
        str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
        "--host", "127.0.0.1", "--port", str(port), "--env-manager", "local", "--workers", "1",
    ]  # fmt: skip
    with started(model_server, tmp_path / "model-serve.log", tmp_path, services.env) as process:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 180, "mlflow models serve", process)
        answer = _invoke(port, pixels)
        # Pixels on another scale (16x the digits' 0..16) are a 400 naming the rule and the range,
        # not class 0 at probability 1.0.
        with pytest.raises(urllib.error.HTTPError) as refused:
            _invoke(port, pixels * 16)
        error = json.loads(refused.value.read())
    assert refused.value.code == 400, error
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "pixel values must lie within the training data's range 0..16" in error["message"]
    # Not mlflow.set_tracking_uri: the global would outlive this test and point later ones here.
    with fluent_tracking(services.mlflow_uri):
        local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(pixels)
    served = [row["class_id"] for row in answer["predictions"]]
    assert served == local["class_id"].tolist()
    names = prepared.stats.class_names
    assert [row["class_name"] for row in answer["predictions"]] == [names[i] for i in served]
    assert np.allclose([row["probability"] for row in answer["predictions"]], local["probability"], atol=1e-6)


def _invoke(port: int, pixels: np.ndarray) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": pixels.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
