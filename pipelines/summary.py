"""Print what the pipeline produced (the last step of ``make run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from components.config import load_params
from components.data.summary import prepared_table
from components.evaluation.summary import results_table
from components.tracking import tracking_uri
from pipelines._cli import run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Preprocess output folder.")] = Path("data/prepared"),
    models: Annotated[Path, typer.Option(help="Folder of the model folders.")] = Path("models"),
    reports: Annotated[Path, typer.Option(help="Folder of the report folders.")] = Path("reports"),
) -> None:
    """Summarise the prepared data and the evaluated models, and say how to browse the runs."""

    def body() -> None:
        settings = load_params(params)
        console = Console()
        console.print(prepared_table(prepared))
        console.print(results_table(settings.train.architectures, models, reports))
        uri = tracking_uri(params.parent)
        hint = f"uv run mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
        console.print(f"Browse the runs: {hint}", highlight=False, soft_wrap=True)

    run_stage("summary", body)


if __name__ == "__main__":
    app()
