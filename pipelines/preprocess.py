"""DVC stage ``preprocess``: split, normalise or tokenise, one-hot ``data/raw`` into ``data/prepared``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.config import load_params
from components.data.manifest import is_text
from components.data.preprocess import preprocess
from pipelines._cli import console, run_stage

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="Ingest output folder.")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Output folder, replaced atomically.")] = Path("data/prepared"),
) -> None:
    """Validate the settings, preprocess the raw data, write the prepared splits and stats."""

    def body() -> None:
        settings = load_params(params)
        manifest = preprocess(settings.preprocess, raw, out)
        counts = ", ".join(f"{name} {entry['count']}" for name, entry in manifest["splits"].items())
        unit = "texts" if is_text(manifest) else "images"
        console.print(f"preprocess: {raw} -> {out} ({counts} {unit})", highlight=False)
        if is_text(manifest):
            rates = ", ".join(
                f"{name} {e['oov_rate']:.1%} OOV, {e['truncation_rate']:.1%} truncated"
                for name, e in manifest["splits"].items()
            )
            console.print(f"preprocess: vocabulary {manifest['vocab_size']}; {rates}", highlight=False)

    run_stage("preprocess", body)


if __name__ == "__main__":
    app()
