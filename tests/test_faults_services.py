"""Faults of the services around the pipeline: Prefect's ephemeral server, a tracking server that is
not there or stops answering, signals while a call hangs, and what the flow records when nothing ran."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Project, tiny_params
from tests.servers import free_port, started


def test_the_ephemeral_server_starter_thread_waits_the_projects_timeout_unless_the_user_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect's settings live in a context variable a new thread does not inherit: the thread that
    starts the ephemeral server read Prefect's 20 s, and `make run` failed on a busy machine."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout

    from flows.ephemeral import EPHEMERAL_SERVER_STARTUP_TIMEOUT_S, ephemeral_server_apart_from_ctrl_c

    seen: list[tuple[str, int]] = []

    def start(self: SubprocessASGIServer, timeout_s: int | None = None) -> None:  # where Prefect reads it
        seen.append((threading.current_thread().name, timeout.value()))

    monkeypatch.setattr(SubprocessASGIServer, "start", start)
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    ephemeral = {PREFECT_SERVER_EPHEMERAL_ENABLED: True}
    with temporary_settings(updates=ephemeral, restore_defaults={PREFECT_API_URL}):
        with ephemeral_server_apart_from_ctrl_c():
            pass
        # The user's own value, from a profile:
        with temporary_settings(updates={timeout: 7}), ephemeral_server_apart_from_ctrl_c():
            pass
    assert seen == [
        ("prefect-ephemeral-server", EPHEMERAL_SERVER_STARTUP_TIMEOUT_S),
        ("prefect-ephemeral-server", 7),
    ]


@pytest.mark.parametrize(
    ("params", "options", "named"),
    [
        ({"train": {"max_epochs": 0}}, [], "train.max_epochs"),
        ({}, ["--set", "train.batch_size=-4"], "train.batch_size"),
    ],
)
def test_the_flow_cli_refuses_bad_settings_in_one_line_before_starting_prefects_server(
    project: Project, params: dict[str, dict[str, Any]], options: list[str], named: str
) -> None:
    """`make run` with a bad params.yaml started Prefect's ephemeral server first (up to a minute on a
    busy machine) and printed a Prefect traceback before the clean message."""
    project.write_params(**params)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--project-root", str(project.root), *options],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "flow failed:" in output, output
    assert f"{named}: Input should be greater than" in output
    assert "Traceback" not in output
    assert "Starting temporary server" not in output  # what Prefect logs as it starts its server


class _AnswersOnlyHealth(BaseHTTPRequestHandler):
    """A tracking server that accepts every connection, answers ``/health`` and nothing else: each
    MLflow call waits for an answer that never comes (a server hung, or a network dropping replies)."""

    asked: threading.Event
    released: threading.Event

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/health"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.hang()

    def do_POST(self) -> None:
        self.hang()

    def hang(self) -> None:
        type(self).asked.set()
        type(self).released.wait(300)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextlib.contextmanager
def hung_tracking_server() -> Iterator[tuple[str, threading.Event]]:
    """``(uri, asked)``: ``asked`` is set once an MLflow call (not the health check) came in."""
    handler = type(
        "Handler", (_AnswersOnlyHealth,), {"asked": threading.Event(), "released": threading.Event()}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.asked
    finally:
        handler.released.set()
        server.shutdown()
        server.server_close()


def _wait_exit(process: subprocess.Popen[bytes], within_s: float) -> float:
    """Seconds until ``process`` exited; fails after ``within_s``."""
    start = time.monotonic()
    try:
        process.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {within_s:.0f} s after SIGTERM")
    return time.monotonic() - start


def test_sigterm_ends_the_flow_within_10_s_while_mlflow_calls_hang(project: Project, tmp_path: Path) -> None:
    """SIGTERM to the flow's process group (SLURM, a closed terminal) while a tracking call waits for
    a server that does not answer: the process was still alive two minutes later, retrying MLflow
    and then Prefect's calls to its own server, stopped by the same signal."""
    from components.errors import EXIT_PREEMPTED

    with hung_tracking_server() as (uri, asked):
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
        env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        env.pop("PREFECT_API_URL", None)
        log = tmp_path / "flow.log"
        command = [
            sys.executable,
            "-m",
            "flows.pipeline",
            "--project-root",
            str(project.root),
            "--no-summary",
        ]
        with started(command, log, project.root, env) as flow:
            deadline = time.monotonic() + 240  # Prefect's server start, ingest and preprocess first
            while not asked.is_set() and time.monotonic() < deadline and flow.poll() is None:
                asked.wait(1)
            assert asked.is_set(), log.read_text()
            os.killpg(flow.pid, signal.SIGTERM)
            took = _wait_exit(flow, 60)
        output = log.read_text()
        assert took < 10, f"{took:.1f} s after SIGTERM:\n{output}"
        assert flow.returncode in (EXIT_PREEMPTED, -signal.SIGTERM), output


def test_a_tracking_server_that_is_not_there_is_reported_within_30_s_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection refused is immediate, yet MLflow retried every call for about 4 minutes."""
    from components.tracking import Tracker
    from components.tracking_server import TrackingUnavailable

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as refused:
        Tracker.open("digits", tmp_path)
    assert time.monotonic() - start < 30
    assert f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable: connection refused" in str(
        refused.value
    )
    assert "\n" not in str(refused.value)


def test_a_stage_exits_75_naming_a_tracking_server_that_is_not_there(
    digits_project: Path, tmp_path: Path
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(max_epochs=1), sort_keys=False))
    uri = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "--arch", "mlp",
         "--prepared", str(digits_project / "data" / "prepared"),
         "--out", str(tmp_path / "models" / "mlp"), "--work", str(tmp_path / ".work")],
        cwd=tmp_path, capture_output=True, text=True, timeout=150, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300", "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert result.returncode == 75, result.stderr
    assert (
        f"train@mlp failed: MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()
