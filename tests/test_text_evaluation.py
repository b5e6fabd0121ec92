"""Evaluation of a text model: the same reports as images, samples/s, and errors.csv."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import validate_params
from components.data.ingest import ingest
from components.data.prepared import load_prepared
from components.data.preprocess import preprocess
from components.evaluation.evaluate import evaluate
from components.training.train import train
from tests import datagen
from tests.conftest import default_params, tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")

POSITIVE = ["good", "great", "fine", "lovely", "superb", "excellent", "nice"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull", "worse"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "actors", "it", "film"]


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.choices(FILLER, k=rng.randint(2, 6)) + rng.choices(POSITIVE if label else NEGATIVE, k=2)
    rng.shuffle(words)
    return " ".join(words)


def _write_source(folder: Path) -> list[str]:
    """train.csv of clear sentences; test.csv whose sentences each hold a comma, a quote and
    non-ASCII text, most of them labelled against their words (so the model gets them wrong)."""
    rng = random.Random(0)
    train_rows: list[tuple[str, str | int]] = [(_sentence(rng, i % 2), i % 2) for i in range(300)]
    test_rows: list[tuple[str, str | int]] = []
    for i in range(40):
        label = i % 2
        text = f'№{i} naïve café — "ça", {_sentence(rng, label)}'  # unknown tokens first: the lstm reads on
        test_rows.append((text, 1 - label if i < 32 else label))
    datagen.write_text_file(folder / "train.csv", train_rows)
    datagen.write_text_file(folder / "test.csv", test_rows)
    return [text for text, _ in test_rows]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, float]]:
    """A tiny lstm trained and evaluated on the text folder; (project root, test texts, metrics)."""
    root = tmp_path_factory.mktemp("text-eval")
    texts = _write_source(root / "src")
    raw = tiny_params(max_epochs=5, learning_rate=0.01)
    raw["data"].update(source="text", path="src")
    raw["models"]["cnn"] = default_params()["models"]["cnn"]  # its tiny sizes are image-only keys
    params = validate_params(raw)
    prepared = root / "data" / "prepared"
    ingest(params.data, root / "data" / "raw", root)
    preprocess(params.preprocess, root / "data" / "raw", prepared)
    model = root / "models" / "lstm"
    train(params, "lstm", prepared, model, work_root=root / ".work", project_root=root)
    metrics = evaluate(params, "lstm", prepared, model, root / "reports" / "lstm", project_root=root)
    return root, texts, metrics


def test_text_evaluation_reports_samples_per_second_and_the_usual_files(
    text_run: tuple[Path, list[str], dict[str, float]],
) -> None:
    root, texts, metrics = text_run
    reports = root / "reports" / "lstm"
    assert json.loads((reports / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["samples_per_second"] > 0
    assert metrics["test_samples"] == len(texts) == 40
    assert "images_per_second" not in metrics
    assert "test_images" not in metrics
    report = json.loads((reports / "classification_report.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == 40
    assert (reports / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in reports.iterdir()) == [
        "classification_report.json",
        "confusion_matrix.png",
        "errors.csv",
        "metrics.json",
        "predictions.csv",
        "privacy.json",
    ]


def test_errors_csv_lists_the_most_confident_mistakes_with_their_exact_texts(
    text_run: tuple[Path, list[str], dict[str, float]],
) -> None:
    root, texts, _ = text_run
    reports = root / "reports" / "lstm"
    raw_bytes = (reports / "errors.csv").read_bytes()
    assert raw_bytes.decode("utf-8").splitlines()[0] == "text,true_class,predicted_class,probability"
    with (reports / "errors.csv").open(encoding="utf-8", newline="") as f:
        errors = list(csv.DictReader(f))
    with (reports / "predictions.csv").open(encoding="utf-8", newline="") as f:
        predictions = list(csv.DictReader(f))
    order = load_prepared(root / "data" / "prepared").splits["test"].texts  # predictions.csv's rows
    assert order is not None
    assert sorted(order) == sorted(texts)
    wrong = [i for i, row in enumerate(predictions) if row["actual"] != row["predicted"]]
    assert len(wrong) > 20  # the flipped test labels: more mistakes than the file keeps
    assert len(errors) == 20
    probabilities = [float(row["probability"]) for row in errors]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.5 <= p <= 1 for p in probabilities)  # the predicted class of two is the likelier
    for row in errors:
        assert row["text"] in texts  # exactly as in test.csv: comma, quotes, non-ASCII kept
        assert {",", '"', "ç", "№"} <= set(row["text"])
        i = order.index(row["text"])
        assert row["true_class"] != row["predicted_class"]
        assert predictions[i] == {"actual": row["true_class"], "predicted": row["predicted_class"]}
    assert (
        b'na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 ""\xc3\xa7a"",' in raw_bytes
    )  # quotes doubled, UTF-8 (no escapes)


def test_errors_csv_is_logged_with_the_other_reports_to_the_training_run(
    text_run: tuple[Path, list[str], dict[str, float]],
) -> None:
    root, _, _ = text_run
    info = json.loads((root / "models" / "lstm" / "train_info.json").read_text())
    client = MlflowClient()
    run_id = info["mlflow"]["run_id"]
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
    assert {"errors.csv", "metrics.json", "predictions.csv", "confusion_matrix.png"} <= logged
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test_samples_per_second"] > 0
    assert metrics["test_samples"] == 40
