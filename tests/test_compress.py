"""``compress@<arch>`` through the real stage function on the digits, tiny models, one epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

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
    "samples_per_second_batch_1", "samples_per_second_batch_256", "rows_changed_by_batch",
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


@pytest.mark.parametrize(("arch", "method"), [("mlp", "static_int8"), ("cnn", "static_int8")])
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
        # fixed activation ranges: each row's logits do not depend on the rows batched with it
        assert torch.equal(back(x), torch.cat([back(rows) for rows in x.split(7)]))
    assert after["rows_changed_by_batch"] == 0
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
    dynamic = _compress(digits_project, "mlp", method="dynamic_int8", max_accuracy_drop=1.0)
    assert dynamic["accepted"] is False  # batch-dependent: measured, never registered
    assert dynamic["reason"].startswith("compress.method dynamic_int8 quantises the activations")
    assert dynamic["after"]["size_bytes"] < dynamic["before"]["size_bytes"]
    assert [p.name for p in folder.iterdir()] == ["compression.json"]


def _same_classes_in_any_batching(served: Any, inputs: Any) -> list[int]:
    """The served classes of ``inputs`` in one call; asserts chunks of 7 and single rows (the first
    20) give each row the same class: a row's answer must not depend on the rows sent with it."""
    at_once = served.predict(inputs)["class_id"].tolist()
    chunks = [served.predict(inputs[start : start + 7]) for start in range(0, len(inputs), 7)]
    assert [c for chunk in chunks for c in chunk["class_id"].tolist()] == at_once
    singly = [served.predict(inputs[row : row + 1])["class_id"].item() for row in range(20)]
    assert singly == at_once[:20]
    return at_once


def test_accepted_compressed_models_are_registered_tagged_and_serve_rows_independently(
    digits_project: Path, models: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from components.data.normalize import Normalization
    from components.data.prepared import load_prepared
    from components.registry.judge import raw_pixels
    from components.registry.register import register_all

    reports = {
        arch: _compress(digits_project, arch, method="auto", max_accuracy_drop=1.0) for arch in ("mlp", "cnn")
    }
    settings = {**tiny_params(max_epochs=1), "compress": {"max_accuracy_drop": 1.0}}
    settings["train"]["architectures"] = ["mlp", "cnn"]
    params = validate_params(settings)
    prepared = digits_project / "data" / "prepared"
    report = register_all(params, models, prepared, digits_project / "reports" / "registration.json",
                          project_root=digits_project)  # fmt: skip
    decisions = report["decisions"]
    assert [d["architecture"] for d in decisions] == ["mlp", "mlp-compressed", "cnn", "cnn-compressed"]
    again = register_all(params, models, prepared, digits_project / "reports" / "again.json",
                         project_root=digits_project)  # fmt: skip
    assert [d["version"] for d in again["decisions"]] == [d["version"] for d in decisions]  # idempotent
    data = load_prepared(prepared)
    test = data.splits["test"]
    assert isinstance(data.stats, Normalization)
    for arch, decision in (("mlp", decisions[1]), ("cnn", decisions[3])):
        name, version = decision["model_name"], decision["version"]
        tags = MlflowClient().get_model_version(name, version).tags
        assert (tags["compression"], tags["architecture"]) == ("static_int8", arch)
        # the stage's figure and the gate's score: the same model on the same test rows
        assert decision["value"] == pytest.approx(reports[arch]["after"]["accuracy"], abs=1e-12)
        served = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        classes = _same_classes_in_any_batching(served, raw_pixels(test, data.stats))
        compressed = load_compressed(compressed_folder(models, arch), load_trained_model(models / arch)).model
        assert classes == _classes(compressed, torch.from_numpy(test.x))


def test_a_text_lstm_is_pruned_not_int8_and_serves_raw_text(tmp_path: Path, tracking_uri: str) -> None:
    """Token models: auto keeps no compressed copy, dynamic int8 is measured but not kept (its
    classes depend on the batch), static int8 does not apply; a pruned one serves raw strings."""
    import mlflow
    import pandas as pd

    from components.registry.register import register_all
    from tests.textproject import prepare_text_project

    project = prepare_text_project(tmp_path)
    settings = project.params.model_dump(mode="json")
    settings["train"]["architectures"] = ["lstm"]
    settings["train"]["max_epochs"] = 2
    settings["models"]["lstm"].update(hidden_size=16, dense_size=16, embedding_dim=16)
    models = tmp_path / "models"

    def run(method: str) -> dict[str, Any]:
        settings["compress"].update(method=method, max_accuracy_drop=1.0, finetune_epochs=1)
        params = validate_params(settings)
        report = tmp_path / "reports" / "lstm" / "compression.json"
        return compress(params, "lstm", project.prepared, models / "lstm", compressed_folder(models, "lstm"),
                        report, project_root=tmp_path)  # fmt: skip

    train(validate_params(settings), "lstm", project.prepared, models / "lstm", work_root=tmp_path / ".work",
          project_root=tmp_path)  # fmt: skip
    assert run("auto")["method"] == "none"
    dynamic = run("dynamic_int8")
    assert dynamic["accepted"] is False
    assert "compress.method dynamic_int8" in dynamic["reason"]
    assert "image mlp and cnn only, not the text lstm" in run("static_int8")["reason"]
    assert run("prune")["accepted"] is True
    registration = register_all(
        validate_params(settings),
        models,
        project.prepared,
        tmp_path / "registration.json",
        project_root=tmp_path,
    )
    compressed = registration["decisions"][1]
    assert compressed["architecture"] == "lstm-compressed"
    test = _prepared(tmp_path).splits["test"]
    served = mlflow.pyfunc.load_model(f"models:/{compressed['model_name']}/{compressed['version']}")
    classes = _same_classes_in_any_batching(served, pd.DataFrame({"text": test.texts}))
    in_memory = load_compressed(compressed_folder(models, "lstm"), load_trained_model(models / "lstm")).model
    assert classes == _classes(in_memory, torch.from_numpy(test.x))
