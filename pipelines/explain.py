"""DVC stage ``explain@<arch>``: attributions, their deletion test and figures into ``reports/<arch>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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
    """Explain ``arch`` on the test split: ``<out>/explain/`` figures and ``<out>/explain.json``."""

    def body() -> None:
        settings = load_params(params)
        chosen = architecture(arch)
        report_dir = out or Path("reports") / chosen
        from components.interpret.explain import explain  # after validation: torch takes seconds

        report = explain(settings, chosen, prepared, model or Path("models") / chosen, report_dir)
        if not report["enabled"]:
            console.print(f"explain@{chosen}: disabled (explain.enabled: false)", highlight=False)
            return
        ig = report["integrated_gradients"]
        deletion = ig["deletion"]
        console.print(
            f"explain@{chosen}: largest convergence delta {ig['max_abs_delta']:.2g}; deletion of the "
            f"top {deletion['fraction']:.0%}: accuracy {deletion['accuracy']:.3f} -> "
            f"{deletion['top_accuracy']:.3f} (random: {deletion['random_accuracy']:.3f}); "
            f"{report['seconds']:.1f} s -> {report_dir}",
            highlight=False,
            soft_wrap=True,
        )
        for warning in report["warnings"]:
            console.print(
                f"[yellow]explain@{chosen}: {escape(warning)}[/yellow]", highlight=False, soft_wrap=True
            )

    run_stage(f"explain@{arch}", body)


if __name__ == "__main__":
    app()
