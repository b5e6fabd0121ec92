"""Batch prediction with a registered model (not a DVC stage): images (or, for a text model, texts)
in, one CSV row per image (text) out.

Examples::

    python -m pipelines.predict data/new_digits/ --out predictions.csv        # champion
    python -m pipelines.predict t10k-images-idx3-ubyte.gz --version 3 --out v3.csv
    python -m pipelines.predict batch.npz --model-name mnist-classifier
    python -m pipelines.predict new_reviews.txt --out reviews.csv             # a text model: a line each
    python -m pipelines.predict new_reviews.tsv --text-column review          # default: data.text_column
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    source: Annotated[
        Path,
        typer.Argument(
            help="Folder of images, IDX image file, or .npz (array x); for a text model a .tsv, .csv, "
            ".jsonl or .parquet file (its text column) or a .txt file (one text a line)."
        ),
    ],
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
    text_column: Annotated[
        str | None,
        typer.Option(help="Text models: the column holding the texts (default: data.text_column)."),
    ] = None,
) -> None:
    """Load the registered model and write class id, name and probabilities for every image (text)."""

    def body() -> None:
        name, column = _model_and_column(params, model_name, text_column)
        options = {
            "batch_size": batch_size,
            "device": device,
            "check_range": range_check,
            "text_column": column,
        }
        _predict(source, out, params, (name, version, alias), options)

    run_stage("predict", body)


def _model_and_column(params: Path, model_name: str | None, text_column: str | None) -> tuple[str, str]:
    """The registered model's name and the text column: given, else from the settings file."""
    if model_name is None or (text_column is None and params.is_file()):
        settings = load_params(params)
        return model_name or registered_model_name(settings), text_column or settings.data.text_column
    return model_name, text_column or "text"


def _predict(
    source: Path, out: Path, params: Path, model: tuple[str, str | None, str], options: dict[str, Any]
) -> None:
    """Predict ``source`` with the registered ``(name, version, alias)`` into ``out``, with a progress bar."""
    name, version, alias = model
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # The registry of the project whose params.yaml this is (MLFLOW_TRACKING_URI wins), not an
    # mlflow.db in whatever folder the command runs from.
    progress_bar = Progress(*columns, console=console, transient=True)
    with fluent_tracking(tracking_uri(params.parent)), progress_bar as progress:
        uri = pinned_model_uri(name, version, alias)
        task = progress.add_task("predict", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = predict_file(uri, source, out, on_batch=advance, **options)
    which = uri if version else f"{uri} ({alias})"
    kind = "texts" if "text" in result.columns else "images"
    console.print(f"predict: {len(result)} {kind} with {which} -> {out}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
