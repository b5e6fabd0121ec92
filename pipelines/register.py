"""DVC stage ``register``: register every architecture's model and gate the ``champion`` alias."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from components.config import load_params
from pipelines._cli import console, run_stage

if TYPE_CHECKING:
    from components.registry.decisions import Decision

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Preprocess output folder.")] = Path("data/prepared"),
    models: Annotated[Path, typer.Option(help="Folder of the model folders.")] = Path("models"),
    out: Annotated[Path, typer.Option(help="Decision report.")] = Path("reports/registration.json"),
) -> None:
    """Register ``models/<arch>`` for each of ``train.architectures``, in order; write the decisions."""

    def body() -> None:
        settings = load_params(params)
        # Imported after the settings are validated: a bad params.yaml fails before torch loads.
        from components.registry.register import register_all

        def say(decision: Decision) -> None:
            console.print(
                f"register@{decision.architecture}: version {decision.version}: {decision.reason}",
                highlight=False,
            )

        # The tracking store and code tags come from the working directory, as in train and
        # evaluate (DVC runs every stage from the project root), not from where --params lives.
        register_all(settings, models, prepared, out, project_root=Path("."), on_decision=say)

    run_stage("register", body)


if __name__ == "__main__":
    app()
