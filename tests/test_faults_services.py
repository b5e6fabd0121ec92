"""Faults of the services around the pipeline: Prefect's ephemeral server, a tracking server that is
not there or stops answering, signals while a call hangs, and what the flow records when nothing ran."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from tests.conftest import REPO, Project


def test_the_ephemeral_server_starter_thread_waits_the_projects_timeout_unless_the_user_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect's settings live in a context variable a new thread does not inherit: the thread that
    starts the ephemeral server read Prefect's 20 s, and `make run` failed on a busy machine."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout

    from flows.pipeline import EPHEMERAL_SERVER_STARTUP_TIMEOUT_S, ephemeral_server_apart_from_ctrl_c

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
