"""The explain stage on tiny trained models: its files, figures, MLflow record and refusals."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from components.config import Params, validate_params
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from components.errors import DataValidationError
from components.evaluation.evaluate import evaluate
from components.interpret.explain import explain
from components.training.train import train
from tests import datagen
from tests.conftest import default_params, tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = {"samples_per_class": 4, "steps": 16}  # a few seconds for the whole file


def _params(**explain: Any) -> Params:
    raw = tiny_params(max_epochs=1)
    raw["explain"].update(SMALL, **explain)
    return validate_params(raw)


@pytest.fixture(scope="module")
def trained(digits_project: Path) -> Path:
    """mlp and cnn trained for an epoch on the digits and evaluated (explain reads the metrics)."""
    params, prepared = _params(), digits_project / "data" / "prepared"
    for arch in ("mlp", "cnn"):
        model = digits_project / "models" / arch
        train(params, arch, prepared, model, work_root=digits_project / ".work", project_root=digits_project)
        evaluate(
            params, arch, prepared, model, digits_project / "reports" / arch, project_root=digits_project
        )
    return digits_project


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_images_get_a_grid_deletion_figures_and_a_logged_record(trained: Path, arch: str) -> None:
    report = explain(_params(), arch, trained / "data/prepared", trained / "models" / arch,
                     trained / "reports" / arch, project_root=trained)  # fmt: skip
    folder = trained / "reports" / arch / "explain"
    assert (folder / "attributions.png").read_bytes()[:8] == PNG
    assert json.loads((trained / "reports" / arch / "explain.json").read_text()) == report
    ig = report["integrated_gradients"]
    assert math.isfinite(ig["max_abs_delta"])
    assert ig["max_abs_delta"] <= 0.01 or ig["steps_used"] == 1024  # refined up to max_steps
    assert report["samples"] == 40  # 4 per class, 10 classes
    for method in ("integrated_gradients", "saliency"):
        deletion = report[method]["deletion"]
        for key in ("accuracy", "top_accuracy", "random_accuracy"):
            assert 0.0 <= deletion[key] <= 1.0
        assert deletion["faithful"] == (deletion["top_drop"] > max(deletion["random_drop"], 0.0))
    assert report["faithful"] == ig["deletion"]["faithful"]
    assert 0.0 <= report["evaluate_accuracy"] <= 1.0

    run_id = json.loads((trained / "models" / arch / "train_info.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "explain")}
    assert {"explain/attributions.png", "explain/explain.json"} <= logged
    metrics = client.get_run(run_id).data.metrics
    assert metrics["explain_integrated_gradients_max_abs_delta"] == pytest.approx(ig["max_abs_delta"])


def test_disabled_writes_a_report_saying_so_and_a_missing_evaluation_is_named(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    report = explain(_params(enabled=False), "mlp", trained / "data/prepared", trained / "models/mlp", out)
    assert report == json.loads((out / "explain.json").read_text())
    assert report["enabled"] is False
    assert [p.name for p in (out / "explain").iterdir()] == ["DISABLED.txt"]

    with pytest.raises(DataValidationError, match=r"metrics\.json.*run evaluate@mlp first"):
        explain(_params(), "mlp", trained / "data/prepared", trained / "models/mlp", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def _sentence(rng: random.Random, label: int) -> str:
    good, bad, filler = ["good", "great", "superb"], ["bad", "awful", "dull"], ["the", "film", "was", "a"]
    words = rng.choices(filler, k=3) + rng.choices(good if label else bad, k=2)
    rng.shuffle(words)
    return " ".join(words)


def test_text_gets_top_tokens_and_an_escaped_page_of_its_mistakes(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows: list[tuple[str, str | int]] = [(_sentence(rng, i % 2), i % 2) for i in range(120)]
    tests: list[tuple[str, str | int]] = [
        (f'<b>"{i}"</b> & {_sentence(rng, i % 2)}', 1 - i % 2) for i in range(12)
    ]
    datagen.write_text_file(tmp_path / "src" / "train.csv", rows)
    datagen.write_text_file(tmp_path / "src" / "test.csv", tests)  # labelled against their words
    raw = tiny_params(max_epochs=1, learning_rate=0.02)
    raw["data"].update(source="text", path="src")
    raw["models"]["cnn"] = default_params()["models"]["cnn"]  # its tiny sizes are image-only keys
    raw["explain"].update(SMALL)
    params = validate_params(raw)
    prepared = tmp_path / "data" / "prepared"
    ingest(params.data, tmp_path / "data" / "raw", tmp_path)
    preprocess(params.preprocess, tmp_path / "data" / "raw", prepared)
    model, reports = tmp_path / "models" / "mlp", tmp_path / "reports" / "mlp"
    train(params, "mlp", prepared, model, work_root=tmp_path / ".work", project_root=tmp_path)
    evaluate(params, "mlp", prepared, model, reports, project_root=tmp_path)

    report = explain(params, "mlp", prepared, model, reports, project_root=tmp_path)
    ig = report["integrated_gradients"]
    assert ig["deleted_tokens_become"] == "[UNK]"
    assert math.isfinite(ig["max_abs_delta"])
    top = json.loads((reports / "explain" / "top_tokens.json").read_text())["per_class"]
    assert set(top) == {"0", "1"}
    page = (reports / "explain" / "wrong_predictions.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;&quot;" in page  # the texts' markup shown as text
    assert '<b>"' not in page
    assert "<script" not in page
    assert (reports / "explain" / "attributions.png").read_bytes()[:8] == PNG
