"""The end-of-run summary (``python -m pipelines.summary``) on hand-written model and report folders:
figures of an older model than the one in ``models/<arch>/`` are marked stale, and a bad
registration.json never ends the summary in a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.table import Table

from components.evaluation.summary import champion_line, results_table
from components.hashing import sha256_bytes
from tests.conftest import prepare_digits, tiny_params

WEIGHTS_BYTES = b"first weights"


def _model(root: Path, fingerprint: str, weights: bytes, parameters: int = 1234) -> Path:
    """``models/mlp`` as the train stage leaves it, as far as the summary reads it."""
    folder = root / "models" / "mlp"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.safetensors").write_bytes(weights)
    info = {
        "data_version": "d" * 64,
        "parameters": parameters,
        "epochs": 2,
        "fit_seconds": 1.25,
        "fingerprint": fingerprint,
        # train's digest of the tensors, not of the file's bytes (which the registry keys versions by)
        "weights_sha256": sha256_bytes(b"tensors of " + weights),
    }
    (folder / "train_info.json").write_text(json.dumps(info))
    return folder


def _reports(root: Path, fingerprint: str | None) -> Path:
    """``reports/mlp`` as evaluate leaves it for the model with ``fingerprint`` (None: a report that
    records none) and ``reports/registration.json`` registering ``WEIGHTS_BYTES`` as v1 champion."""
    folder = root / "reports" / "mlp"
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"accuracy": 0.5, "f1_macro": 0.25, "images_per_second": 1000.0}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    report: dict[str, Any] = {"per_class": {}, "confusion_matrix": []}
    if fingerprint is not None:
        report["model_fingerprint"] = fingerprint
    (folder / "classification_report.json").write_text(json.dumps(report))
    weights_sha = sha256_bytes(WEIGHTS_BYTES)
    registration = {
        "model_name": "digits-classifier",
        "champion": {"version": "1", "architecture": "mlp", "weights_sha256": weights_sha},
        "decisions": [{"architecture": "mlp", "version": "1", "weights_sha256": weights_sha}],
    }
    (root / "reports" / "registration.json").write_text(json.dumps(registration))
    return folder


def _rows(root: Path) -> list[list[str]]:
    table: Table = results_table(
        ["mlp"], root / "models", root / "reports", root / "reports/registration.json"
    )
    return [list(row) for row in zip(*([str(cell) for cell in c._cells] for c in table.columns), strict=True)]


def test_the_evaluated_and_registered_model_shows_its_figures_and_version(tmp_path: Path) -> None:
    _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    _reports(tmp_path, "fp-1")
    row = ["mlp", "0.5000", "0.2500", "—", "1,234", "2", "1.2 s", "1,000", "—", "v1 champion"]
    assert _rows(tmp_path) == [row]


def test_a_text_report_shows_its_samples_per_second(tmp_path: Path) -> None:
    """Text runs write samples_per_second only; image runs both it and the older images_per_second."""
    _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    folder = _reports(tmp_path, "fp-1")
    metrics = {"accuracy": 0.75, "f1_macro": 0.5, "samples_per_second": 2500.0}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert _rows(tmp_path)[0][1:3] + _rows(tmp_path)[0][7:8] == ["0.7500", "0.5000", "2,500"]
    (folder / "metrics.json").write_text(json.dumps({**metrics, "images_per_second": 9.0}))
    assert _rows(tmp_path)[0][7] == "2,500"  # samples_per_second wins where both are present


def test_a_model_retrained_after_its_evaluation_and_registration_shows_neither(tmp_path: Path) -> None:
    """Before, ``train@mlp`` alone put the new model's size beside the old model's accuracy and
    version ("v1 champion" for weights never registered)."""
    _reports(tmp_path, "fp-1")
    _model(tmp_path, "fp-2", b"retrained weights", parameters=567)
    stale = ["mlp", "stale: re-run evaluate@mlp", "", "—", "567", "2", "1.2 s", "", "—"]
    assert _rows(tmp_path) == [[*stale, "stale: re-run register"]]
    # Re-evaluated but not re-registered: the figures come back, the version stays stale.
    _reports(tmp_path, "fp-2")
    assert _rows(tmp_path)[0][1:] == [
        "0.5000",
        "0.2500",
        "—",
        "567",
        "2",
        "1.2 s",
        "1,000",
        "—",
        "stale: re-run register",
    ]


@pytest.mark.parametrize("report", [None, "no fingerprint", "{not json"])
def test_metrics_without_a_readable_fingerprint_are_not_vouched_for(
    tmp_path: Path, report: str | None
) -> None:
    _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    folder = _reports(tmp_path, None if report == "no fingerprint" else "fp-1")
    if report is None:
        (folder / "classification_report.json").unlink()
    elif report.startswith("{"):
        (folder / "classification_report.json").write_text(report)
    assert _rows(tmp_path)[0][1:3] == ["stale: re-run evaluate@mlp", ""]
    assert _rows(tmp_path)[0][9] == "v1 champion"  # the weights are still the registered ones


BAD_REGISTRATIONS = [
    '{"champion": {"version": "2", "archi',  # truncated: JSONDecodeError
    '{"champion": {"architecture": "mlp"}, "decisions": [{"architecture": "mlp"}]}',  # KeyError
    "[1]",  # AttributeError
    '"champion"',
    '{"champion": 5}',  # TypeError
]


@pytest.mark.parametrize("text", BAD_REGISTRATIONS)
def test_a_bad_registration_file_prints_no_champion_line_and_no_versions(tmp_path: Path, text: str) -> None:
    _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    _reports(tmp_path, "fp-1")
    (tmp_path / "reports" / "registration.json").write_text(text)
    assert champion_line(tmp_path / "reports" / "registration.json") is None
    table = results_table(
        ["mlp"], tmp_path / "models", tmp_path / "reports", tmp_path / "reports/registration.json"
    )
    assert "unreadable" in str(table.caption)
    assert _rows(tmp_path)[0][9] == ""


def test_champion_line_names_the_version_and_omits_an_unknown_architecture(tmp_path: Path) -> None:
    registration = tmp_path / "registration.json"
    assert champion_line(registration) is None  # nothing registered yet
    registration.write_text(
        json.dumps({"model_name": "m", "champion": {"version": "3", "architecture": "cnn"}})
    )
    assert champion_line(registration) == "Champion: m v3 (cnn)"
    registration.write_text(
        json.dumps({"model_name": "m", "champion": {"version": "3", "architecture": None}})
    )
    assert champion_line(registration) == "Champion: m v3"
    registration.write_text(json.dumps({"model_name": "m", "champion": None, "decisions": []}))
    assert champion_line(registration) is None


def test_the_summary_command_survives_a_truncated_registration_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the champion line raised JSONDecodeError after the table had printed it unreadable."""
    from components.config import dump_params, validate_params
    from components.summary import print_summary

    prepare_digits(tmp_path)
    params = dump_params(validate_params(tiny_params()), tmp_path / "params.yaml")
    _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    _reports(tmp_path, "fp-1")
    (tmp_path / "reports" / "registration.json").write_text(BAD_REGISTRATIONS[0])
    print_summary(params, tmp_path, architectures=["mlp"])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps to the terminal's width
    assert "versions not shown" in out
    assert "Champion:" not in out
    assert "Browse the runs:" in out


def test_a_private_model_shows_the_epsilon_it_spent(tmp_path: Path) -> None:
    folder = _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    info = json.loads((folder / "train_info.json").read_text())
    info["privacy"] = {"epsilon": 2.9951, "delta": 1e-5}
    (folder / "train_info.json").write_text(json.dumps(info))
    _reports(tmp_path, "fp-1")
    assert _rows(tmp_path)[0][8] == "3.00 (δ 1e-05)"


def test_the_compressed_size_and_accuracy_show_beside_the_float_ones(tmp_path: Path) -> None:
    _model(tmp_path, "fp-1", WEIGHTS_BYTES)
    folder = _reports(tmp_path, "fp-1")
    before = {"size_bytes": 176_000, "accuracy": 0.98}
    report = {"model_fingerprint": "fp-1", "accepted": True, "method": "dynamic_int8", "before": before}
    (folder / "compression.json").write_text(
        json.dumps({**report, "after": {"size_bytes": 45_000, "accuracy": 0.975}})
    )
    assert _rows(tmp_path)[0][3] == "0.9750, 45 KB (3.9x)"
    rejected = {**report, "accepted": False, "after": {"size_bytes": 900, "accuracy": 0.5}}
    (folder / "compression.json").write_text(json.dumps(rejected))
    assert _rows(tmp_path)[0][3] == "0.5000 ✗, 900 B (195.6x)"
    (folder / "compression.json").write_text(json.dumps({**rejected, "model_fingerprint": "fp-0"}))
    assert _rows(tmp_path)[0][3] == "stale: re-run compress@mlp"
    none = {"model_fingerprint": "fp-1", "accepted": False, "method": "none", "before": before}
    (folder / "compression.json").write_text(json.dumps(none))
    assert _rows(tmp_path)[0][3] == "none"  # no compressed model: not a rejection
