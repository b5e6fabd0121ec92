"""Evaluation: metrics against hand-computed values, the report files, refusals of bad model folders."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import validate_params
from components.errors import DataValidationError, ParamsError
from components.evaluation.evaluate import evaluate
from components.evaluation.inference import (
    MIN_TIMED_BATCHES,
    Predictions,
    predict,
)
from components.evaluation.metrics import classification_metrics, confusion_matrix
from components.evaluation.mistakes import errors_csv, most_confident_errors
from components.training.artifacts import write_model_manifest
from components.training.train import train
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 0, 1, 1, 1, 2, 2, 0, 0])
    # rows true, columns predicted; class 3 exists but is never seen nor predicted
    expected = np.array([[2, 1, 0, 0], [0, 2, 0, 0], [2, 0, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(labels, preds, 4), expected)

    summary, report = classification_metrics(labels, preds, ["a", "b", "c", "d"])
    # precision = diagonal / column sum, recall = diagonal / row sum, 0 where the sum is 0
    precision = [2 / 4, 2 / 3, 2 / 2, 0.0]
    recall = [2 / 3, 2 / 2, 2 / 4, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    assert summary["accuracy"] == pytest.approx(6 / 9)
    assert summary["precision_macro"] == pytest.approx(sum(precision) / 4)
    assert summary["recall_macro"] == pytest.approx(sum(recall) / 4)
    assert summary["f1_macro"] == pytest.approx(sum(f1) / 4)
    assert report["per_class"]["c"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 4}
    )
    assert report["confusion_matrix"] == expected.tolist()


def test_errors_are_the_most_confident_wrong_predictions_ties_by_index_at_most_the_limit() -> None:
    labels = np.array([0, 1, 1, 0, 2, 2, 1])
    classes = np.array([1, 1, 0, 2, 2, 0, 0])  # wrong at 0, 2, 3, 5, 6
    confidence = np.array([0.6, 0.99, 0.9, 0.6, 0.8, 0.95, 0.4], dtype=np.float32)
    assert most_confident_errors(labels, classes, confidence).tolist() == [5, 2, 0, 3, 6]
    assert most_confident_errors(labels, classes, confidence, limit=2).tolist() == [5, 2]
    assert most_confident_errors(labels, labels, confidence).tolist() == []

    texts = ["a", "b", 'said "no", then', "d", "e", "naïve, ünïcode", "g"]
    table = errors_csv(labels, classes, confidence, ["x", "y", "z"], texts)
    assert table.splitlines()[:3] == [
        "text,true_class,predicted_class,probability",
        '"naïve, ünïcode",z,x,0.950000',
        '"said ""no"", then",y,x,0.900000',
    ]
    rows = list(csv.reader(io.StringIO(table)))
    assert [row[0] for row in rows[1:]] == [texts[i] for i in (5, 2, 0, 3, 6)]


@pytest.fixture(scope="module")
def trained_mlp(digits_project: Path) -> Path:
    params = validate_params(tiny_params(max_epochs=2))
    out = digits_project / "models" / "eval-mlp"
    train(
        params,
        "mlp",
        digits_project / "data" / "prepared",
        out,
        work_root=digits_project / ".work",
        project_root=digits_project,
    )
    return out


def _evaluate(project: Path, model: Path, out: Path) -> dict[str, float]:
    params = validate_params(tiny_params(max_epochs=2))
    return evaluate(params, "mlp", project / "data" / "prepared", model, out, project_root=project)


def test_evaluation_writes_consistent_metrics_report_plot_data_and_picture(
    digits_project: Path, trained_mlp: Path, tmp_path: Path
) -> None:
    metrics = _evaluate(digits_project, trained_mlp, tmp_path / "report")
    report = json.loads((tmp_path / "report" / "classification_report.json").read_text())
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == metrics["test_images"] == 270
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert sum(c["support"] for c in report["per_class"].values()) == 270
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["samples_per_second"] == metrics["images_per_second"] > 0  # both keys for images
    assert metrics["test_samples"] == 270
    assert metrics["latency_ms_per_batch"] > 0
    assert metrics["batch_size"] == 270  # the batch actually timed, not evaluate.batch_size (1024)

    with (tmp_path / "report" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 270
    hits = sum(row["actual"] == row["predicted"] for row in rows)
    assert hits == np.trace(matrix)
    assert (tmp_path / "report" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # errors.csv exists for images too (a DVC output): the test row stands for the text.
    errors_file = tmp_path / "report" / "errors.csv"
    assert errors_file.read_text().splitlines()[0] == "index,true_class,predicted_class,probability"
    with errors_file.open(encoding="utf-8", newline="") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == min(20, 270 - hits)
    for row in errors:
        assert rows[int(row["index"])] == {"actual": row["true_class"], "predicted": row["predicted_class"]}
        assert row["true_class"] != row["predicted_class"]


def test_a_model_trained_on_other_data_is_refused(
    digits_project: Path, trained_mlp: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_mlp, model)
    info = json.loads((model / "train_info.json").read_text())
    info["data_version"] = "0" * 64
    (model / "train_info.json").write_text(json.dumps(info))
    write_model_manifest(model)  # as if trained so: not a file changed after training
    with pytest.raises(DataValidationError, match=r"trained on data version 0+.*re-run train@mlp"):
        _evaluate(digits_project, model, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_corrupt_weights_name_the_file_and_keep_the_previous_report(
    digits_project: Path, trained_mlp: Path, tmp_path: Path
) -> None:
    _evaluate(digits_project, trained_mlp, tmp_path / "report")
    before = {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()}
    model = tmp_path / "model"
    shutil.copytree(trained_mlp, model)
    (model / "weights.safetensors").write_bytes(b"not a safetensors file")
    write_model_manifest(model)  # the loader's own checks, past the manifest's
    with pytest.raises(DataValidationError, match=r"weights\.safetensors.*not a readable safetensors file"):
        _evaluate(digits_project, model, tmp_path / "report")
    assert {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()} == before

    # A model card whose config cannot build the network is named too, not a TypeError traceback.
    shutil.copyfile(trained_mlp / "weights.safetensors", model / "weights.safetensors")
    card = json.loads((model / "model.json").read_text())
    card["config"]["hidden_sizes"] = "abc"
    (model / "model.json").write_text(json.dumps(card))
    write_model_manifest(model)
    with pytest.raises(DataValidationError, match=r"model\.json.*mlp config that does not build"):
        _evaluate(digits_project, model, tmp_path / "report")
    assert {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()} == before


def test_a_tracking_server_away_fails_the_stage_and_leaves_every_report_file_as_it_was(
    digits_project: Path, trained_mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reports are written only once MLflow took them: a failed stage changes none of them
    (before, all four were replaced and then the stage failed, so DVC saw new outputs)."""
    from components.errors import TransientError

    _evaluate(digits_project, trained_mlp, tmp_path / "report")
    before = {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(TransientError):
        _evaluate(digits_project, trained_mlp, tmp_path / "report")
    assert {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left

    not_a_folder = tmp_path / "reports.txt"
    not_a_folder.write_text("mine")
    with pytest.raises(ParamsError, match=r"reports\.txt: exists and is not a folder"):
        _evaluate(digits_project, trained_mlp, not_a_folder)
    assert not_a_folder.read_text() == "mine"


def test_a_small_split_is_timed_over_several_batches_and_predicted_once() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x = torch.randn(10, 6)
    result = predict(model, x, batch_size=4)  # 3 batches per pass: two passes are timed
    assert result.classes.tolist() == model(x).argmax(1).tolist()
    assert len(result.batch_seconds) == 6 >= MIN_TIMED_BATCHES
    assert result.batch_samples == [4, 4, 2, 4, 4, 2]
    assert result.samples_per_second == pytest.approx(20 / sum(result.batch_seconds))
    expected = model(x).softmax(1).max(1).values.detach().numpy()
    np.testing.assert_allclose(result.confidence, expected, rtol=1e-6)


def test_latency_is_taken_over_full_size_batches_only() -> None:
    """Three passes over 260 images at batch 256: half the timed batches hold 4 images, and their
    times must not pull the per-batch median (a figure for batches of 256) down."""
    result = Predictions(
        classes=np.zeros(260, dtype=np.int64),
        confidence=np.ones(260, dtype=np.float32),
        batch_seconds=[0.010, 0.0001, 0.012, 0.0001, 0.014, 0.0001],
        batch_samples=[256, 4, 256, 4, 256, 4],
    )
    assert result.latency_ms["median"] == pytest.approx(12.0)
    assert result.latency_ms["p95"] == pytest.approx(14.0)
    assert result.samples_per_second == pytest.approx(780 / 0.0363)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("mlflow", "not-an-object", r"mlflow:"),
        ("data_version", None, r"data_version:"),
        ("parameters", -1, r"parameters:"),
        ("fit_seconds", "fast", r"fit_seconds:"),
    ],
)
def test_a_hand_edited_train_info_is_refused_naming_the_key_and_keeps_the_previous_report(
    digits_project: Path, trained_mlp: Path, tmp_path: Path, key: str, value: object, named: str
) -> None:
    """Before, ``"mlflow": "x"`` raised an AttributeError after the reports had been replaced."""
    from components.evaluation.summary import results_table

    _evaluate(digits_project, trained_mlp, tmp_path / "report")
    before = {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()}
    model = tmp_path / "models" / "mlp"
    shutil.copytree(trained_mlp, model)
    info = json.loads((model / "train_info.json").read_text())
    info[key] = value
    (model / "train_info.json").write_text(json.dumps(info))
    write_model_manifest(model)  # the contract's check, past the manifest's
    with pytest.raises(
        DataValidationError, match=rf"train_info\.json: must hold what the train stage wrote \({named}"
    ):
        _evaluate(digits_project, model, tmp_path / "report")
    assert {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()} == before

    # The end-of-run summary shows the bad file in its row instead of crashing.
    shutil.copytree(tmp_path / "report", tmp_path / "reports" / "mlp")
    row = results_table(["mlp"], tmp_path / "models", tmp_path / "reports").columns[1]._cells[0]
    assert str(row).startswith("unreadable:")
    assert "train_info.json" in str(row)
