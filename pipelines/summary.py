"""Print what the pipeline produced (the last step of ``make run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.summary import print_summary
from pipelines._cli import run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    prepared: Annotated[Path | None, typer.Option(help="Preprocess output folder.")] = None,
    models: Annotated[Path | None, typer.Option(help="Folder of the model folders.")] = None,
    reports: Annotated[Path | None, typer.Option(help="Folder of the report folders.")] = None,
) -> None:
    """Summarise the prepared data and the evaluated models, and say how to browse the runs."""

    run_stage("summary", lambda: print_summary(params, params.parent, prepared, models, reports))


if __name__ == "__main__":
    app()
