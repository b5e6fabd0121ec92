"""Training throughput: the project's train stage against a bare PyTorch loop, for every architecture.

Both sides run in this one process on the same device, with the same network (built by
``components.models`` from ``params.yaml``), the same prepared training split resident on the
device, the same batch size, precision, memory layout, optimizer (``build_optimizer``), gradient
clipping and batch order. What is timed:

- **project**: :func:`components.training.train.train` (the function ``dvc repro`` runs, with its
  Trainer, callbacks, metrics and logging), timed by a callback from the start of each training
  epoch to the end of its last training batch. That covers every per-step cost of the stage (the
  Lightning loop, the batch slicing, the metric updates, callbacks, clipping) and leaves out what
  happens once per epoch after the last step (validation, checkpoint files, the MLflow metrics
  batch): those are reported separately as ``epoch_overhead_ms``.
- **bare**: a ``for`` loop over the same batches: forward, cross-entropy, backward, clip, step.

**Same epoch-end work, untimed.** The stage validates after every epoch and writes its
checkpoint; the bare loop does the same between its epochs (a forward pass over the validation
split at the evaluation batch size, then ``torch.save`` of the model and optimizer state to a file),
untimed on both sides. It matters for the ratio only through the caches: on a 2-core CPU the first
optimizer steps after a checkpoint write run 0.5-1 ms slower, and without that work a bare loop's
epochs all start warm (``--no-bare-epoch-end`` measures that way).

**Paired, epoch by epoch.** The bare loop runs inside the project's run: after each project epoch
(after its validation, before its checkpoint) the bare loop runs an epoch, its epoch-end work, and
a second, timed epoch. Both sides so see the same spells of a shared machine (on a 2-core VM,
epoch times drift by 30% over seconds, which swamped run-by-run comparisons). The first epoch of
each side is a warm-up. ``ratio`` is total bare time over total project time for the same number of
images; ``--repeats`` pools several runs. Prints one line of ``key=value`` figures per
architecture.

    uv run python bench/train_throughput.py                                   # bundled digits
    uv run python bench/train_throughput.py --data ../shared/data/mnist-10k    # MNIST (IDX files)
    uv run python bench/train_throughput.py --data ../shared/data/mnist-10k --tile 7 --val-fraction 0.1428572
                                            # 60,000 training images (the 10,000 repeated 7 times)
    uv run python bench/train_throughput.py --data ../shared/data/sst2 --text-column sentence --arch lstm
                                            # labelled text (a file, or a folder of train/dev/test):
                                            # token ids through the token models; figures per text
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
from components.data.text_stats import TextStats
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


class PairedEpochs(Callback):
    """Times each project training epoch, then runs two bare epochs and times the second.

    ``steps``: per project epoch, its start to the end of its last batch; ``whole``: to the epoch's
    end (validation included); ``bare``: the timed bare epochs, one per project epoch.
    """

    def __init__(self, bare: BareLoop) -> None:
        self.bare_loop = bare
        self.steps: list[float] = []
        self.whole: list[float] = []
        self.bare: list[float] = []
        self._start = 0.0
        self._bare_epoch = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            _sync(pl_module.device)
            self.steps.append(time.perf_counter() - self._start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        self.whole.append(time.perf_counter() - self._start)
        with torch.enable_grad():
            self.bare_loop.epoch(self._bare_epoch)  # untimed: the timed one follows a bare epoch
            self.bare_loop.epoch_end()  # untimed, as the stage's validation and checkpoint
            self.bare.append(self.bare_loop.epoch(self._bare_epoch + 1))
        self._bare_epoch += 2


def prepare(
    root: Path,
    data: Path | None,
    tile: int = 1,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    text_column: str | None = None,
) -> Path:
    """Ingest and preprocess the bundled digits, the IDX files in ``data``, or with ``text_column``
    the labelled text in ``data`` (the tokenizer at the params.yaml defaults), under ``root``.

    ``tile`` > 1 repeats every image that many times first (through an ``npz`` source, the IDX
    files' test split becoming the held-out test split): an MNIST-sized training epoch from the
    10,000-image test set, for throughput only.
    """
    source = DataParams() if data is None else DataParams(source="idx", path=str(data.resolve()))
    split = PreprocessParams() if data is None else PreprocessParams(val_fraction=0.1, test_fraction=0.2)
    if text_column is not None:
        if data is None or tile > 1:
            raise typer.BadParameter("--text-column needs --data and takes no --tile")
        source = DataParams(source="text", path=str(data.resolve()), text_column=text_column)
        split = PreprocessParams()  # a folder's dev/test files are its splits; a file is split
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


def run_paired(
    params: Params, arch: str, prepared: Path, root: Path, device: torch.device, bare_epoch_end: bool = True
) -> PairedEpochs:
    """One run of the train stage with the bare loop's epochs interleaved (see the module docstring)."""
    checkpoint = root / "bare.ckpt" if bare_epoch_end else None
    paired = PairedEpochs(BareLoop(params, arch, prepared, device, checkpoint))
    train(
        params,
        arch,  # type: ignore[arg-type]
        prepared,
        root / "models" / arch,
        work_root=root / ".work",
        project_root=root,
        callbacks=[paired],
    )
    return paired


def _autocast(speed: SpeedSettings, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if speed.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if speed.precision == "32-true":
        return contextlib.nullcontext()
    raise typer.BadParameter(f"the bare loop supports 32-true and bf16-mixed, not {speed.precision}")


class BareLoop:
    """The same training as the stage, written as a plain loop, one epoch per :meth:`epoch` call."""

    def __init__(
        self, params: Params, arch: str, prepared: Path, device: torch.device, checkpoint: Path | None = None
    ) -> None:
        data = load_prepared(prepared)
        split = data.splits["train"]
        self.device = device
        self.x = torch.from_numpy(split.x).to(device)  # (N, C, H, W) or (N, L) ids, on the device
        self.y = torch.from_numpy(split.y).to(device)  # (N, K)
        self.val_x = torch.from_numpy(data.splits["val"].x).to(device)  # (V, C, H, W) or (V, L)
        self.eval_batch_size = params.evaluate.batch_size
        self.checkpoint = checkpoint  # None: no epoch-end work (see epoch_end)
        self.speed = resolve_speed(params.train, arch)
        config = model_config(
            arch,  # type: ignore[arg-type]
            params.models,
            data.stats.input_shape,
            len(data.stats.class_names),
            vocab_size=data.stats.vocab_size if isinstance(data.stats, TextStats) else None,
        )
        L.seed_everything(params.train.seed, workers=True, verbose=False)
        model = build_model(arch, config).to(device)
        if self.speed.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.speed.compile:
            model.compile()
        self.model = model.train()
        train_params = params.train
        self.optimizer = build_optimizer(
            model.parameters(), train_params.learning_rate, train_params.weight_decay, device
        )
        self.sampler = EpochSampler(len(self.x), train_params.seed, shuffle=True)
        self.batch_size, self.clip = train_params.batch_size, train_params.gradient_clip_val

    def epoch(self, epoch: int) -> float:
        """Train one epoch; its seconds."""
        speed, device, model, optimizer = self.speed, self.device, self.model, self.optimizer
        self.sampler.set_epoch(epoch)
        with float32_matmul_precision(speed.matmul_precision):
            _sync(device)
            start = time.perf_counter()
            order = self.sampler.order().to(device)  # (N,)
            for first in range(0, len(order), self.batch_size):
                index = order[first : first + self.batch_size]  # (B,)
                xb, yb = self.x[index], self.y[index]  # (B, C, H, W) or (B, L), (B, K)
                if speed.channels_last and xb.dim() == 4:  # as the stage's module: images only
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with _autocast(speed, device):
                    loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                if self.clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
                optimizer.step()
            _sync(device)
            return time.perf_counter() - start

    def epoch_end(self) -> None:
        """What the stage does after each epoch, plainly: validate, then save model and optimizer."""
        if self.checkpoint is None:
            return
        model = self.model.eval()
        with torch.inference_mode(), _autocast(self.speed, self.device):
            for first in range(0, len(self.val_x), self.eval_batch_size):
                xb = self.val_x[first : first + self.eval_batch_size]  # (B, C, H, W) or (B, L)
                if self.speed.channels_last and xb.dim() == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                model(xb).argmax(dim=1)  # (B,)
        model.train()
        partial = self.checkpoint.with_name(self.checkpoint.name + ".partial")
        torch.save({"model": model.state_dict(), "optimizer": self.optimizer.state_dict()}, partial)
        os.replace(partial, self.checkpoint)


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
    data: Annotated[
        Path | None, typer.Option(help="Folder of IDX files, or of labelled text (default: the digits).")
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="--data is labelled text (a file or folder); its text column.")
    ] = None,
    arch: Annotated[list[str] | None, typer.Option(help="Architecture(s) (default: all).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per run; the first is a warm-up.")] = 16,
    batch_size: Annotated[int | None, typer.Option(help="(default: train.batch_size)")] = None,
    accelerator: Annotated[str | None, typer.Option(help="(default: train.accelerator)")] = None,
    precision: Annotated[str | None, typer.Option(help="(default: train.precision)")] = None,
    compile: Annotated[bool | None, typer.Option(help="(default: train.compile)")] = None,
    repeats: Annotated[int, typer.Option(help="Paired runs, pooled.")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (default: torch's).")] = None,
    steps_per_call: Annotated[int | None, typer.Option(help="(default: train.steps_per_call)")] = None,
    tile: Annotated[int, typer.Option(help="Repeat every image this many times (throughput only).")] = 1,
    val_fraction: Annotated[float | None, typer.Option(help="(default: 0.1 with --data)")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="(default: 0.2 with --data)")] = None,
    bare_epoch_end: Annotated[
        bool, typer.Option(help="Bare loop validates and checkpoints between epochs, as the stage.")
    ] = True,
) -> None:
    """Print one ``key=value`` line per architecture: project and bare images/s (texts: samples/s)
    and their ratio."""
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
    if text_column is not None and data is not None:  # token models: text-only keys at their defaults
        overrides |= {
            "data.source": "text",
            "data.path": str(data.resolve()),
            "data.text_column": text_column,
        }
    unit = "images" if text_column is None else "samples"
    params = load_params(REPO / "params.yaml", overrides)
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        root = Path(tmp)
        prepared = prepare(root / "data", data, tile, val_fraction, test_fraction, text_column)
        n_train = len(load_prepared(prepared).splits["train"].x)
        with _tracking(root):
            for name in arch or list(ALL_ARCHITECTURES):
                speed = resolve_speed(params.train, name)
                device = torch.device(speed.device)  # the first device of its kind, as Lightning picks
                runs = [
                    run_paired(params, name, prepared, root / f"run{r}", device, bare_epoch_end)
                    for r in range(repeats)
                ]
                project_s = sum(sum(run.steps[1:]) for run in runs)  # the first epoch is a warm-up
                bare_s = sum(sum(run.bare[1:]) for run in runs)
                overhead_ms = min(
                    1000
                    * sum(w - s for w, s in zip(run.whole[1:], run.steps[1:], strict=True))
                    / (epochs - 1)
                    for run in runs
                )
                images = n_train * (epochs - 1) * repeats
                figures = {
                    "arch": name,
                    "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
                    "batch_size": params.train.batch_size,
                    "precision": speed.precision,
                    "channels_last": speed.channels_last,
                    "compile": speed.compile,
                    "steps_per_call": params.train.steps_per_call,
                    "threads": torch.get_num_threads(),
                    f"train_{unit}": n_train,
                    "epochs_timed": epochs - 1,
                    f"{unit}_per_s_project": round(images / project_s),
                    f"{unit}_per_s_bare": round(images / bare_s),
                    "ratio": round(bare_s / project_s, 3),
                    "epoch_overhead_ms": round(overhead_ms, 1),
                    "bare_epoch_end": bare_epoch_end,
                }
                print(" ".join(f"{key}={value}" for key, value in figures.items()), flush=True)


if __name__ == "__main__":
    app()
