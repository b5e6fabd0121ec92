"""``compress@<arch>`` through the real stage function on the digits, tiny models, one epoch."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from components.compression.codec import quantise
from components.compression.compress import compress
from components.compression.folder import compressed_folder, is_accepted, load_compressed
from components.config import Architecture, validate_params
from components.evaluation.inference import predict
from components.training.artifacts import load_trained_model
from components.training.train import train
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")
FIGURES = (
    "accuracy", "f1_macro", "size_bytes", "parameters", "nonzero_parameters",
    "latency_ms_batch_1", "latency_ms_batch_1_p95", "latency_ms_batch_256", "latency_ms_batch_256_p95",
    "samples_per_second_batch_1", "samples_per_second_batch_256",
)  # fmt: skip


@pytest.fixture(scope="module")
def models(digits_project: Path) -> Path:
    """Tiny mlp and cnn trained for one epoch under ``digits_project/models``."""
    params = validate_params(tiny_params(max_epochs=1))
    for arch in ("mlp", "cnn"):
        out = digits_project / "models" / arch
        train(params, arch, digits_project / "data" / "prepared", out, work_root=digits_project / ".work",
              project_root=digits_project, progress_bar=False)  # fmt: skip
    return digits_project / "models"


def _compress(root: Path, arch: Architecture, **settings: object) -> dict[str, Any]:
    params = validate_params({**tiny_params(max_epochs=1), "compress": settings})
    models = root / "models"
    report = root / "reports" / arch / "compression.json"
    return compress(params, arch, root / "data" / "prepared", models / arch, compressed_folder(models, arch),
                    report, project_root=root)  # fmt: skip


@pytest.mark.parametrize(("arch", "method"), [("mlp", "dynamic_int8"), ("cnn", "static_int8")])
def test_auto_compression_shrinks_the_model_and_stores_int8_without_pickle(
    digits_project: Path, models: Path, arch: Architecture, method: str
) -> None:
    report = _compress(digits_project, arch, method="auto", max_accuracy_drop=0.05)
    on_disk = json.loads((digits_project / "reports" / arch / "compression.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["method"] == method
    assert report["threads"] == torch.get_num_threads()
    before, after = report["before"], report["after"]
    assert set(FIGURES) <= set(before)
    assert set(FIGURES) <= set(after)
    assert after["size_bytes"] < before["size_bytes"] / (2 if arch == "mlp" else 1.5)  # tiny: key names weigh
    assert report["accuracy_drop"] == pytest.approx(before["accuracy"] - after["accuracy"])
    assert report["accepted"] == (report["accuracy_drop"] <= 0.05)
    folder = compressed_folder(models, arch)
    assert is_accepted(folder)
    assert {p.suffix for p in folder.iterdir()} == {".json", ".safetensors"}
    float_model = load_trained_model(models / arch)
    back = load_compressed(folder, float_model).model
    x = torch.from_numpy(_test_x(digits_project))
    assert predict(back, x, 256).classes.tolist() == _classes(back, x)
    again = load_compressed(folder, load_trained_model(models / arch)).model
    with torch.inference_mode():
        assert torch.equal(back(x), again(x))
        if method == "dynamic_int8":  # deterministic: the in-memory transform gives the stored model
            assert torch.equal(quantise(copy.deepcopy(float_model.model), method)(x), back(x))
    from components.evaluation.metrics import classification_metrics

    summary, _ = classification_metrics(_test_labels(digits_project), predict(back, x, 256).classes, _names())
    assert summary["accuracy"] == pytest.approx(after["accuracy"])


def _prepared(root: Path):  # type: ignore[no-untyped-def]
    from components.data.prepared import load_prepared

    return load_prepared(root / "data" / "prepared")


def _test_x(root: Path):  # type: ignore[no-untyped-def]
    return _prepared(root).splits["test"].x


def _test_labels(root: Path):  # type: ignore[no-untyped-def]
    return _prepared(root).splits["test"].labels


def _names() -> list[str]:
    return [str(i) for i in range(10)]


def _classes(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    with torch.inference_mode():
        return model(x).argmax(dim=1).tolist()


def test_a_compression_losing_too_much_is_rejected_with_figures_and_no_model(
    digits_project: Path, models: Path
) -> None:
    report = _compress(digits_project, "mlp", method="prune", prune_amount=0.97, finetune_epochs=0,
                       max_accuracy_drop=0.0)  # fmt: skip
    assert report["after"]["nonzero_parameters"] < 0.1 * report["before"]["nonzero_parameters"]
    assert report["accuracy_drop"] > 0
    assert report["accepted"] is False
    assert "more than compress.max_accuracy_drop 0" in report["reason"]
    folder = compressed_folder(models, "mlp")
    assert [p.name for p in folder.iterdir()] == ["compression.json"]
    assert not is_accepted(folder)
    none = _compress(digits_project, "mlp", method="none")
    assert none["accepted"] is False
    assert "after" not in none
    assert "none" in none["reason"]
    static = _compress(digits_project, "mlp", method="static_int8")
    assert static["accepted"] is False
    assert "image cnn only" in static["reason"]


def test_an_accepted_compressed_cnn_is_registered_tagged_and_predicts_on_raw_pixels(
    digits_project: Path, models: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from components.data.normalize import Normalization
    from components.data.prepared import load_prepared
    from components.registry.register import raw_pixels, register_all

    _compress(digits_project, "cnn", method="static_int8", max_accuracy_drop=1.0)
    settings = {**tiny_params(max_epochs=1), "compress": {"max_accuracy_drop": 1.0}}
    settings["train"]["architectures"] = ["cnn"]
    params = validate_params(settings)
    prepared = digits_project / "data" / "prepared"
    report = register_all(params, models, prepared, digits_project / "reports" / "registration.json",
                          project_root=digits_project)  # fmt: skip
    decisions = report["decisions"]
    assert [d["architecture"] for d in decisions] == ["cnn", "cnn-compressed"]
    name, version = decisions[1]["model_name"], decisions[1]["version"]
    tags = MlflowClient().get_model_version(name, version).tags
    assert tags["compression"] == "static_int8"
    assert tags["architecture"] == "cnn"
    again = register_all(params, models, prepared, digits_project / "reports" / "again.json",
                         project_root=digits_project)  # fmt: skip
    assert [d["version"] for d in again["decisions"]] == [d["version"] for d in decisions]  # idempotent
    data = load_prepared(prepared)
    test = data.splits["test"]
    assert isinstance(data.stats, Normalization)
    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(raw_pixels(test, data.stats))
    compressed = load_compressed(compressed_folder(models, "cnn"), load_trained_model(models / "cnn")).model
    assert served["class_id"].tolist() == _classes(compressed, torch.from_numpy(test.x))


def test_a_text_lstm_compresses_to_int8_and_serves_raw_text(tmp_path: Path, tracking_uri: str) -> None:
    """Token models: the embedding stays float, the LSTM and Linear layers become int8, and the
    registered version takes raw strings like the float one."""
    import mlflow
    import pandas as pd

    from components.registry.register import register_all
    from tests.textproject import prepare_text_project

    project = prepare_text_project(tmp_path)
    settings = project.params.model_dump(mode="json")
    settings["train"]["architectures"] = ["lstm"]
    settings["train"]["max_epochs"] = 2
    settings["models"]["lstm"].update(hidden_size=16, dense_size=16, embedding_dim=16)
    settings["compress"].update(method="dynamic_int8", max_accuracy_drop=1.0)  # auto: none for the lstm
    params = validate_params(settings)
    models = tmp_path / "models"
    train(
        params, "lstm", project.prepared, models / "lstm", work_root=tmp_path / ".work", project_root=tmp_path
    )
    report = compress(params, "lstm", project.prepared, models / "lstm", compressed_folder(models, "lstm"),
                      tmp_path / "reports" / "lstm" / "compression.json", project_root=tmp_path)  # fmt: skip
    assert report["method"] == "dynamic_int8"
    assert report["accepted"] is True
    card = json.loads((compressed_folder(models, "lstm") / "compression.json").read_text())
    assert list(card["layout"]["lstm"]) == ["lstm"]  # the LSTM's int8 weights, stored by name
    registration = register_all(
        params, models, project.prepared, tmp_path / "registration.json", project_root=tmp_path
    )
    compressed = registration["decisions"][1]
    assert compressed["architecture"] == "lstm-compressed"
    test = _prepared(tmp_path).splits["test"]
    served = mlflow.pyfunc.load_model(f"models:/{compressed['model_name']}/{compressed['version']}")
    rows = served.predict(pd.DataFrame({"text": test.texts}))
    in_memory = load_compressed(compressed_folder(models, "lstm"), load_trained_model(models / "lstm")).model
    assert rows["class_id"].tolist() == _classes(in_memory, torch.from_numpy(test.x))
