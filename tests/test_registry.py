"""The registry gate and the registered model, against a real SQLite-backed MLflow registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from components.config import Params, dump_params, validate_params
from components.data.prepared import load_prepared
from components.errors import PipelineError, TransientError
from components.evaluation.summary import champion_line
from components.registry.decisions import write_report
from components.registry.judge import raw_pixels
from components.registry.lease import EXPIRES_TAG, HOLDER_TAG, lock_name, registry_lease
from components.registry.package import NETWORKS_DIR
from components.registry.predict import predict_file
from components.registry.pyfunc_model import import_networks
from components.registry.register import (
    CHALLENGER,
    CHAMPION,
    champion_version,
    register,
    registered_model_name,
)
from components.training.artifacts import load_trained_model, write_model_manifest
from components.training.train import train
from tests.conftest import tiny_params


@pytest.fixture(scope="module")
def params() -> Params:
    raw = tiny_params()
    raw["train"]["early_stopping_patience"] = 0
    return validate_params(raw)


@pytest.fixture(scope="module")
def models(digits_project: Path, tracking_uri: str, params: Params) -> dict[int, Path]:
    """The same tiny MLP trained for 1, 2 and 8 epochs: three models of rising accuracy."""
    trained = {}
    for epochs in (1, 2, 8):
        settings = params.model_copy(update={"train": params.train.model_copy(update={"max_epochs": epochs})})
        out = digits_project / "models" / f"mlp-{epochs}"
        train(
            settings,
            "mlp",
            digits_project / "data/prepared",
            out,
            work_root=digits_project / ".work",
            project_root=digits_project,
        )
        trained[epochs] = out
    return trained


def _versions(name: str) -> list[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'"))


def test_champion_moves_only_to_a_better_model_and_registration_is_idempotent(
    digits_project: Path, params: Params, models: dict[int, Path]
) -> None:
    prepared = digits_project / "data/prepared"
    name = registered_model_name(params)
    lineage = {"prefect.flow_run_id": "flow-run-1"}

    first = register(params, "mlp", models[1], prepared, project_root=digits_project, tags=lineage)
    assert first.promoted
    assert first.reason == "no champion yet"
    best = register(params, "mlp", models[8], prepared, project_root=digits_project, tags=lineage)
    assert best.value > first.value
    assert best.promoted
    assert best.previous_champion == first.version
    assert "beats" in best.reason
    middle = register(params, "mlp", models[2], prepared, project_root=digits_project, tags=lineage)
    assert middle.value < best.value
    assert not middle.promoted
    assert "does not beat" in middle.reason
    assert middle.previous_champion_value == pytest.approx(best.value)

    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == best.version
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == middle.version
    assert _versions(name) == ["1", "2", "3"]

    # The same weights again: no new version, the first decision comes back.
    again = register(params, "mlp", models[2], prepared, project_root=digits_project, tags=lineage)
    assert again == middle
    assert _versions(name) == ["1", "2", "3"]
    assert not client.search_registered_models(f"name = '{lock_name(name)}'")  # the lease was let go

    # Lineage: from the version to the code, the data and the flow run that made it.
    version = client.get_model_version(name, best.version)
    info = json.loads((models[8] / "train_info.json").read_text())
    assert version.tags["data.version"] == info["data_version"]
    assert version.tags["git.commit"] == info["git_commit"] != "unknown"
    assert version.tags["prefect.flow_run_id"] == "flow-run-1"
    assert version.tags["registry.decision"] == "promoted"
    assert version.run_id == info["mlflow"]["run_id"]

    report_file = digits_project / "reports" / "registration.json"
    report = write_report([first, best, middle], champion_version(params, digits_project), report_file)
    assert report["champion"]["version"] == best.version
    written = report_file.read_bytes()
    write_report([first, best, middle], champion_version(params, digits_project), report_file)
    assert report_file.read_bytes() == written  # no timestamps: same registry state, same bytes
    assert champion_line(report_file) == f"Champion: {name} v{best.version} (mlp)"


def test_registered_model_predicts_on_raw_pixels_what_the_trained_model_predicts(
    digits_project: Path, params: Params, models: dict[int, Path]
) -> None:
    prepared_dir = digits_project / "data/prepared"
    register(params, "mlp", models[8], prepared_dir, project_root=digits_project)
    prepared = load_prepared(prepared_dir)
    test = prepared.splits["test"]
    pixels = raw_pixels(test, prepared.stats)  # (N, 1, 8, 8), digits' 0..16 values
    assert pixels.min() >= -1e-4
    assert pixels.max() <= 16 + 1e-4

    uri = f"models:/{registered_model_name(params)}@{CHAMPION}"
    model = mlflow.pyfunc.load_model(uri)
    predicted = model.predict(pixels)

    trained = load_trained_model(models[8])
    with torch.no_grad():
        expected = trained.model(torch.from_numpy(test.x)).argmax(dim=1).numpy()
    assert (predicted["class_id"].to_numpy() == expected).all()
    probabilities = predicted[[f"prob_{c}" for c in prepared.stats.class_names]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (predicted["class_name"] == [prepared.stats.class_names[i] for i in expected]).all()

    # The signature is enforced: a wrong image size is refused, not silently reshaped.
    with pytest.raises(mlflow.exceptions.MlflowException, match="shape"):
        model.predict(np.zeros((2, 1, 9, 9), dtype=np.float32))

    logged = mlflow.models.get_model_info(uri)
    assert logged.signature is not None
    assert tuple(logged.signature.inputs.inputs[0].shape) == (-1, 1, 8, 8)
    assert logged.saved_input_example_info is not None


def test_registered_model_loads_and_predicts_without_this_project(
    digits_project: Path, params: Params, models: dict[int, Path], tmp_path: Path
) -> None:
    """A new process in which importing ``components`` fails still loads and runs the model."""
    prepared_dir = digits_project / "data/prepared"
    decision = register(params, "mlp", models[2], prepared_dir, project_root=digits_project)
    prepared = load_prepared(prepared_dir)
    pixels = raw_pixels(prepared.splits["test"], prepared.stats)
    np.save(tmp_path / "pixels.npy", pixels)
    uri = f"models:/{registered_model_name(params)}/{decision.version}"
    script = f"""
import sys
sys.modules["components"] = None  # any import of this project now raises ImportError
import mlflow, numpy as np
model = mlflow.pyfunc.load_model({uri!r})
print(model.predict(np.load({str(tmp_path / "pixels.npy")!r}))["class_id"].tolist())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Loading it says nothing alarming: before, every load warned "Add type hints to the `predict`
    # method" (MLflow's own filter overrides a caller's, so only a hint on predict silences it).
    assert "Warning" not in done.stderr, done.stderr[-3000:]
    in_process = mlflow.pyfunc.load_model(uri).predict(pixels)["class_id"].tolist()
    assert json.loads(done.stdout.strip().splitlines()[-1]) == in_process


def test_registered_model_runs_where_model_config_says_and_old_versions_refuse_a_device(
    digits_project: Path,
    params: Params,
    models: dict[int, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``model_config={"device": ...}`` reaches the wrapper (MLflow drops keys a model was not logged
    with), at load time and through ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` (how ``mlflow models serve``
    takes it); a version logged without the setting is refused a device rather than ignoring it."""
    prepared_dir = digits_project / "data/prepared"
    name = registered_model_name(params)
    decision = register(params, "mlp", models[1], prepared_dir, project_root=digits_project)
    uri = f"models:/{name}/{decision.version}"
    assert mlflow.pyfunc.load_model(uri).model_config == {"device": "auto", "check_pixel_range": True}
    on_cpu = mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})
    assert on_cpu.unwrap_python_model().device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"model_config\['device'\] = 'cuda:63'.*no such CUDA device"):
        mlflow.pyfunc.load_model(uri, model_config={"device": "cuda:63"})
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"device": "cuda:63"}))
        with pytest.raises(ValueError, match="'cuda:63'"):
            mlflow.pyfunc.load_model(uri)

    # A version logged as before this setting existed (other weights, so a new version).
    old = tmp_path / "old-mlp"
    shutil.copytree(models[1], old)
    weights = load_file(old / "weights.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3
    save_file(weights, old / "weights.safetensors")
    # ... and trained on data prepared before stats.json recorded the training pixel range.
    stats = json.loads((old / "stats.json").read_text())
    del stats["pixel_min"], stats["pixel_max"]
    (old / "stats.json").write_text(json.dumps(stats))
    write_model_manifest(old)
    log_model = mlflow.pyfunc.log_model

    def log_without_model_config(*args: object, **kwargs: object) -> object:
        kwargs.pop("model_config")
        return log_model(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(mlflow.pyfunc, "log_model", log_without_model_config)
        old_version = register(params, "mlp", old, prepared_dir, project_root=digits_project).version
    assert old_version != decision.version
    old_uri = f"models:/{name}/{old_version}"
    assert mlflow.pyfunc.load_model(old_uri).model_config == {}
    prepared = load_prepared(prepared_dir)
    images = raw_pixels(prepared.splits["test"], prepared.stats)  # (N, 1, 8, 8)
    np.savez(tmp_path / "images.npz", x=images[:, 0])
    with pytest.raises(PipelineError, match=r"without a device setting.*--device auto"):
        predict_file(old_uri, tmp_path / "images.npz", tmp_path / "old.csv", device="cpu")
    assert not (tmp_path / "old.csv").exists()
    assert len(predict_file(old_uri, tmp_path / "images.npz", tmp_path / "old.csv")) == len(images)
    # Without a recorded range nothing is checked: 0..255 images are predicted (and refused by the
    # version that has one).
    np.savez(tmp_path / "bright.npz", x=images[:, 0] * 15)
    assert len(predict_file(old_uri, tmp_path / "bright.npz", tmp_path / "old.csv")) == len(images)
    with pytest.raises(PipelineError, match="pixel values must lie within"):
        predict_file(uri, tmp_path / "bright.npz", tmp_path / "new.csv")


def test_register_stage_registers_nothing_when_one_model_folder_is_broken(
    digits_project: Path, params: Params, models: dict[int, Path], tmp_path: Path
) -> None:
    """New mlp weights and a missing cnn folder: the stage fails naming the folder, before it
    registers the mlp (the report of a half-registered run would otherwise be missing)."""
    from typer.testing import CliRunner

    from pipelines.register import app

    folder = tmp_path / "models"
    shutil.copytree(models[2], folder / "mlp")
    weights = load_file(folder / "mlp" / "weights.safetensors")
    weights = {k: v + 1e-3 if i == 0 else v for i, (k, v) in enumerate(sorted(weights.items()))}
    save_file(weights, folder / "mlp" / "weights.safetensors")
    write_model_manifest(folder / "mlp")
    both = params.model_copy(
        update={"train": params.train.model_copy(update={"architectures": ["mlp", "cnn"]})}
    )
    params_file = dump_params(both, tmp_path / "params.yaml")
    name = registered_model_name(params)
    before = _versions(name)
    result = CliRunner().invoke(
        app,
        [
            "--params", str(params_file), "--prepared", str(digits_project / "data/prepared"),
            "--models", str(folder), "--out", str(tmp_path / "registration.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "models/cnn/model.json: missing" in result.output
    assert _versions(name) == before
    assert not (tmp_path / "registration.json").exists()


def test_shipped_architecture_code_is_imported_once_per_content(tmp_path: Path) -> None:
    """Two copies of the same code share one module; a changed copy gets its own classes."""
    same_a, same_b, changed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (same_a, same_b, changed):
        folder.mkdir()
        for source in NETWORKS_DIR.glob("*.py"):
            shutil.copyfile(source, folder / source.name)
    (changed / "mlp.py").write_text((changed / "mlp.py").read_text() + "\nCHANGED = True\n")
    first, second, other = import_networks(same_a), import_networks(same_b), import_networks(changed)
    assert first is second
    assert other is not first
    assert other.MLP is not first.MLP
    assert other.mlp.CHANGED is True
    assert not hasattr(first.mlp, "CHANGED")
    assert first.__name__ not in {"components.models", "models"}  # not the project's own package


def test_batch_prediction_reads_a_folder_an_idx_file_and_an_npz(
    digits_project: Path, params: Params, models: dict[int, Path], tmp_path: Path
) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from components.data.idx import write_idx
    from components.errors import DataValidationError
    from pipelines.predict import app

    prepared_dir = digits_project / "data/prepared"
    register(params, "mlp", models[8], prepared_dir, project_root=digits_project)
    prepared = load_prepared(prepared_dir)
    images = np.rint(raw_pixels(prepared.splits["test"], prepared.stats)[:40, 0]).astype(
        np.uint8
    )  # (40, 8, 8)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")
    (folder / "._000.png").write_bytes(b"macOS resource fork")  # hidden: skipped, as ingest does
    (folder / ".ipynb_checkpoints").mkdir()
    Image.fromarray(images[0], mode="L").save(folder / ".ipynb_checkpoints" / "000-checkpoint.png")
    write_idx(tmp_path / "images-idx3-ubyte", images)
    np.savez(tmp_path / "images.npz", x=images)

    name = registered_model_name(params)
    uri = f"models:/{name}@{CHAMPION}"
    champion = MlflowClient().get_model_version_by_alias(name, CHAMPION).version
    expected = mlflow.pyfunc.load_model(uri).predict(images[:, None].astype(np.float32))["class_id"].tolist()
    outputs = {}
    for source in (folder, tmp_path / "images-idx3-ubyte", tmp_path / "images.npz"):
        out = tmp_path / f"{source.name}.csv"
        result = CliRunner().invoke(
            app, [str(source), "--out", str(out), "--model-name", name, "--batch-size", "16"]
        )
        assert result.exit_code == 0, result.output
        # The version the alias named when the run began: loaded pinned, and said.
        assert f"with models:/{name}/{champion} ({CHAMPION}) -> " in result.output
        table = pd.read_csv(out)
        assert len(table) == 40
        assert table["class_id"].tolist() == expected
        outputs[source.name] = table
    assert outputs["images"]["id"].tolist()[:2] == ["000.png", "001.png"]

    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 9, 9), np.uint8))
    with pytest.raises(DataValidationError, match=r"wrong\.npz.*shape \[1, 8, 8\]"):
        predict_file(uri, tmp_path / "wrong.npz", tmp_path / "wrong.csv")
    assert not (tmp_path / "wrong.csv").exists()
    # Inputs the ingest stage refuses are refused here too, naming the file: before, a damaged or
    # empty .npz was a traceback, and a 16-bit PNG was clipped to 8 bits without a word.
    (tmp_path / "damaged.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "objects.npz", x=np.array([None, 1], dtype=object))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), np.uint8))
    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    Image.fromarray(images[0].astype(np.uint16) * 257).save(sixteen / "000.png")  # mode I;16
    # Pixels that are not finite gave class 0 with empty probabilities, and exit 0.
    np.savez(tmp_path / "nan.npz", x=np.full((3, 8, 8), np.nan))
    np.savez(tmp_path / "huge.npz", x=np.full((3, 8, 8), 1e39))  # inf as float32
    for source, rule in [
        (tmp_path / "nan.npz", r"nan\.npz: pixels must be finite.*192 NaN or infinite"),
        (tmp_path / "huge.npz", r"huge\.npz: pixels must be finite"),
        (tmp_path / "damaged.npz", r"damaged\.npz: not a readable \.npz archive"),
        (tmp_path / "objects.npz", r"objects\.npz: arrays must be numeric"),
        (tmp_path / "empty.npz", r"empty\.npz: holds no images"),
        (sixteen, r"000\.png: only 8-bit grey-scale or colour images"),
    ]:
        with pytest.raises(DataValidationError, match=rule):
            predict_file(uri, source, tmp_path / "refused.csv")
    assert not (tmp_path / "refused.csv").exists()

    # A device this machine cannot run on is refused before anything loads or is written.
    bad_device = CliRunner().invoke(
        app, [str(folder), "--out", str(tmp_path / "tpu.csv"), "--model-name", name, "--device", "tpu"]
    )
    assert bad_device.exit_code != 0
    assert "'tpu'" in bad_device.output
    assert "'cuda:<n>'" in bad_device.output
    assert not (tmp_path / "tpu.csv").exists()
    # A version or alias that does not exist: exit 2 with the model URI named, not a traceback.
    for missing in (["--version", "999"], ["--alias", "nonesuch"]):
        absent = CliRunner().invoke(
            app, [str(folder), "--out", str(tmp_path / "absent.csv"), "--model-name", name, *missing]
        )
        assert absent.exit_code == 2, absent.output
        assert f"cannot load models:/{name}" in absent.output
        assert "Traceback" not in absent.output
    assert not (tmp_path / "absent.csv").exists()
    # --out naming a folder is refused before any prediction (was an IsADirectoryError at the end).
    into_folder = CliRunner().invoke(app, [str(folder), "--out", str(tmp_path), "--model-name", name])
    assert into_folder.exit_code == 2, into_folder.output
    assert "is a folder; name the CSV file" in into_folder.output
    # Run from elsewhere, the store is the one beside --params, not an mlflow.db in the working folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI")
        patch.chdir(elsewhere)
        args = [str(folder), "--params", str(digits_project / "params.yaml"), "--model-name", name]
        located = CliRunner().invoke(app, [*args, "--version", "999"])
    assert located.exit_code == 2, located.output
    assert str(digits_project / "mlflow.db") in located.output.replace("\n", "")
    assert list(elsewhere.iterdir()) == []
    # The CPU, named, predicts what the default predicts.
    on_cpu = predict_file(uri, folder, tmp_path / "cpu.csv", device="cpu")
    assert on_cpu["class_id"].tolist() == expected

    # Images on another scale than the training split's raw 0..16 are refused, naming the source,
    # before anything is written: 0..255 PNGs (before: wrong answers, exit 0) and 0..1 floats.
    bright = tmp_path / "bright"
    bright.mkdir()
    for i, image in enumerate(images[:5]):
        Image.fromarray((image.astype(np.uint16) * 15).astype(np.uint8), mode="L").save(bright / f"{i}.png")
    np.savez(tmp_path / "unit.npz", x=images / 16.0)
    for source, rule in [
        (bright, r"bright: pixel values must lie within the training .* 0\.\.16 .*from 0 to 2\d\d;"),
        (tmp_path / "unit.npz", r"unit\.npz: pixel values must span the training .* 0\.\.16 .*largest is 1,"),
    ]:
        with pytest.raises(DataValidationError, match=rule):
            predict_file(uri, source, tmp_path / "scaled.csv")
    assert not (tmp_path / "scaled.csv").exists()
    # The CLI refuses with exit 2 and names the way out, which then predicts them anyway.
    scaled = [str(bright), "--out", str(tmp_path / "scaled.csv"), "--model-name", name]
    refused = CliRunner().invoke(app, scaled)
    assert refused.exit_code == 2, refused.output
    assert "--no-range-check" in refused.output
    assert not (tmp_path / "scaled.csv").exists()
    forced = CliRunner().invoke(app, [*scaled, "--no-range-check"])
    assert forced.exit_code == 0, forced.output
    assert len(pd.read_csv(tmp_path / "scaled.csv")) == 5


def test_pixel_range_is_checked_per_channel_with_a_margin() -> None:
    """Colour images: each channel against its own training range, 5% of it allowed either side."""
    from components.errors import DataValidationError
    from components.registry.predict import check_pixel_range

    lows, highs = [0.0, 10.0, 0.0], [255.0, 110.0, 50.0]
    pixels = np.zeros((2, 3, 4, 4), np.float32)  # (N, C, H, W)
    pixels[:, 0] = 255.0
    pixels[:, 1] = np.linspace(5.5, 114.5, 16).reshape(4, 4)  # 4.5 past either end: inside 5% of 100
    pixels[:, 2, 0, 0] = 52.0
    check_pixel_range(pixels, lows, highs, "ok.npz")
    pixels[1, 2, 3, 3] = 53.0
    with pytest.raises(DataValidationError, match=r"range 0\.\.50 in channel 2 \(1 of 32 values .* 0 to 53;"):
        check_pixel_range(pixels, lows, highs, "hot.npz")
    pixels[1, 2, 3, 3] = 0.0
    pixels[:, 0] = 25.0  # the red channel within the bottom tenth of 0..255: another scale
    with pytest.raises(DataValidationError, match=r"hot\.npz: .* must span .* in channel 0 .*largest is 25,"):
        check_pixel_range(pixels, lows, highs, "hot.npz")


def test_registry_lease_keeps_out_a_second_holder_and_breaks_an_expired_one(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    with registry_lease(client, "leased") as holder:
        held = client.get_registered_model(lock_name("leased"))
        assert held.tags[HOLDER_TAG] == holder
        with (
            pytest.raises(TransientError, match=f"locked by {holder}"),
            registry_lease(client, "leased", wait_s=0.3, poll_s=0.1),
        ):
            pytest.fail("a second holder got the lease")
        assert client.get_registered_model(lock_name("leased")).tags[HOLDER_TAG] == holder
    assert not client.search_registered_models(f"name = '{lock_name('leased')}'")

    # A holder that died long ago left its lock: it has expired, so the next holder takes over at once.
    client.create_registered_model(lock_name("leased"), tags={HOLDER_TAG: "gone:1:x", EXPIRES_TAG: "0"})
    with registry_lease(client, "leased", wait_s=5) as holder:
        assert client.get_registered_model(lock_name("leased")).tags[HOLDER_TAG] == holder != "gone:1:x"
    assert not client.search_registered_models(f"name = '{lock_name('leased')}'")


def test_registry_lease_waits_when_the_holder_lets_go_while_the_lock_is_being_created(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race seen on PostgreSQL: a waiter's insert of the lock hits the unique name, and before the
    store reads the existing lock back to word its error, the holder deletes it. The store then says
    RESOURCE_DOES_NOT_EXIST; that lost race must mean "try again", not a failed registration.
    Replayed on the real SQLite store by letting the holder go at exactly that point."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    client = MlflowClient(tracking_uri)
    lock = lock_name("raced")
    client.create_registered_model(lock, tags={HOLDER_TAG: "other:1:x", EXPIRES_TAG: "9e99"})
    read_back = SqlAlchemyStore.get_registered_model
    released: list[str] = []

    def holder_lets_go_first(store: SqlAlchemyStore, name: str) -> object:
        if name == lock and not released:
            released.append(name)
            store.delete_registered_model(name)
        return read_back(store, name)

    monkeypatch.setattr(SqlAlchemyStore, "get_registered_model", holder_lets_go_first)
    with registry_lease(client, "raced", wait_s=5, poll_s=0.05) as holder:
        assert released == [lock]  # the interleaving did happen
        assert client.get_registered_model(lock).tags[HOLDER_TAG] == holder
    assert not client.search_registered_models(f"name = '{lock}'")


def test_a_champion_that_cannot_be_scored_keeps_the_alias_and_versions_carry_the_training_commit(
    digits_project: Path, params: Params, models: dict[int, Path], tmp_path: Path
) -> None:
    """Before, a champion whose files could not be read for a moment was replaced unjudged (a
    10%-accuracy model took the alias), and a version carried the commit checked out when it was
    registered rather than the one that trained it."""
    from urllib.parse import urlparse

    from components.registry.judge import input_mismatch

    prepared_dir = digits_project / "data/prepared"
    name = registered_model_name(params)
    client = MlflowClient()
    register(params, "mlp", models[8], prepared_dir, project_root=digits_project)
    champion = client.get_model_version_by_alias(name, CHAMPION)

    # A model the registry has not seen (models[1]'s weights, nudged), trained at the fixture's
    # commit; then the checkout moves on.
    nudged = tmp_path / "mlp-nudged"
    shutil.copytree(models[1], nudged)
    state = load_file(str(nudged / "weights.safetensors"))
    last = sorted(state)[-1]  # not the tensor other tests nudge: weights no test has registered
    state[last] = state[last] - 7e-4
    save_file(state, str(nudged / "weights.safetensors"))
    write_model_manifest(nudged)
    trained_at = json.loads((nudged / "train_info.json").read_text())["git_commit"]
    git = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    git |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(
        ["git", "commit", "-q", "--allow-empty", "-m", "later"],
        cwd=digits_project,
        env={**os.environ, **git},
        check=True,
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=digits_project, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert head != trained_at

    before = _versions(name)
    # The champion's files are away while the new version is judged: nothing moves.
    files = Path(urlparse(client.get_model_version_download_uri(name, champion.version)).path)
    away = files.with_name(files.name + ".away")
    files.rename(away)
    try:
        with pytest.raises(
            PipelineError, match=rf"{name}/{champion.version} \({CHAMPION}\) could not be scored"
        ):
            register(params, "mlp", nudged, prepared_dir, project_root=digits_project)
    finally:
        away.rename(files)
    assert client.get_model_version_by_alias(name, CHAMPION).version == champion.version

    # Back in place: the waiting version is judged like any other, on the same test data.
    decision = register(params, "mlp", nudged, prepared_dir, project_root=digits_project)
    assert decision.version not in before  # registered by this test, judged only now
    assert decision.previous_champion == str(champion.version)
    assert decision.previous_champion_value is not None
    assert client.get_model_version(name, decision.version).tags["git.commit"] == trained_at

    # What alone lets a new model take the alias unjudged: a champion that cannot take the data.
    prepared = load_prepared(prepared_dir)
    pixels = raw_pixels(prepared.splits["test"], prepared.stats)
    classes = list(prepared.stats.class_names)
    uri = f"models:/{name}/{champion.version}"
    assert input_mismatch(uri, pixels, classes) is None
    assert "shape [1, 8, 8]" in str(input_mismatch(uri, pixels[:, :, :4, :4], classes))
    assert "classes" in str(input_mismatch(uri, pixels, classes[::-1]))
