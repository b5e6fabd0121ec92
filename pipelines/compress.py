"""DVC stage ``compress@<arch>``: a smaller model in ``models/<arch>-compressed`` and its trade-off report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.config import ALL_ARCHITECTURES, load_params
from pipelines._cli import architecture, console, run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    arch: Annotated[str, typer.Option(help=f"Architecture: {', '.join(ALL_ARCHITECTURES)}.")],
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Preprocess output folder.")] = Path("data/prepared"),
    model: Annotated[Path | None, typer.Option(help="Model folder (default: models/<arch>).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Compressed model folder (default: models/<arch>-compressed).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Report (default: reports/<arch>/compression.json).")
    ] = None,
) -> None:
    """Validate the settings, compress ``arch``, write the folder and the report, log to MLflow."""

    def body() -> None:
        settings = load_params(params)
        chosen = architecture(arch)
        # Imported after the settings are validated: a bad params.yaml fails before torch loads.
        from components.compression.compress import compress

        folder = out or Path("models") / f"{chosen}-compressed"
        report_file = report or Path("reports") / chosen / "compression.json"
        result = compress(settings, chosen, prepared, model or Path("models") / chosen, folder, report_file)
        verdict = "accepted" if result["accepted"] else "rejected"
        console.print(
            f"compress@{chosen}: {result['method']} {verdict}: {result['reason']}",
            highlight=False,
            soft_wrap=True,
        )

    run_stage(f"compress@{arch}", body)


if __name__ == "__main__":
    app()
