"""DVC stage ``evaluate@<arch>``: test-split metrics, confusion matrix and latency into ``reports/<arch>``."""

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
    out: Annotated[Path | None, typer.Option(help="Report folder (default: reports/<arch>).")] = None,
) -> None:
    """Validate the settings, evaluate ``arch`` on the test split, write its report, log to MLflow."""

    def body() -> None:
        settings = load_params(params)
        chosen = architecture(arch)
        report_dir = out or Path("reports") / chosen
        # Imported after the settings are validated: a bad params.yaml fails in a second, not after
        # the ~15 s it takes to import torch, Lightning and MLflow.
        from components.evaluation.evaluate import evaluate

        metrics = evaluate(settings, chosen, prepared, model or Path("models") / chosen, report_dir)
        console.print(
            f"evaluate@{chosen}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1_macro']:.4f}, "
            f"{metrics['samples_per_second']:,.0f} samples/s -> {report_dir}",
            highlight=False,
            soft_wrap=True,
        )

    run_stage(f"evaluate@{arch}", body)


if __name__ == "__main__":
    app()
