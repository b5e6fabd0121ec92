"""DVC stage ``train@<arch>``: train one architecture on ``data/prepared`` into ``models/<arch>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.config import ALL_ARCHITECTURES, load_params
from pipelines._cli import architecture, console, run_stage, run_tags

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    arch: Annotated[str, typer.Option(help=f"Architecture: {', '.join(ALL_ARCHITECTURES)}.")],
    params: Annotated[Path, typer.Option(help="Settings file.")] = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Preprocess output folder.")] = Path("data/prepared"),
    out: Annotated[Path | None, typer.Option(help="Output folder (default: models/<arch>).")] = None,
    work: Annotated[Path, typer.Option(help="Folder for resumable checkpoints.")] = Path(".work"),
    tag: Annotated[list[str] | None, typer.Option(help="Extra MLflow run tag KEY=VALUE.")] = None,
) -> None:
    """Validate the settings, train ``arch``, write its model folder and log the run to MLflow.

    Runs unchanged as one process, or as every process of ``torchrun``, SLURM ``srun`` or
    Lightning's ``ddp`` launcher; only global rank zero writes, logs and prints the summary line.
    """

    def body() -> None:
        settings = load_params(params)
        chosen = architecture(arch)
        tags = run_tags(tag or [])
        # Imported after the settings are validated: a bad params.yaml fails in a second, not after
        # the ~15 s it takes to import torch, Lightning and MLflow.
        from components.training.train import train

        result = train(settings, chosen, prepared, out or Path("models") / chosen, work_root=work, tags=tags)
        if result.global_rank != 0:
            return
        info = result.info
        console.print(
            f"train@{arch}: {info['epochs']} epochs, {info['global_steps']} steps "
            f"in {info['fit_seconds']:.1f} s, best val loss {info['best_val_loss']:.4f} "
            f"-> {result.model_dir} (MLflow run {result.run_id})",
            highlight=False,
            soft_wrap=True,
        )

    run_stage(f"train@{arch}", body)


if __name__ == "__main__":
    app()
