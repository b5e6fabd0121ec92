"""Inference throughput: batch prediction through the registered MLflow model against the bare forward.

For every architecture trained in ``models/<arch>/`` (run ``make run`` first), in this one process:

- **registered**: the model registered from that folder (logged and loaded exactly as the registry
  does it, into a temporary MLflow store), called as ``pyfunc.predict(raw_pixels)``: the MLflow
  signature check, the wrapper (normalisation + network + softmax) and the output table.
- **bare**: ``network(normalised_x).argmax(1)`` under ``torch.inference_mode``: the trained network
  alone on already normalised tensors.

Same images (the prepared test split, tiled to ``--images``, in host memory as a caller has them),
same batch size, same device (``--device``, given to the registered model as
``model_config={"device": ...}``; on a GPU both sides copy each batch over and its answer back,
which also waits for the GPU). The first pass of each side is a warm-up; each side runs
``--repeats`` times, alternating, and the best is kept. Prints one ``key=value`` line per
architecture.

    uv run python bench/inference.py --images 20000 --batch-size 1024
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from components.config import ALL_ARCHITECTURES, load_params
from components.data.prepared import load_prepared
from components.models import inference_device
from components.registry.register import register, registered_model_name
from components.training.artifacts import load_trained_model

REPO = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False, help=__doc__)


def _rate(run: Callable[[], None], images: int) -> float:
    """Images per second of one timed pass of ``run``."""
    started = time.perf_counter()
    run()
    return images / (time.perf_counter() - started)


def _measure(
    model: Any,
    network: torch.nn.Module,
    pixels: np.ndarray,
    x: torch.Tensor,
    batch_size: int,
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """Best images/s of the registered model on raw pixels and of the bare network on ``x``."""
    images = len(pixels)

    def registered() -> None:
        for start in range(0, images, batch_size):
            model.predict(pixels[start : start + batch_size])

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, images, batch_size):
                network(x[start : start + batch_size].to(device)).argmax(dim=1).cpu()

    registered()  # warm-up
    bare()
    rates = {"registered": 0.0, "bare": 0.0}
    for _ in range(repeats):  # alternating, best of each
        rates["registered"] = max(rates["registered"], _rate(registered, images))
        rates["bare"] = max(rates["bare"], _rate(bare, images))
    return rates


@app.command()
def main(
    images: Annotated[int, typer.Option(help="Images per timed pass (the test split, tiled).")] = 20000,
    batch_size: Annotated[int, typer.Option(help="Images per predict call.")] = 1024,
    repeats: Annotated[int, typer.Option(help="Timed passes per side.")] = 5,
    project: Annotated[Path, typer.Option(help="Project with models/ and data/prepared/.")] = REPO,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:<n>.")] = "auto",
) -> None:
    """Print registered-model and bare-forward images/s per architecture."""
    import mlflow

    params = load_params(project / "params.yaml")
    prepared = load_prepared(project / "data" / "prepared")
    test = prepared.splits["test"]
    reps = -(-images // len(test.x))
    x = np.concatenate([test.x] * reps)[:images]  # (N, C, H, W) normalised
    mean = np.asarray(prepared.stats.mean, np.float32)[None, :, None, None]
    std = np.asarray(prepared.stats.std, np.float32)[None, :, None, None]
    pixels = (x * std + mean).astype(np.float32)  # (N, C, H, W) raw
    threads = torch.get_num_threads()
    where = inference_device({"device": device})
    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        for arch in ALL_ARCHITECTURES:
            folder = project / "models" / arch
            if not (folder / "weights.safetensors").is_file():
                continue
            decision = register(params, arch, folder, project / "data" / "prepared", project_root=store)
            uri = f"models:/{registered_model_name(params)}/{decision.version}"
            model = mlflow.pyfunc.load_model(uri, model_config={"device": str(where)})
            network = load_trained_model(folder, device=where).model
            rates = _measure(model, network, pixels, torch.from_numpy(x), batch_size, repeats, where)
            print(
                f"bench=inference arch={arch} device={where} threads={threads} images={images} "
                f"batch_size={batch_size} images_per_s_registered={rates['registered']:.0f} "
                f"images_per_s_bare={rates['bare']:.0f} ratio={rates['registered'] / rates['bare']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    app()
