"""The locked dependency set works together: torch on CPU, and a real Prefect 3.8 server on the
pinned FastAPI (newer FastAPI releases crash it at start-up with ``Body() got an unexpected keyword
argument 'min_items'``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def test_torch_runs_on_cpu() -> None:
    import torch

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)  # (2, 3)
    assert torch.equal(x @ x.T, torch.tensor([[5.0, 14.0], [14.0, 50.0]]))
    assert tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_prefect_server_starts_and_answers_health(tmp_path: Path) -> None:
    """``prefect server start`` on loopback comes up and answers ``/api/health``."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        "PREFECT_UI_ENABLED": "false",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    body = response.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == "true", (tmp_path / "server.log").read_text()[-3000:]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
