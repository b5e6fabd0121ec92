"""Static checks of infra/: the compose file, the Kubernetes manifests and templates, the Dockerfiles.

No Docker engine or cluster is needed (CI has neither): the compose file is checked for health
checks, pinned images, loopback-only ports and secrets kept out of the file; Kubernetes objects are
validated against the Kubernetes schema bundled with ``kubernetes-validate``; Dockerfiles pass
``hadolint``. The PostgreSQL init script runs for real in tests/test_postgres.py.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
BIN = Path(sys.executable).parent
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")
K8S_VERSION = "1.33.0"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _interpolated(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)", text))


def test_every_compose_service_is_health_checked_pinned_and_ordered(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "prefect-server", "prefect-worker"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        image = service["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag not in {"", "latest"}, f"{name}: image {image!r} is not pinned"
        assert not tag.startswith("${"), f"{name}: image {image!r} is not pinned"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    # Built images pin their base images too.
    for dockerfile in (INFRA / "docker").glob("*Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM ") and "${" not in line:
                assert re.search(r":[\w.-]+", line.split()[1]), f"{dockerfile.name}: {line}"
                assert ":latest" not in line


def test_compose_publishes_on_loopback_only_and_keeps_secrets_out(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for key, value in (service.get("environment") or {}).items():
            text = str(value)
            if any(word in key for word in SECRET_WORDS) or ("://" in text and "@" in text):
                # A password (or a URL with credentials) only ever comes from infra/.env.
                assert _interpolated(text), f"{name}: {key} holds a literal secret"
    listed = {
        line.split("=", 1)[0]
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert _interpolated(COMPOSE.read_text()) <= listed
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO, check=False).returncode
    assert ignored == 0, "infra/.env (the real secrets) must be git-ignored"


def test_postgres_is_healthy_only_once_it_listens_on_tcp(compose: dict[str, Any]) -> None:
    """On a fresh volume the image runs initdb.d on a temporary server listening on the Unix socket
    only: a ``pg_isready`` over the socket passes before the databases exist, and MLflow and the
    Prefect server started then crash. Over TCP it passes only once the real server is up."""
    test = compose["services"]["postgres"]["healthcheck"]["test"]
    command = test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])
    checks = [part.split() for part in re.split(r"&&|\|\||;", command) if "pg_isready" in part]
    assert checks, command
    for check in checks:
        host = next((word for flag, word in itertools.pairwise(check) if flag in {"-h", "--host"}), "")
        assert host == "127.0.0.1", f"the postgres health check must use TCP (-h 127.0.0.1): {command}"


@pytest.mark.parametrize("password", ["p@ss", "a/b", "50%off", "x:y", "has space", "$HOME", ""])
def test_the_postgres_init_script_refuses_a_password_a_connection_url_cannot_hold(
    tmp_path: Path, password: str
) -> None:
    """The role passwords go into compose.yaml's connection URLs unescaped; one that breaks the URL
    is refused naming the variable, before psql is ever called (no server runs here: a psql on the
    path would record its call)."""
    fake_psql = tmp_path / "psql"
    fake_psql.write_text(f"#!/bin/sh\ntouch {tmp_path / 'psql-called'}\n")
    fake_psql.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "MLFLOW_DB_PASSWORD": "Ok-1.2_3~4",
        "PREFECT_DB_PASSWORD": password,
    }
    init = INFRA / "postgres" / "init-databases.sh"
    done = subprocess.run(["bash", str(init)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "PREFECT_DB_PASSWORD" in done.stderr, done.stderr
    assert not (tmp_path / "psql-called").exists()

    env["PREFECT_DB_PASSWORD"] = "0123abcdef-._~"  # the same script goes on to psql with a safe one
    done = subprocess.run(["bash", str(init)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "psql-called").exists()


def test_compose_config_is_accepted_by_docker_compose() -> None:
    docker = shutil.which("docker")
    version = (
        subprocess.run([docker, "compose", "version"], capture_output=True, check=False) if docker else None
    )
    if version is None or version.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here (the file is still checked above)")
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(INFRA / ".env.example"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_kubernetes_manifests_validate_against_the_schema() -> None:
    manifests = sorted((INFRA / "k8s").glob("*.yaml"))
    assert manifests
    kinds = []
    for manifest in manifests:
        for resource in yaml.safe_load_all(manifest.read_text()):
            _validate(resource)
            kinds.append(resource["kind"])
    assert "Job" in kinds
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject bad objects
        _validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"nope": 1}})


def _render(value: Any, variables: dict[str, Any]) -> Any:
    """Prefect's substitution for a base job template: a whole-string placeholder takes the value."""
    if isinstance(value, dict):
        return {k: _render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    if isinstance(value, str):
        whole = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value)
        if whole:
            return variables[whole.group(1)]
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(variables[m.group(1)]), value)
    return value


def test_prefect_kubernetes_work_pool_template_renders_a_valid_gpu_job() -> None:
    template = json.loads((INFRA / "prefect" / "k8s-work-pool.json").read_text())
    properties = template["variables"]["properties"]
    variables = {name: spec.get("default") for name, spec in properties.items()}
    variables |= {
        "name": "training-pipeline-run",
        "command": ["prefect", "flow-run", "execute"],
        "labels": {"app": "classifier-pipeline"},
        "env": {},
        "cluster_config": None,
        "job_watch_timeout_seconds": None,
    }
    job = _render(template["job_configuration"]["job_manifest"], variables)
    _validate(job)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == properties["gpus"]["default"] >= 1
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["DO_NOT_TRACK"] == "1"
    # Every placeholder in the template is a declared variable.
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(properties)


def test_prefect_kubernetes_work_pool_lets_the_worker_and_deployment_set_the_servers() -> None:
    """prefect-kubernetes puts the flow run's env (the worker's own PREFECT_API_URL, then the
    ``env`` job variable) *before* the template's container env list, and Kubernetes keeps the last
    of duplicate names: a URL fixed in that list would win over both, so every run would report to
    it. The tracking server is a default of the ``env`` variable instead, which a deployment's
    ``env`` merges over (Prefect's own merge is used here)."""
    import asyncio

    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((INFRA / "prefect" / "k8s-work-pool.json").read_text())
    (container,) = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    fixed = [item["name"] for item in container["env"]]
    assert not {"PREFECT_API_URL", "MLFLOW_TRACKING_URI"} & set(fixed), fixed
    default_uri = template["variables"]["properties"]["env"]["default"]["MLFLOW_TRACKING_URI"]
    assert default_uri.startswith("http")

    def pod_env(job_variables: dict[str, Any]) -> dict[str, str]:
        # client: nothing in the template refers to a block or a variable, so none is called.
        configuration = asyncio.run(
            BaseJobConfiguration.from_template_and_values(template, job_variables, client=object())
        )
        worker = {"PREFECT_API_URL": "http://worker-sees:4200/api"}
        listed = [{"name": k, "value": v} for k, v in (worker | configuration.env).items()]
        return {item["name"]: item["value"] for item in [*listed, *container["env"]]}  # last one wins

    env = pod_env({})
    assert env["PREFECT_API_URL"] == "http://worker-sees:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == default_uri
    env = pod_env({"env": {"MLFLOW_TRACKING_URI": "http://team-mlflow:5000", "EXTRA": "1"}})
    assert (env["MLFLOW_TRACKING_URI"], env["EXTRA"]) == ("http://team-mlflow:5000", "1")


def test_dockerfiles_pass_hadolint_and_the_training_image_is_layered_and_non_root() -> None:
    dockerfiles = sorted((INFRA / "docker").glob("*Dockerfile"))
    assert len(dockerfiles) == 2
    hadolint = [str(BIN / "hadolint"), "--no-color"]
    linted = subprocess.run([*hadolint, *map(str, dockerfiles)], capture_output=True, text=True, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    broken = "FROM python\nRUN apt-get install curl\n"
    rejected = subprocess.run([*hadolint, "-"], input=broken, capture_output=True, text=True, check=False)
    assert rejected.returncode != 0  # the linter is really looking

    lines = (INFRA / "docker" / "Dockerfile").read_text().splitlines()
    first_sync = next(i for i, line in enumerate(lines) if "uv sync" in line)
    lock_copy = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "uv.lock" in line)
    source_copy = next(i for i, line in enumerate(lines) if line.startswith("COPY components"))
    assert lock_copy < first_sync < source_copy, "dependencies must install before the source is copied"
    assert "--no-install-project" in lines[first_sync + 1] + lines[first_sync]
    user = [line for line in lines if line.startswith("USER ")]
    assert user
    assert user[-1].split()[1].split(":")[0] not in {"0", "root"}


def test_the_training_image_is_a_dvc_project_without_git(tmp_path: Path) -> None:
    """.dockerignore leaves ``.git`` out of the image, and DVC refuses a folder that is not a git
    checkout: ``python -m flows.pipeline`` in the image failed with ``SCMError``. What the Dockerfile
    copies, plus its ``dvc config`` command, is checked here to make a project DVC opens."""
    assert ".git" in (REPO / ".dockerignore").read_text().split()
    lines = (INFRA / "docker" / "Dockerfile").read_text().splitlines()
    setting = next(i for i, line in enumerate(lines) if "dvc config --local core.no_scm true" in line)
    copies = [
        (i, line.split()[1:])
        for i, line in enumerate(lines)
        if line.startswith("COPY ") and "--from" not in line
    ]
    assert max(i for i, _ in copies) < setting, "core.no_scm must be set once .dvc/config is in place"
    for _, (*sources, destination) in copies:
        for source in sources:
            target = (
                tmp_path / destination / Path(source).name
                if destination.endswith("/")
                else tmp_path / destination
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, target)

    dvc = [sys.executable, "-m", "dvc"]
    refused = subprocess.run([*dvc, "status"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert "not a git repository" in refused.stdout + refused.stderr
    subprocess.run([*dvc, "config", "--local", "core.no_scm", "true"], cwd=tmp_path, check=True)
    status = subprocess.run([*dvc, "status"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
