"""Batch prediction with a registered model (not a DVC stage): images in, one CSV row per image out.

Examples::

    python -m pipelines.predict data/new_digits/ --out predictions.csv        # champion
    python -m pipelines.predict t10k-images-idx3-ubyte.gz --version 3 --out v3.csv
    python -m pipelines.predict batch.npz --model-name mnist-classifier
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from components.config import load_params
from components.naming import registered_model_name
from components.registry.predict import PREDICT_BATCH_SIZE, pinned_model_uri, predict_file
from components.registry.register import CHAMPION
from components.tracking import fluent_tracking, tracking_uri
from pipelines._cli import console, run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    source: Annotated[Path, typer.Argument(help="Folder of images, IDX image file, or .npz (array x).")],
    out: Annotated[Path, typer.Option(help="CSV to write (atomically).")] = Path("predictions.csv"),
    params: Annotated[
        Path, typer.Option(help="Settings file: the registered model's name; its folder, the MLflow store.")
    ] = Path("params.yaml"),
    model_name: Annotated[str | None, typer.Option(help="Registered model (default: from params).")] = None,
    version: Annotated[str | None, typer.Option(help="Model version (default: the alias).")] = None,
    alias: Annotated[str, typer.Option(help="Alias used when no version is given.")] = CHAMPION,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per predict call.")] = PREDICT_BATCH_SIZE,
    device: Annotated[
        str | None,
        typer.Option(
            help="Where the network runs: auto (CUDA when present), cpu, cuda, cuda:<n> "
            "(default: the model's setting, auto unless MLFLOW_PYFUNC_INFERENCE_CONFIG names one)."
        ),
    ] = None,
    range_check: Annotated[
        bool,
        typer.Option(
            help="Refuse images on another scale than the training data's pixels "
            "(0..255 for a model trained on 0..16, or 0..1 for one trained on 0..255)."
        ),
    ] = True,
) -> None:
    """Load the registered model and write class id, name and probabilities for every image."""

    def body() -> None:
        name = model_name or registered_model_name(load_params(params))
        columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # The registry of the project whose params.yaml this is (MLFLOW_TRACKING_URI wins), not an
        # mlflow.db in whatever folder the command runs from.
        progress_bar = Progress(*columns, console=console, transient=True)
        with fluent_tracking(tracking_uri(params.parent)), progress_bar as progress:
            uri = pinned_model_uri(name, version, alias)
            task = progress.add_task("predict", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = predict_file(
                uri,
                source,
                out,
                batch_size=batch_size,
                device=device,
                on_batch=advance,
                check_range=range_check,
            )
        which = uri if version else f"{uri} ({alias})"
        console.print(f"predict: {len(result)} images with {which} -> {out}", highlight=False, soft_wrap=True)

    run_stage("predict", body)


if __name__ == "__main__":
    app()
