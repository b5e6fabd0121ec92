"""Helpers for tests that start real servers on loopback: free ports, bounded waits, clean stops."""

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

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    """Poll ``check`` until it is true; fail if ``process`` exits first or ``timeout`` passes."""
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


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


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


def service_env(tmp_path: Path, mlflow_uri: str, prefect_api: str) -> dict[str, str]:
    """The environment of a process that talks to these servers (telemetry off, its own Prefect home)."""
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
    return env


def mlflow_server_command(port: int, backend_uri: str, artifacts: Path) -> list[str]:
    return [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts), "--serve-artifacts",
    ]  # fmt: skip


def prefect_server_command(port: int) -> list[str]:
    return [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def serve_command(project: Path, interval_s: int) -> list[str]:
    """The deployment served from one process, every ``interval_s`` instead of the cron schedule."""
    return [
        sys.executable, "-m", "flows.deploy", "serve", "--project-root", str(project),
        "--interval", str(interval_s),
    ]  # fmt: skip


def completed_flow_runs(api: str) -> list[dict[str, Any]]:
    return list(
        post_json(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    )


def completed_scheduled_runs(api: str) -> int:
    """Completed runs of a deployment that the scheduler created."""
    return sum(
        1 for run in completed_flow_runs(api) if run.get("deployment_id") and run.get("auto_scheduled")
    )
