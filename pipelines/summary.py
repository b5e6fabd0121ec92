"""Print what the pipeline produced (the last step of ``make run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from components.data.summary import prepared_table
from pipelines._cli import run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    prepared: Annotated[Path, typer.Option(help="Preprocess output folder.")] = Path("data/prepared"),
) -> None:
    """Summarise the prepared data and say where it went."""
    run_stage("summary", lambda: Console().print(prepared_table(prepared)))


if __name__ == "__main__":
    app()
