"""Why a text model's integrated gradients converge slowly: the logit along the straight path.

For a trained text model and its prepared data (a project after ``dvc repro``), finds the test
texts with the largest convergence delta at ``--steps``, integrates each again with more steps,
and samples the logit finely along the path from the [PAD] baseline: a rise of several logits
within a sliver of the path is what quadrature nodes cannot resolve.

    OMP_NUM_THREADS=1 uv run python bench/ig_path.py --project /path/to/repro --arch lstm
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from components.data.prepared import load_prepared, require_split
from components.interpret.attribution import EmbeddedInput, embedding_layer, integrated_gradients_tokens
from components.models import PAD_ID
from components.training.artifacts import load_trained_model

app = typer.Typer(add_completion=False, help=__doc__)


def logit_along_path(model: torch.nn.Module, row: torch.Tensor, target: int, points: int) -> np.ndarray:
    """(points,) the ``target`` logit at alpha in [0, 1] times the embedded ``row`` (1, T)."""
    layer = embedding_layer(model)
    forward = EmbeddedInput(model, layer)
    with torch.no_grad():
        embedded = layer(row)  # (1, T, E)
        alphas = torch.linspace(0.0, 1.0, points)
        chunks = [
            forward(chunk.view(-1, 1, 1) * embedded, row.expand(len(chunk), -1))[:, target]
            for chunk in alphas.split(2000)
        ]
    return torch.cat(chunks).numpy()


@app.command()
def main(
    project: Annotated[Path, typer.Option(help="Project folder with models/<arch> and data/prepared.")],
    arch: Annotated[str, typer.Option(help="Architecture whose model is probed.")] = "lstm",
    steps: Annotated[int, typer.Option(help="Integration steps of the first pass.")] = 64,
    worst: Annotated[int, typer.Option(help="Texts probed, the largest deltas first.")] = 2,
    points: Annotated[int, typer.Option(help="Logit samples along the path.")] = 200_001,
) -> None:
    torch.set_num_threads(1)
    prepared = project / "data" / "prepared"
    ids = torch.from_numpy(require_split(load_prepared(prepared), "test", prepared).x)  # (N, T)
    model = load_trained_model(project / "models" / arch, torch.device("cpu")).model
    with torch.no_grad():
        predicted = model(ids).argmax(dim=1)  # (N,)
    first = integrated_gradients_tokens(model, ids, predicted, steps, 1024)
    print(f"{arch}: {steps} steps: |delta| > 0.01 for {(np.abs(first.delta) > 0.01).sum()} of {len(ids)}")
    for row in np.argsort(-np.abs(first.delta))[:worst]:
        one, target = ids[row : row + 1], int(predicted[row])
        deltas = {steps: float(first.delta[row])}
        for more in (1024, 4096):
            again = integrated_gradients_tokens(model, one, predicted[row : row + 1], more, 1024)
            deltas[more] = float(again.delta[0])
        logit = logit_along_path(model, one, target, points)
        slope = np.abs(np.diff(logit)) * (points - 1)  # (points - 1,) |d logit / d alpha|
        steep = np.flatnonzero(slope > 0.1 * slope.max())
        span = (steep[-1] + 1 - steep[0]) / (points - 1)
        rise = logit[steep[-1] + 1] - logit[steep[0]]
        print(
            f"text {row} ({int((one != PAD_ID).sum())} tokens): delta by steps "
            + ", ".join(f"{k}: {v:.3g}" for k, v in deltas.items())
            + f"; logit {logit[0]:.2f} -> {logit[-1]:.2f}, max slope {slope.max():,.0f}, "
            f"a change of {rise:.1f} within {span:.2%} of the path",
            flush=True,
        )


if __name__ == "__main__":
    app()
