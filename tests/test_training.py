"""The train stage function: outputs, best-epoch weights, resume after a crash, both batch paths."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from components.config import Params, validate_params
from components.data.manifest import MANIFEST
from components.data.prepared import data_version, load_prepared
from components.errors import DataValidationError, ParamsError
from components.training.artifacts import MODEL_CARD, STATS, TRAIN_INFO, WEIGHTS, load_trained_model
from components.training.train import fingerprint, train
from tests.conftest import Project, default_params, tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")

STEPS_PER_EPOCH = math.ceil(1257 / 128)  # digits train split at the default batch size


class CrashAt(Callback):
    """Raises before the first call at or after optimizer step ``step``, like a process killed right
    after a checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class CrashBeforeValidation(Callback):
    """Raises as epoch ``epoch``'s validation starts: after its last training step, before its end."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash before epoch {self.epoch}'s validation")


def _params(**train: Any) -> Params:
    return validate_params(tiny_params(**train))


def _run(project: Path, out: str, params: Params, arch: str = "mlp", **kwargs: Any) -> Any:
    return train(
        params,
        arch,  # type: ignore[arg-type]
        project / "data" / "prepared",
        project / out,
        work_root=project / ".work",
        project_root=project,
        **kwargs,
    )


def test_train_writes_the_best_epoch_model_and_removes_its_checkpoints(digits_project: Path) -> None:
    result = _run(digits_project, "models/mlp", _params(max_epochs=3, early_stopping_patience=0))
    folder = digits_project / "models" / "mlp"
    assert {p.name for p in folder.iterdir()} == {WEIGHTS, MODEL_CARD, STATS, TRAIN_INFO, MANIFEST}
    info = result.info
    assert (info["epochs"], info["global_steps"], len(info["history"])) == (3, 3 * STEPS_PER_EPOCH, 3)
    assert info["best_val_loss"] == pytest.approx(min(row["val_loss"] for row in info["history"]))
    assert not list((digits_project / ".work").glob("train/*")), "work folder left behind"

    # The saved weights are the best epoch's: their validation loss is the best one recorded.
    trained = load_trained_model(folder)
    val = load_prepared(digits_project / "data" / "prepared").splits["val"]
    with torch.no_grad():
        loss = F.cross_entropy(trained.model(torch.from_numpy(val.x)), torch.from_numpy(val.y)).item()
    assert loss == pytest.approx(info["best_val_loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("in_memory", "steps_per_call", "crash_step"),
    # 10 steps per epoch. Blocks of 4 steps end at steps 4, 8, 10 | 14, ...: the first checkpoint at
    # or past step 12 (every 3 steps) is written at the end of the block that reaches step 14.
    [(True, 4, 14), (False, 1, 12)],
    ids=["device-batches-4-per-call", "dataloader-1-per-call"],
)
def test_a_crashed_run_resumes_mid_epoch_and_ends_like_an_uninterrupted_one(
    digits_project: Path, in_memory: bool, steps_per_call: int, crash_step: int
) -> None:
    settings = {"max_epochs": 3, "checkpoint_every_n_steps": 3, "early_stopping_patience": 0}
    params = _params(**settings, in_memory=in_memory, steps_per_call=steps_per_call)
    out = f"models/{'memory' if in_memory else 'loader'}"
    whole = _run(digits_project, f"{out}-whole", params)

    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(digits_project, f"{out}-resumed", params, callbacks=[CrashAt(crash_step)])
    assert not (digits_project / f"{out}-resumed").exists()
    (checkpoint,) = (digits_project / ".work" / "train").glob("mlp-*/checkpoints/last.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors and plain types only
    assert saved["global_step"] == crash_step
    client = MlflowClient()
    crashed_runs = client.search_runs(
        [whole.info["mlflow"]["experiment_id"]],
        filter_string=f"attributes.status = 'FAILED' and tags.architecture = 'mlp'"
        f" and tags.`train.fingerprint` = '{whole.info['fingerprint']}'",
    )
    assert len(crashed_runs) == 1

    # Resume on the other batch path: same order, so the same result (and the run's params stay).
    other_path = _params(**settings, in_memory=not in_memory, steps_per_call=steps_per_call)
    resumed = _run(digits_project, f"{out}-resumed", other_path)
    assert resumed.info["resumed_from_step"] == crash_step
    assert resumed.info["global_steps"] == whole.info["global_steps"] == 3 * STEPS_PER_EPOCH
    assert len(resumed.info["history"]) == 3
    # Same MLflow run, reopened and now finished.
    assert resumed.run_id == crashed_runs[0].info.run_id
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    # The other batch path is another pipeline run (another parent): the resumed run moves under it,
    # which ends FINISHED with it as its child. Before, it stayed under the crashed run's parent.
    crashed_parent = crashed_runs[0].data.tags["mlflow.parentRunId"]
    parent = resumed.info["mlflow"]["parent_run_id"]
    assert parent != crashed_parent
    tags = client.get_run(resumed.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["pipeline.resumed_from_parent"] == crashed_parent
    assert client.get_run(parent).info.status == "FINISHED"
    # Same batches in the same order from the same state: the same weights as the uninterrupted run.
    weights_whole = load_file(str(digits_project / f"{out}-whole" / WEIGHTS))
    weights_resumed = load_file(str(digits_project / f"{out}-resumed" / WEIGHTS))
    for name, tensor in weights_whole.items():
        torch.testing.assert_close(weights_resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


class StepLosses(Callback):
    """The training loss of every optimizer step, kept as tensors (no host sync while training)."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.calls = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        self.losses.extend(outputs["loss"].unbind())  # (S,): one per optimizer step of the call
        self.calls += 1


def test_in_memory_batches_and_the_dataloader_train_identically(digits_project: Path) -> None:
    """Same seed: the device-resident path in blocks of 3 steps per call and the DataLoader path one
    step per call take the same steps with the same losses (CPU tensors stand in for device
    tensors), and end with the same weights."""
    steps_memory, steps_loader = StepLosses(), StepLosses()
    memory = _run(
        digits_project,
        "models/memory",
        _params(max_epochs=2, in_memory=True, steps_per_call=3),
        callbacks=[steps_memory],
    )
    loader = _run(
        digits_project,
        "models/loader",
        _params(max_epochs=2, in_memory=False, steps_per_call=1),
        callbacks=[steps_loader],
    )
    # 10 steps per epoch: blocks of 3, 3, 3, 1 against 10 calls of one step.
    assert (steps_memory.calls, steps_loader.calls) == (2 * 4, 2 * STEPS_PER_EPOCH)
    assert len(steps_memory.losses) == len(steps_loader.losses) == 2 * STEPS_PER_EPOCH
    torch.testing.assert_close(
        torch.stack(steps_memory.losses), torch.stack(steps_loader.losses), rtol=0, atol=0
    )
    for a, b in zip(memory.info["history"], loader.info["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert memory.info["weights_sha256"] == loader.info["weights_sha256"]


class StepHooks(Callback):
    """Counts Lightning's backward and optimizer-step hooks, and the steps it counted per epoch."""

    def __init__(self) -> None:
        self.backwards = 0
        self.steps = 0
        self.global_steps: list[int] = []

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.backwards += 1

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.global_steps.append(trainer.global_step)


def test_every_optimizer_step_goes_through_lightning(digits_project: Path) -> None:
    """Blocks of several steps per call still run Lightning's own backward and step: its hooks fire
    once per optimizer step and ``global_step`` counts every step, so a callback (or a Lightning
    upgrade) sees what a one-step-per-call loop would show. A clip small enough to bind on every
    step gives the same weights whatever the block size."""
    block, single = StepHooks(), StepHooks()
    params = _params(max_epochs=2, gradient_clip_val=0.01, steps_per_call=3)
    blocked = _run(digits_project, "models/block", params, callbacks=[block])
    unblocked = _params(max_epochs=2, gradient_clip_val=0.01, steps_per_call=1)
    one = _run(digits_project, "models/single", unblocked, callbacks=[single])
    assert block.backwards == block.steps == 2 * STEPS_PER_EPOCH
    assert block.global_steps == single.global_steps == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert blocked.info["weights_sha256"] == one.info["weights_sha256"]


def test_diverged_training_writes_no_model_and_keeps_no_checkpoint(digits_project: Path) -> None:
    """A learning rate of 1e30 without clipping drives the weights to NaN: the stage fails, naming
    the keys to change, and neither a NaN model nor a checkpoint to resume from is left."""
    params = _params(max_epochs=2, learning_rate=1e30, gradient_clip_val=0.0, early_stopping_patience=0)
    with pytest.raises(ParamsError, match=r"train@mlp: training diverged.*train\.learning_rate \(1e\+30\)"):
        _run(digits_project, "models/diverged", params)
    assert not (digits_project / "models" / "diverged").exists()
    key = fingerprint(params, "mlp", data_version(digits_project / "data" / "prepared"))
    assert not (digits_project / ".work" / "train" / f"mlp-{key[:16]}").exists()


@pytest.mark.parametrize(
    ("arch", "section", "key"),
    [
        ("lstm", {"embedding_dim": 10}, r"models\.lstm\.embedding_dim applies to text data only"),
        ("cnn", {"kernel_sizes": [2]}, r"models\.cnn\.kernel_sizes applies to text data only"),
        (
            "cnn",
            {"channels": [8, 8, 8, 8]},
            r"8x8 image is too small for 4 conv\+pool stages.*models\.cnn\.channels",
        ),
    ],
)
def test_model_settings_that_do_not_fit_the_data_are_refused_before_any_side_effect(
    digits_project: Path, arch: str, section: dict[str, Any], key: str
) -> None:
    raw = tiny_params()
    raw["models"][arch] = {**raw["models"][arch], **section}
    out = f"models/unfit-{arch}"
    work_before = sorted((digits_project / ".work").glob("train/*"))
    with pytest.raises(ParamsError, match=key):  # raised before the MLflow run opens
        _run(digits_project, out, validate_params(raw), arch)
    assert not (digits_project / out).exists()
    assert sorted((digits_project / ".work").glob("train/*")) == work_before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_accelerator_on_a_machine_without_one_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"train\.accelerator: gpu: PyTorch finds no CUDA device"):
        _run(tmp_path, "models/mlp", _params(accelerator="gpu"))
    assert list(tmp_path.iterdir()) == []


def test_training_without_prepared_data_names_the_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"manifest\.json.*run the preprocess stage"):
        _run(tmp_path, "models/mlp", _params())
    assert not (tmp_path / "models").exists()


def test_train_cli_refuses_bad_settings_before_any_side_effect(project: Project) -> None:
    project.write_params(models={**default_params()["models"], "cnn": {"channels": []}})
    result = project.run("train", "--arch", "cnn")
    assert result.returncode == 2, result.stderr
    assert "models.cnn.channels" in result.stderr
    assert not (project.root / "models").exists()
    assert not (project.root / "mlflow.db").exists()
    assert not (project.root / ".work").exists()


def test_a_crash_between_an_epochs_last_step_and_its_validation_loses_no_epoch(digits_project: Path) -> None:
    """A step checkpoint that fell on an epoch's last step used to be written before the epoch's
    validation: a run killed in between resumed past that validation, one epoch short in its history."""
    settings = {"max_epochs": 2, "checkpoint_every_n_steps": 5, "early_stopping_patience": 0}
    params = _params(**settings, steps_per_call=1)  # 10 steps per epoch: step 10 is a multiple of 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(digits_project, "models/cut", params, callbacks=[CrashBeforeValidation(0)])
    resumed = _run(digits_project, "models/cut", params)
    assert len(resumed.info["history"]) == 2
    assert [row["epoch"] for row in resumed.info["history"]] == [0, 1]
