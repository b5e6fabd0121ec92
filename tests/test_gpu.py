"""GPU-only behaviour of the train stage: bf16 by default, NHWC for the CNN, torch.compile, and no
host synchronisation inside a training step. Skipped without CUDA (``-m gpu`` selects them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from components.config import TrainParams, validate_params
from components.training.speed import resolve_speed
from components.training.train import train
from tests.conftest import tiny_params

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("tracking_uri"),
]


class NoHostSyncInSteps(Callback):
    """Makes any device-to-host synchronisation inside a ``training_step`` call an error.

    ``torch.cuda.set_sync_debug_mode("error")`` raises on ``.item()``, ``.cpu()``, ``nonzero`` and
    the like, so a step that waits on the GPU fails the run. Counts the optimizer steps run.
    Checked from epoch ``from_epoch`` on (``torch.compile`` compiles, and syncs, in the first).
    """

    def __init__(self, from_epoch: int = 0) -> None:
        self.from_epoch = from_epoch
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch >= self.from_epoch:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self.steps += len(outputs["loss"])  # (S,): one loss per optimizer step of the call


@pytest.fixture(autouse=True)
def _sync_debug_mode_reset() -> Any:
    """A failing step leaves the mode at "error"; the next test must not inherit it."""
    yield
    torch.cuda.set_sync_debug_mode("default")


def _train(root: Path, arch: str, from_epoch: int = 0, **settings: Any) -> Any:
    params = validate_params(tiny_params(max_epochs=2, early_stopping_patience=0, **settings))
    checker = NoHostSyncInSteps(from_epoch)
    result = train(
        params,
        arch,  # type: ignore[arg-type]
        root / "data" / "prepared",
        root / "models" / arch,
        work_root=root / ".work",
        project_root=root,
        callbacks=[checker],
    )
    return result, checker


def test_auto_settings_pick_bf16_tf32_and_nhwc_on_cuda() -> None:
    speed = resolve_speed(TrainParams(), "cnn")
    assert speed.device == "cuda"
    assert speed.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    assert (speed.matmul_precision, speed.channels_last, speed.compile) == ("high", True, False)
    assert resolve_speed(TrainParams(), "mlp").channels_last is False


@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm", "transformer"])
def test_training_steps_never_wait_on_the_host(digits_project: Path, arch: str) -> None:
    """Gradient clipping on (params.yaml's 1.0) with the fused Adam; four optimizer steps per call."""
    result, checker = _train(digits_project, arch, steps_per_call=4)
    assert checker.steps == result.info["global_steps"] > 0
    assert result.info["device"].startswith("cuda")
    assert result.info["precision"] == resolve_speed(TrainParams(), arch).precision


def test_cnn_trains_channels_last_in_bf16(digits_project: Path) -> None:
    result, _ = _train(digits_project, "cnn", channels_last=True, precision="bf16-mixed")
    assert result.info["channels_last"] is True
    assert result.info["precision"] == "bf16-mixed"
    assert result.info["history"][-1]["train_loss"] < result.info["history"][0]["train_loss"]


def test_compiled_cnn_trains_and_saves_plain_weights(digits_project: Path) -> None:
    from components.training.artifacts import load_trained_model

    result, checker = _train(digits_project, "cnn", from_epoch=1, compile=True)
    assert checker.steps == result.info["global_steps"] > 0  # the compiled epoch never waits either
    assert result.info["compile"] is True
    trained = load_trained_model(result.model_dir)  # plain state_dict keys, loads into an uncompiled CNN
    assert trained.architecture == "cnn"


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_registered_model_predicts_on_cuda_what_it_predicts_on_the_cpu(
    digits_project: Path, arch: str
) -> None:
    """``model_config={"device": "cuda"}`` runs the registered network on the GPU, fp32: same classes."""
    import mlflow
    import numpy as np

    from components.data.prepared import load_prepared
    from components.registry.judge import raw_pixels
    from components.registry.register import register, registered_model_name

    result, _ = _train(digits_project, arch)
    params = validate_params(tiny_params())
    prepared_dir = digits_project / "data" / "prepared"
    decision = register(params, arch, result.model_dir, prepared_dir, project_root=digits_project)
    prepared = load_prepared(prepared_dir)
    pixels = raw_pixels(prepared.splits["test"], prepared.stats)
    uri = f"models:/{registered_model_name(params)}/{decision.version}"
    cpu_model = mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})
    assert cpu_model.unwrap_python_model().device.type == "cpu"  # not silently "auto"
    on_cpu = cpu_model.predict(pixels)
    on_gpu = mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"}).predict(pixels)
    assert mlflow.pyfunc.load_model(uri).unwrap_python_model().device.type == "cuda"  # auto
    # atol 1e-2: a training earlier in this process may have turned on TF32 matmuls.
    np.testing.assert_allclose(on_gpu["probability"], on_cpu["probability"], atol=1e-2)
    agree = (on_gpu["class_id"] == on_cpu["class_id"]).mean()
    assert agree >= 0.98, f"only {agree:.3f} of the classes agree"
