"""DVC stage ``register``: register every architecture's model and gate the ``champion`` alias."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.config import load_params
from pipelines._cli import console, run_stage

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
        # Imported after the settings are validated: a bad params.yaml fails in a second, not after
        # the ~15 s it takes to import torch, Lightning and MLflow.
        from components.registry.register import champion_version, check_registrable, register, write_report

        for arch in settings.train.architectures:  # all readable first: a broken one registers none
            check_registrable(arch, models / arch, prepared)
        decisions = []
        # The tracking store and code tags come from the working directory, as in train and
        # evaluate (DVC runs every stage from the project root), not from where --params lives.
        root = Path(".")
        for arch in settings.train.architectures:
            decision = register(settings, arch, models / arch, prepared, project_root=root)
            console.print(f"register@{arch}: version {decision.version}: {decision.reason}", highlight=False)
            decisions.append(decision)
        write_report(decisions, champion_version(settings, root), out)

    run_stage("register", body)


if __name__ == "__main__":
    app()
