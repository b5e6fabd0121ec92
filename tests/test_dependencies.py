"""The locked dependency set works together: torch on CPU, and Prefect 3.8's server on the pinned
FastAPI (newer FastAPI releases crash it at start-up with ``Body() got an unexpected keyword
argument 'min_items'``)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_torch_runs_on_cpu() -> None:
    import torch

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)  # (2, 3)
    assert torch.equal(x @ x.T, torch.tensor([[5.0, 14.0], [14.0, 50.0]]))
    assert tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)


@pytest.mark.slow
def test_prefect_server_starts_and_answers_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/prefect.db")
    from prefect.server.api.server import create_app
    from starlette.testclient import TestClient

    app = create_app(ephemeral=True, final=True)
    with TestClient(app) as client:
        response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() is True
