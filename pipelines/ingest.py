"""DVC stage ``ingest``: read ``data.source`` into ``data/raw`` (see components.data.ingest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.config import load_params
from components.data.ingest import ingest
from components.data.manifest import is_text
from pipelines._cli import console, run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    params: Annotated[
        Path, typer.Option(help="Settings file; relative data.path values resolve next to it.")
    ] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder, replaced atomically.")] = Path("data/raw"),
) -> None:
    """Validate the settings, ingest the source, write the raw arrays and manifest."""

    def body() -> None:
        settings = load_params(params)
        manifest = ingest(settings.data, out, root=params.resolve().parent)
        counts = ", ".join(f"{name} {entry['count']}" for name, entry in manifest["splits"].items())
        unit = "texts" if is_text(manifest) else "images"
        console.print(f"ingest: {manifest['source']} -> {out} ({counts} {unit})", highlight=False)

    run_stage("ingest", body)


if __name__ == "__main__":
    app()
