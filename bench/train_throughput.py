"""Training throughput: the project's train stage against a bare PyTorch loop, for every architecture.

Both sides run in this one process on the same device, with the same network (built by
``components.models`` from ``params.yaml``), the same prepared training split resident on the
device, the same batch size, precision, memory layout, optimizer (``build_optimizer``), gradient
clipping and batch order. What is timed:

- **project**: :func:`components.training.train.train` (the function ``dvc repro`` runs, with its
  Trainer, callbacks, metrics and logging), timed by a callback from the start of each training
  epoch to the end of its last training batch. That covers every per-step cost of the stage (the
  Lightning loop, the batch slicing, the torchmetrics updates, ``self.log``, callbacks, clipping)
  and leaves out what happens once per epoch after the last step (validation, checkpoint files,
  the MLflow metrics batch): those are reported separately as ``epoch_overhead_ms``.
- **bare**: a ``for`` loop over the same batches: forward, cross-entropy, backward, clip, step.

The first epoch of each side is a warm-up and is not timed. Each side runs ``--repeats`` times,
alternating, and the best run of each is kept (the machine may be shared). Prints one line of
``key=value`` figures per architecture.

    uv run python bench/train_throughput.py                                   # bundled digits
    uv run python bench/train_throughput.py --data ../shared/data/mnist-10k    # MNIST (IDX files)
    uv run python bench/train_throughput.py --data ../shared/data/mnist-10k --tile 7 --val-fraction 0.1428572
                                            # 60,000 training images (the 10,000 repeated 7 times)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import typer
from lightning.pytorch.callbacks import Callback

from components.config import ALL_ARCHITECTURES, DataParams, Params, PreprocessParams, load_params
from components.data.ingest import ingest
from components.data.prepared import load_prepared
from components.data.preprocess import preprocess
from components.data.sources import load_source
from components.models import build_model, model_config
from components.training.batches import EpochSampler
from components.training.module import build_optimizer
from components.training.speed import SpeedSettings, float32_matmul_precision, resolve_speed
from components.training.train import train

REPO = Path(__file__).resolve().parents[1]

app = typer.Typer(add_completion=False, help=__doc__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Seconds from each training epoch's start to the end of its last batch, and to the epoch's end."""

    def __init__(self) -> None:
        self.steps: list[float] = []  # per epoch: training batches only
        self.whole: list[float] = []  # per epoch: up to on_train_epoch_end (validation, checkpoints)
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            _sync(pl_module.device)
            self.steps.append(time.perf_counter() - self._start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self.whole.append(time.perf_counter() - self._start)


def prepare(
    root: Path,
    data: Path | None,
    tile: int = 1,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Path:
    """Ingest and preprocess the bundled digits, or the IDX files in ``data``, under ``root``.

    ``tile`` > 1 repeats every image that many times first (through an ``npz`` source, the IDX
    files' test split becoming the held-out test split): an MNIST-sized training epoch from the
    10,000-image test set, for throughput only.
    """
    source = DataParams() if data is None else DataParams(source="idx", path=str(data.resolve()))
    split = PreprocessParams() if data is None else PreprocessParams(val_fraction=0.1, test_fraction=0.2)
    if tile > 1:
        splits = load_source(source).splits.values()
        images = np.concatenate([s.images for s in splits])  # (N, C, H, W)
        labels = np.concatenate([s.labels for s in splits])  # (N,)
        archive = root / "tiled" / "tiled.npz"
        archive.parent.mkdir(parents=True)
        np.savez(
            archive,
            x=np.tile(images, (tile, 1, 1, 1)),
            y=np.tile(labels, tile),
            x_test=images[:1000],
            y_test=labels[:1000],
        )
        source = DataParams(source="npz", path=str(archive))
    if val_fraction is not None:
        split = split.model_copy(update={"val_fraction": val_fraction})
    if test_fraction is not None:
        split = split.model_copy(update={"test_fraction": test_fraction})
    ingest(source, root / "raw")
    preprocess(split, root / "raw", root / "prepared")
    return root / "prepared"


def run_project(params: Params, arch: str, prepared: Path, root: Path) -> EpochTimer:
    timer = EpochTimer()
    train(
        params,
        arch,  # type: ignore[arg-type]
        prepared,
        root / "models" / arch,
        work_root=root / ".work",
        project_root=root,
        callbacks=[timer],
    )
    return timer


def _autocast(speed: SpeedSettings, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if speed.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if speed.precision == "32-true":
        return contextlib.nullcontext()
    raise typer.BadParameter(f"the bare loop supports 32-true and bf16-mixed, not {speed.precision}")


def run_bare(params: Params, arch: str, prepared: Path, device: torch.device) -> list[float]:
    """The same training as the stage, written as a plain loop; seconds per epoch."""
    data = load_prepared(prepared)
    split = data.splits["train"]
    x = torch.from_numpy(split.x).to(device)  # (N, C, H, W) resident on the device
    y = torch.from_numpy(split.y).to(device)  # (N, K)
    speed = resolve_speed(params.train, arch)
    config = model_config(
        arch,  # type: ignore[arg-type]
        params.models,
        data.stats.image_shape,
        len(data.stats.class_names),
    )
    L.seed_everything(params.train.seed, workers=True, verbose=False)
    model = build_model(arch, config).to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if speed.compile:
        model.compile()
    model.train()
    train_params = params.train
    optimizer = build_optimizer(
        model.parameters(), train_params.learning_rate, train_params.weight_decay, device
    )
    sampler = EpochSampler(len(x), params.train.seed, shuffle=True)
    batch_size, clip = params.train.batch_size, params.train.gradient_clip_val
    seconds = []
    with float32_matmul_precision(speed.matmul_precision):
        for epoch in range(params.train.max_epochs):
            sampler.set_epoch(epoch)
            _sync(device)
            start = time.perf_counter()
            order = sampler.order().to(device)  # (N,)
            for first in range(0, len(order), batch_size):
                index = order[first : first + batch_size]  # (B,)
                xb, yb = x[index], y[index]  # (B, C, H, W), (B, K)
                if speed.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with _autocast(speed, device):
                    loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
            _sync(device)
            seconds.append(time.perf_counter() - start)
    return seconds


@contextlib.contextmanager
def _tracking(root: Path) -> Iterator[None]:
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@app.command()
def main(
    data: Annotated[Path | None, typer.Option(help="Folder of IDX files [default: the digits].")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="Architecture(s) [default: all].")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per run; the first is a warm-up.")] = 6,
    batch_size: Annotated[int | None, typer.Option(help="[default: train.batch_size]")] = None,
    accelerator: Annotated[str | None, typer.Option(help="[default: train.accelerator]")] = None,
    precision: Annotated[str | None, typer.Option(help="[default: train.precision]")] = None,
    compile: Annotated[bool | None, typer.Option(help="[default: train.compile]")] = None,
    repeats: Annotated[int, typer.Option(help="Runs of each side; the best is kept.")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads [default: torch's].")] = None,
    steps_per_call: Annotated[int | None, typer.Option(help="[default: train.steps_per_call]")] = None,
    tile: Annotated[int, typer.Option(help="Repeat every image this many times (throughput only).")] = 1,
    val_fraction: Annotated[float | None, typer.Option(help="[default: 0.1 with --data]")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="[default: 0.2 with --data]")] = None,
) -> None:
    """Print one ``key=value`` line per architecture: project and bare images/s and their ratio."""
    if threads is not None:
        torch.set_num_threads(threads)
    overrides: dict[str, Any] = {"train.max_epochs": epochs, "train.early_stopping_patience": 0}
    for key, value in {
        "train.batch_size": batch_size,
        "train.accelerator": accelerator,
        "train.precision": precision,
        "train.compile": compile,
        "train.steps_per_call": steps_per_call,
    }.items():
        if value is not None:
            overrides[key] = value
    params = load_params(REPO / "params.yaml", overrides)
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        root = Path(tmp)
        prepared = prepare(root / "data", data, tile, val_fraction, test_fraction)
        n_train = len(load_prepared(prepared).splits["train"].x)
        with _tracking(root):
            for name in arch or list(ALL_ARCHITECTURES):
                speed = resolve_speed(params.train, name)
                project: list[EpochTimer] = []
                bare: list[list[float]] = []
                device = torch.device("cpu")
                for repeat in range(repeats):
                    timer = run_project(params, name, prepared, root / f"run{repeat}")
                    project.append(timer)
                    device = _project_device(root / f"run{repeat}" / "models" / name)
                    bare.append(run_bare(params, name, prepared, device))
                project_s = min(sum(t.steps[1:]) for t in project)
                bare_s = min(sum(s[1:]) for s in bare)
                overhead_ms = min(
                    1000 * sum(w - s for w, s in zip(t.whole[1:], t.steps[1:], strict=True)) / (epochs - 1)
                    for t in project
                )
                images = n_train * (epochs - 1)
                figures = {
                    "arch": name,
                    "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
                    "batch_size": params.train.batch_size,
                    "precision": speed.precision,
                    "channels_last": speed.channels_last,
                    "compile": speed.compile,
                    "steps_per_call": params.train.steps_per_call,
                    "threads": torch.get_num_threads(),
                    "train_images": n_train,
                    "epochs_timed": epochs - 1,
                    "images_per_s_project": round(images / project_s),
                    "images_per_s_bare": round(images / bare_s),
                    "ratio": round(bare_s / project_s, 3),
                    "epoch_overhead_ms": round(overhead_ms, 1),
                }
                print(" ".join(f"{key}={value}" for key, value in figures.items()), flush=True)


def _project_device(model_dir: Path) -> torch.device:
    """The device the project's run trained on (recorded in train_info.json)."""
    import json

    info = json.loads((model_dir / "train_info.json").read_text(encoding="utf-8"))
    return torch.device(info["device"])


if __name__ == "__main__":
    app()
