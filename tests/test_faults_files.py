"""Faults in the files the pipeline writes and reads: a corrupted or edited model folder, the
``.gitignore`` DVC keeps beside file outputs, inputs on the wrong scale for the served model, and a
full disk. Each test reproduces one defect of issue 22 as an operator would meet it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from safetensors import SafetensorError

from components.atomic import atomic_directory, atomic_write_text
from components.config import Params, dump_params, validate_params
from components.data.manifest import MANIFEST
from components.data.prepared import load_prepared
from components.errors import EXIT_BAD_INPUT, EXIT_NO_SPACE, DataValidationError, NoSpaceError, PipelineError
from components.evaluation.evaluate import PREDICTIONS, evaluate
from components.registry.judge import raw_pixels
from components.registry.predict import predict_file
from components.registry.register import register, registered_model_name
from components.training.artifacts import load_trained_model
from components.training.train import train
from pipelines._cli import run_stage
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")


@pytest.fixture(scope="module")
def params() -> Params:
    return validate_params(tiny_params(max_epochs=2))


@pytest.fixture(scope="module")
def trained(digits_project: Path, params: Params) -> Path:
    """A tiny mlp trained by the train stage's function (so with its manifest)."""
    out = digits_project / "models" / "faults-mlp"
    prepared = digits_project / "data" / "prepared"
    train(params, "mlp", prepared, out, work_root=digits_project / ".work", project_root=digits_project)
    return out


def _flip_bytes(path: Path, count: int = 10) -> None:
    """Flip ``count`` bytes in the middle of ``path`` (inside the tensors, past the header)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _versions(name: str) -> list[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'"))


# Defect 2: corrupted weights were scored and registered ------------------------------------------


def test_flipped_weight_bytes_fail_the_evaluate_stage_with_exit_2_naming_the_file(
    digits_project: Path, params: Params, trained: Path, tmp_path: Path
) -> None:
    """Before: exit 0, accuracy 0.62, reports rewritten. Now the file is named and nothing changes."""
    prepared = digits_project / "data" / "prepared"
    reports = tmp_path / "reports" / "mlp"
    evaluate(params, "mlp", prepared, trained, reports, project_root=digits_project)
    before = _files(reports)
    model = tmp_path / "models" / "mlp"
    shutil.copytree(trained, model)
    _flip_bytes(model / "weights.safetensors")
    params_file = dump_params(params, tmp_path / "params.yaml")
    command = [
        sys.executable, "-m", "pipelines.evaluate", "--params", str(params_file), "--arch", "mlp",
        "--prepared", str(prepared), "--model", str(model), "--out", str(reports),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    result = subprocess.run(command, cwd=digits_project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    message = " ".join(result.stderr.split())
    assert f"{model / 'weights.safetensors'}: sha256 differs from {model / MANIFEST}" in message
    assert "Traceback" not in result.stderr
    assert _files(reports) == before


def test_an_edited_model_card_or_a_folder_without_manifest_is_refused(
    digits_project: Path, params: Params, trained: Path, tmp_path: Path
) -> None:
    prepared = digits_project / "data" / "prepared"
    model = tmp_path / "mlp"
    shutil.copytree(trained, model)
    card = json.loads((model / "model.json").read_text())
    card["config"]["dropout"] = 0.5  # still builds: only the manifest can tell
    (model / "model.json").write_text(json.dumps(card))
    with pytest.raises(DataValidationError, match=r"model\.json: sha256 differs from .*manifest\.json"):
        evaluate(params, "mlp", prepared, model, tmp_path / "reports", project_root=digits_project)
    assert not (tmp_path / "reports").exists()

    # A folder written before models had a manifest: refused, saying what to run.
    shutil.rmtree(model)
    shutil.copytree(trained, model)
    (model / MANIFEST).unlink()
    with pytest.raises(DataValidationError, match=r"manifest\.json: missing: .*re-run train@mlp"):
        load_trained_model(model)


def test_register_refuses_corrupted_weights_and_adds_no_version(
    digits_project: Path, params: Params, trained: Path, tmp_path: Path
) -> None:
    """Before: a new version, tagged with the original training run, of weights nobody trained."""
    prepared = digits_project / "data" / "prepared"
    name = registered_model_name(params)
    register(params, "mlp", trained, prepared, project_root=digits_project)
    before = _versions(name)
    model = tmp_path / "mlp"
    shutil.copytree(trained, model)
    _flip_bytes(model / "weights.safetensors")
    with pytest.raises(DataValidationError, match=r"weights\.safetensors: sha256 differs"):
        register(params, "mlp", model, prepared, project_root=digits_project)
    assert _versions(name) == before


def test_the_registered_model_refuses_to_load_files_changed_after_training(
    digits_project: Path, params: Params, trained: Path, tmp_path: Path
) -> None:
    """What ``mlflow models serve`` and batch prediction load: the registered copy is checked too."""
    prepared = digits_project / "data" / "prepared"
    decision = register(params, "mlp", trained, prepared, project_root=digits_project)
    uri = f"models:/{decision.model_name}/{decision.version}"
    client = MlflowClient()
    stored = Path(urlparse(client.get_model_version_download_uri(decision.model_name, decision.version)).path)
    weights = next(stored.rglob("weights.safetensors"))
    good = weights.read_bytes()
    _flip_bytes(weights)
    try:
        with pytest.raises(ValueError, match=r"weights\.safetensors: sha256 does not match the model folder"):
            mlflow.pyfunc.load_model(uri)
        split = load_prepared(prepared).splits["test"]
        np.savez(tmp_path / "images.npz", x=raw_pixels(split, load_prepared(prepared).stats)[:4, 0])
        with pytest.raises(PipelineError, match=rf"cannot load {uri}: .*weights\.safetensors: sha256"):
            predict_file(uri, tmp_path / "images.npz", tmp_path / "out.csv")
        assert not (tmp_path / "out.csv").exists()
    finally:
        weights.write_bytes(good)


# Defect 9: the served model answered pixels on the wrong scale -----------------------------------


def test_the_registered_model_refuses_pixels_on_another_scale_unless_told_not_to(
    digits_project: Path, params: Params, trained: Path
) -> None:
    """Before: 16x the digits' pixels answered class 0 at probability 1.0 without a word."""
    prepared_dir = digits_project / "data" / "prepared"
    decision = register(params, "mlp", trained, prepared_dir, project_root=digits_project)
    uri = f"models:/{decision.model_name}/{decision.version}"
    prepared = load_prepared(prepared_dir)
    pixels = raw_pixels(prepared.splits["test"], prepared.stats)[:8]  # (8, 1, 8, 8), 0..16
    model = mlflow.pyfunc.load_model(uri)
    assert len(model.predict(pixels)) == 8
    with pytest.raises(MlflowException, match=r"must lie within the training data's range 0\.\.16") as caught:
        model.predict(pixels * 16)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert caught.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match=r"must span the training data's range 0\.\.16"):
        model.predict(pixels / 16)

    trusting = mlflow.pyfunc.load_model(uri, model_config={"check_pixel_range": False})
    assert len(trusting.predict(pixels * 16)) == 8
    with pytest.raises(ValueError, match=r"model_config\['check_pixel_range'\] = 'no'"):
        mlflow.pyfunc.load_model(uri, model_config={"check_pixel_range": "no"})


# Defect 8: a replaced report folder lost DVC's .gitignore -----------------------------------------

DVC_GITIGNORE = "/classification_report.json\n/confusion_matrix.png\n"


def test_atomic_directory_keeps_the_gitignore_dvc_wrote_and_nothing_else_old(tmp_path: Path) -> None:
    target = tmp_path / "reports"
    target.mkdir()
    (target / ".gitignore").write_text(DVC_GITIGNORE)
    (target / "stale.json").write_text("{}")
    with atomic_directory(target) as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == [".gitignore", "metrics.json"]
    assert (target / ".gitignore").read_text() == DVC_GITIGNORE
    # A block that writes its own .gitignore keeps its own.
    with atomic_directory(target) as tmp:
        (tmp / ".gitignore").write_text("/mine\n")
    assert (target / ".gitignore").read_text() == "/mine\n"


def test_the_evaluate_stage_keeps_the_gitignore_dvc_wrote_in_the_report_folder(
    digits_project: Path, params: Params, trained: Path, tmp_path: Path
) -> None:
    """Before: evaluate by itself deleted reports/<arch>/.gitignore and git showed DVC's outputs."""
    reports = tmp_path / "reports" / "mlp"
    reports.mkdir(parents=True)
    (reports / ".gitignore").write_text(DVC_GITIGNORE)
    prepared = digits_project / "data" / "prepared"
    evaluate(params, "mlp", prepared, trained, reports, project_root=digits_project)
    assert (reports / ".gitignore").read_text() == DVC_GITIGNORE
    assert (reports / "metrics.json").is_file()


# Defect 10a: a full disk ended in a raw traceback with exit 1 -------------------------------------


# How safetensors (Rust) reports a full disk: in its message only.
RUST_ENOSPC = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


def _enospc(path: Path | str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_while_evaluating_exits_74_naming_the_folder_and_keeps_the_reports(
    digits_project: Path,
    params: Params,
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prepared = digits_project / "data" / "prepared"
    reports = tmp_path / "reports" / "mlp"
    evaluate(params, "mlp", prepared, trained, reports, project_root=digits_project)
    before = _files(reports)
    real_write_text = Path.write_text

    def full_disk(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name == PREDICTIONS:  # the disk fills up half-way through the reports
            raise _enospc(self)
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(SystemExit) as exited:
        run_stage(
            "evaluate@mlp",
            lambda: evaluate(params, "mlp", prepared, trained, reports, project_root=digits_project),
        )
    monkeypatch.undo()
    assert exited.value.code == EXIT_NO_SPACE
    message = " ".join(capsys.readouterr().err.split())
    assert f"{reports}: no space left on device (writing {PREDICTIONS})" in message
    assert _files(reports) == before
    assert sorted(p.name for p in reports.parent.iterdir()) == ["mlp"]  # no temporary folder left


def test_a_full_disk_while_saving_the_weights_exits_74_and_keeps_the_previous_model(
    digits_project: Path,
    params: Params,
    trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: a raw SafetensorError traceback and exit 1. safetensors reports the disk only in its
    message (a Rust io::Error), as here."""
    model = tmp_path / "models" / "mlp"
    shutil.copytree(trained, model)
    before = _files(model)

    def full_disk(tensors: dict[str, Any], filename: str, *args: Any, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"\0" * 16)  # a part written, then the disk is full
        raise SafetensorError(RUST_ENOSPC)

    monkeypatch.setattr("components.training.artifacts.save_file", full_disk)
    prepared = digits_project / "data" / "prepared"
    settings = params.model_copy(update={"train": params.train.model_copy(update={"max_epochs": 1})})
    with pytest.raises(SystemExit) as exited:
        run_stage(
            "train@mlp",
            lambda: train(
                settings, "mlp", prepared, model, work_root=tmp_path / "work", project_root=digits_project
            ),
        )
    assert exited.value.code == EXIT_NO_SPACE
    message = " ".join(capsys.readouterr().err.split())
    assert f"{model}: no space left on device (writing weights.safetensors)" in message
    assert _files(model) == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["mlp"]


def test_a_full_disk_at_an_atomic_file_write_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "registration.json"
    target.write_text("old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as fsync reports it: no file name

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(NoSpaceError, match=rf"^{target}: no space left on device; the previous output"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registration.json"]
