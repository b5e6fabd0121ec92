"""``mlflow models serve`` of a registered text champion: raw strings over REST, class names back."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from components.registry.register import CHAMPION, register
from tests.conftest import empty_mlflow_store
from tests.servers import BIN, free_port, http_ok, started, wait_for
from tests.textproject import prepare_text_project


def _invoke(port: int, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_served_text_champion_answers_raw_strings_and_refuses_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = empty_mlflow_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    project = prepare_text_project(tmp_path / "project")
    decision = register(
        project.params,
        "mlp",
        project.train("models/mlp", max_epochs=20),
        project.prepared,
        project_root=project.root,
    )
    texts = ["A GREAT superb film", "the awful terrible boring plot", "fine"]
    model_uri = f"models:/{decision.model_name}@{CHAMPION}"
    local = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": texts}))
    port = free_port()
    command = [
        str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--host", "127.0.0.1", "--port", str(port),
        "--env-manager", "local", "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri}
    env.pop("PYTHONPATH", None)  # the served model needs nothing from this project
    with started(command, tmp_path / "serve.log", tmp_path, env) as process:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 180, "mlflow models serve", process)
        split = _invoke(port, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        inputs = _invoke(port, {"inputs": {"text": texts}})
        with pytest.raises(urllib.error.HTTPError) as refused:
            _invoke(port, {"dataframe_split": {"columns": ["text"], "data": [["good"], [""]]}})
        error = json.loads(refused.value.read())
    names = [row["class_name"] for row in split["predictions"]]
    assert names == local["class_name"].tolist()
    assert names[:2] == ["positive", "negative"]
    assert [row["class_name"] for row in inputs["predictions"]] == names
    assert [row["probability"] for row in split["predictions"]] == pytest.approx(
        local["probability"].tolist(), abs=1e-6
    )
    assert refused.value.code == 400, error
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "input row 1 (counting from 0): empty text" in error["message"]
