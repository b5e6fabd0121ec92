"""A registered text model takes raw strings: registry, gate and batch prediction on a tiny text model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from components.config import dump_params
from components.data.prepared import load_prepared
from components.data.tokenize import encode, load_tokenizer
from components.errors import DataSourceError, DataValidationError
from components.evaluation.metrics import classification_metrics
from components.registry.decisions import Decision
from components.registry.judge import input_mismatch
from components.registry.package import TEXT_COLUMN
from components.registry.predict import predict_file
from components.registry.pyfunc_model import TEXT_COLUMN as WRAPPER_TEXT_COLUMN
from components.registry.register import CHAMPION, register
from components.training.artifacts import load_trained_model
from tests.conftest import REPO
from tests.textproject import MAX_LENGTH, TextProject, prepare_text_project

CLASSES = ["negative", "positive"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tracking_uri: str) -> TextProject:
    return prepare_text_project(tmp_path_factory.mktemp("text-project"))


@pytest.fixture(scope="module")
def trained(project: TextProject) -> Path:
    return project.train("models/mlp", max_epochs=20)


@pytest.fixture(scope="module")
def champion(project: TextProject, trained: Path) -> Decision:
    return register(project.params, "mlp", trained, project.prepared, project_root=project.root)


def _uri(decision: Decision) -> str:
    return f"models:/{decision.model_name}@{CHAMPION}"


def test_the_champion_predicts_class_names_from_raw_strings_as_the_trained_model_does(
    project: TextProject, trained: Path, champion: Decision
) -> None:
    assert champion.promoted
    model = mlflow.pyfunc.load_model(_uri(champion))
    test = load_prepared(project.prepared).splits["test"]
    assert test.texts is not None
    assert max(len(text.split()) for text in test.texts) > MAX_LENGTH  # some are cut, as preprocess cut them
    served = model.predict(pd.DataFrame({"text": test.texts}))
    with torch.no_grad():
        expected = load_trained_model(trained).model(torch.from_numpy(test.x)).argmax(dim=1).numpy()
    assert served["class_id"].tolist() == expected.tolist()
    assert served["class_name"].tolist() == [CLASSES[i] for i in expected]
    np.testing.assert_allclose(served[["prob_negative", "prob_positive"]].sum(axis=1), 1.0, rtol=1e-5)
    # The gate's number is what serving computes on the raw test strings.
    summary, _ = classification_metrics(test.labels, served["class_id"].to_numpy(), CLASSES)
    assert champion.value == pytest.approx(summary["accuracy"])
    assert champion.value > 0.7

    # Upper case is normalised away as preprocessing did (punctuation, unseen in training, is not
    # asserted on: it maps to [UNK], whose embedding never learned anything).
    clear = pd.DataFrame({"text": ["A GREAT superb film", "the awful terrible boring plot"]})
    assert model.predict(clear)["class_name"].tolist() == ["positive", "negative"]
    # A Series named like the column is taken too; the wrapper itself also takes a plain list.
    assert model.predict(clear["text"])["class_name"].tolist() == ["positive", "negative"]
    wrapper = model.unwrap_python_model()
    assert wrapper.predict(None, list(clear["text"]))["class_name"].tolist() == ["positive", "negative"]


def test_the_model_is_logged_with_a_text_signature_its_tokenizer_and_an_example(champion: Decision) -> None:
    uri = _uri(champion)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None
    assert info.signature.inputs.to_dict() == [{"type": "string", "name": "text", "required": True}]
    assert TEXT_COLUMN == WRAPPER_TEXT_COLUMN == "text"
    outputs = [column["name"] for column in info.signature.outputs.to_dict()]
    assert outputs == ["class_id", "class_name", "probability", "prob_negative", "prob_positive"]
    assert info.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(uri))
    example = json.loads((local / "serving_input_example.json").read_text())
    assert len(example["dataframe_split"]["data"]) == 3
    requirements = (local / "requirements.txt").read_text()
    assert "tokenizers==" in requirements
    assert "cloudpickle" not in requirements
    assert (local / "artifacts" / "tokenizer.json").is_file()
    assert not list(local.rglob("*.pkl"))


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("", "empty text"),
        ("  \t ", "empty text"),
        (None, "missing or not a string"),
        (7, "missing or not a string"),
    ],
)
def test_a_row_without_a_text_is_an_invalid_parameter_naming_the_row(
    champion: Decision, bad: object, rule: str
) -> None:
    model = mlflow.pyfunc.load_model(_uri(champion))
    with pytest.raises(MlflowException, match=rf"input row 1 \(counting from 0\): {rule}") as refused:
        model.predict(pd.DataFrame({"text": ["a good film", bad, "fine"]}))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"


def test_the_registered_model_loads_and_predicts_without_this_project(
    champion: Decision, tmp_path: Path
) -> None:
    """The shipped encoding, not the project's tokenize.py, runs in a process without ``components``."""
    uri = _uri(champion)
    texts = ["a lovely, excellent movie", "dull and worse", "unheard-of words: zyx"]
    script = f"""
import sys
sys.modules["components"] = None  # any import of this project now raises ImportError
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({uri!r})
print(model.predict(pd.DataFrame({{"text": {texts!r}}}))["class_id"].tolist())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]
    in_process = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))
    assert json.loads(done.stdout.strip().splitlines()[-1]) == in_process["class_id"].tolist()


def test_the_shipped_tokenizer_is_checked_and_encodes_as_preprocess_did(
    project: TextProject, champion: Decision, tmp_path: Path
) -> None:
    local = Path(mlflow.artifacts.download_artifacts(_uri(champion), dst_path=str(tmp_path)))
    shipped = local / "artifacts" / "tokenizer.json"
    test = load_prepared(project.prepared).splits["test"]
    assert test.texts is not None
    ids, _ = encode(load_tokenizer(shipped), test.texts, MAX_LENGTH)
    assert np.array_equal(ids, test.x)
    shipped.write_text(shipped.read_text().replace('"good"', '"gold"'))
    with pytest.raises(ValueError, match=r"tokenizer\.json: sha256 does not match the model folder"):
        mlflow.pyfunc.load_model(str(local))


def test_the_gate_judges_text_models_on_the_raw_test_strings(
    project: TextProject, champion: Decision
) -> None:
    weaker = project.train("models/mlp-1", max_epochs=1)
    decision = register(project.params, "mlp", weaker, project.prepared, project_root=project.root)
    assert not decision.promoted
    assert decision.previous_champion == champion.version
    assert decision.previous_champion_value == pytest.approx(champion.value)
    assert decision.value < champion.value
    assert "does not beat" in decision.reason
    # A champion of the other kind cannot be judged on this data, and says why.
    uri = f"models:/{champion.model_name}/{champion.version}"
    texts = pd.DataFrame({"text": ["good"]})
    assert input_mismatch(uri, texts, CLASSES) is None
    assert input_mismatch(uri, np.zeros((1, 1, 8, 8), np.float32), CLASSES) == (
        "it takes texts, this data has images"
    )
    assert "classes" in str(input_mismatch(uri, texts, CLASSES[::-1]))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_batch_prediction_of_a_txt_and_a_tsv_file(champion: Decision, tmp_path: Path) -> None:
    uri = f"models:/{champion.model_name}/{champion.version}"
    texts = ['A "great", superb film', "awful, terrible", "fine acting really"]
    txt = tmp_path / "new.txt"
    txt.write_text("\r\n".join(texts) + "\r\n", encoding="utf-8")
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))
    predict_file(uri, txt, tmp_path / "txt.csv", batch_size=2)
    rows = _read_csv(tmp_path / "txt.csv")
    assert list(rows[0]) == [
        "id",
        "text",
        "class_id",
        "class_name",
        "probability",
        *[f"prob_{c}" for c in CLASSES],
    ]
    assert [row["id"] for row in rows] == ["line 1", "line 2", "line 3"]
    assert [row["text"] for row in rows] == texts  # quotes and commas survive the CSV
    assert [row["class_name"] for row in rows] == expected["class_name"].tolist()
    assert [float(row["probability"]) for row in rows] == pytest.approx(
        expected["probability"].tolist(), abs=1e-5
    )

    tsv = tmp_path / "new.tsv"
    tsv.write_text(
        "id\treview\n" + "".join(f"{i}\t{text}\n" for i, text in enumerate(texts)), encoding="utf-8"
    )
    predict_file(uri, tsv, tmp_path / "tsv.csv", text_column="review")
    rows = _read_csv(tmp_path / "tsv.csv")
    assert [row["id"] for row in rows] == ["line 2", "line 3", "line 4"]  # the header is line 1
    assert [row["class_name"] for row in rows] == expected["class_name"].tolist()
    with pytest.raises(
        DataValidationError, match=r"new\.tsv, line 1: no column 'text' \(data\.text_column\)"
    ):
        predict_file(uri, tsv, tmp_path / "no-column.csv")
    assert not (tmp_path / "no-column.csv").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("blank.txt", b"a good film\n\nbad\n", r"blank\.txt, line 2: empty text"),
        ("spaces.tsv", b"text\nfine\n   \n", r"spaces\.tsv, line 3: empty text"),
        (
            "latin1.txt",
            "good\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"),
            r"latin1\.txt, line 2: not valid UTF-8",
        ),
        ("empty.txt", b"", r"empty\.txt: holds no texts to predict on"),
    ],
)
def test_a_bad_text_file_is_refused_naming_file_and_line(
    champion: Decision, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    uri = f"models:/{champion.model_name}/{champion.version}"
    with pytest.raises(DataValidationError, match=message):
        predict_file(uri, tmp_path / name, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_a_text_model_refuses_a_folder_or_another_format(champion: Decision, tmp_path: Path) -> None:
    uri = f"models:/{champion.model_name}/{champion.version}"
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(
        DataSourceError, match=r"x\.npz: a text model predicts on a \.tsv, .* file, not \.npz"
    ):
        predict_file(uri, tmp_path / "x.npz", tmp_path / "out.csv")
    with pytest.raises(DataSourceError, match=r"is a folder; a text model predicts on one"):
        predict_file(uri, tmp_path, tmp_path / "out.csv")


def test_the_predict_cli_on_text_files_and_exit_2_on_a_bad_line(
    project: TextProject, champion: Decision, tracking_uri: str, tmp_path: Path
) -> None:
    params = tmp_path / "params.yaml"
    dump_params(project.params, params)
    (tmp_path / "good.txt").write_text("superb lovely film\nboring awful plot\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_text("superb\n\nboring\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking_uri, "COLUMNS": "200"}

    def run(source: str, out: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipelines.predict", source, "--out", out, "--params", str(params)]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)

    good = run("good.txt", "good.csv")
    assert good.returncode == 0, good.stderr[-3000:]
    assert f"predict: 2 texts with models:/{champion.model_name}/" in good.stderr
    assert [row["class_name"] for row in _read_csv(tmp_path / "good.csv")] == ["positive", "negative"]
    bad = run("bad.txt", "bad.csv")
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "bad.txt, line 2: empty text (empty or whitespace only)" in bad.stderr
    assert not (tmp_path / "bad.csv").exists()
